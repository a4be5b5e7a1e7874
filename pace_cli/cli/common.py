"""What every command shares: the consoles, the --set option, JSON output, and errors -> exit codes."""

from __future__ import annotations

import functools
import json
import sys
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from pace_cli.errors import PaceError, one_line

console = Console()
err_console = Console(stderr=True)
STATE = {"debug": False}

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", metavar="SECTION.KEY=VALUE",
                 help="Override a recipe key, e.g. --set pace.sigma=1.5 (repeatable; validated like the file)."),
]


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def warn(note: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)


def fail(error: BaseException | str, code: int) -> None:
    """Print ``error`` as the one ``error:`` line on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guarded(command: Callable) -> Callable:
    """The one place errors become exit codes, around every command's body.

    A :class:`PaceError` is its one line on stderr and its ``exit_code``; Ctrl-C exits 130; any
    other exception is our bug, said in one line (exit 1). With ``pace --debug`` nothing is
    caught, so the traceback shows.
    """
    @functools.wraps(command)
    def run(*args, **kwargs):
        if STATE["debug"]:
            return command(*args, **kwargs)
        try:
            return command(*args, **kwargs)
        except PaceError as error:
            fail(error, error.exit_code)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130)
        except typer.Exit:
            raise
        except Exception as error:  # noqa: BLE001 - anything else is our bug; say so in one line
            fail(f"unexpected {type(error).__name__}: {one_line(error)} (run `pace --debug ...` for the traceback "
                 "and please report it)", 1)
    return run
