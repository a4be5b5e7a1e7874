"""--help that reads right: flags show no value, arguments show their name, docstring paragraphs reflow.

Typer's rich help prints a type after every option, ``<bool>`` for a flag too, which reads as if
``--json`` took a value; and in rich markup mode it keeps a docstring's line breaks, so text
wrapped at 120 columns in the source breaks mid-sentence in a terminal of any other width.
The command classes below fix both for every command, so no docstring has to be written as one
long line. A paragraph starting with ``\\b`` (click's marker) keeps its line breaks.
"""

from __future__ import annotations

import inspect

from typer.core import TyperCommand, TyperGroup


def reflowed(text: str | None) -> str | None:
    """``text`` with each paragraph (blank-line separated) on one line."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


def _flags_without_value(params) -> None:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # the type column shows the metavar: nothing, for an option that takes none


def _arguments_by_name(params) -> None:
    for param in params:
        if param.param_type_name == "argument" and param.metavar is None:
            param.metavar = param.name.upper()  # `pace sweep [OPTIONS] RECIPE`, not `{recipe}`


class _ReadableHelp:
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.help = reflowed(self.help)
        _flags_without_value(self.params)
        _arguments_by_name(self.params)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            _flags_without_value([option])
        return option


class PaceCommand(_ReadableHelp, TyperCommand):
    """A command whose --help shows flags without a value and reflows its docstring."""


class PaceGroup(_ReadableHelp, TyperGroup):
    """The `pace` group, with the same --help as its commands."""
