"""The `pace` command line: the Typer app and its commands, one module per command family.

Each command parses its options, calls one library function and renders the result; every
error becomes its one line and exit code in :func:`pace_cli.cli.common.guarded`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pace_cli import __version__
from pace_cli.cli import check, evaluate, files, predict, report, sweep, train
from pace_cli.cli.common import STATE, console, guarded
from pace_cli.cli.help import PaceCommand, PaceGroup

__all__ = ["app"]

app = typer.Typer(
    name="pace",
    cls=PaceGroup,
    help="Fine-tune vision transformers with adapters and the PACE regulariser, then merge the adapters "
    "into the base weights for zero-overhead inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool):
    if value:
        console.print(f"pace {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
):
    STATE["debug"] = debug


# in the order `pace --help` lists them
for _command, _name in [
    (train.train, None), (files.merge, None), (evaluate.eval_, "eval"), (evaluate.inspect, None),
    (predict.predict, None),
    (files.export_base, "export-base"), (files.export, None), (files.import_peft, "import-peft"),
    (check.check, None), (sweep.sweep, None), (report.report, None),
]:
    app.command(_name, cls=PaceCommand)(guarded(_command))
del _command, _name
