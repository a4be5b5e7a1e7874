"""The `pace` command line: a Typer app, one module per command family."""

from pace_cli.cli.app import app

__all__ = ["app"]
