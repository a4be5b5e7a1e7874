"""One-line validation messages: each pydantic error names its TOML key path and says what is wanted."""

from __future__ import annotations

import difflib
import typing
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ValidationError

from pace_cli.errors import one_line
from pace_cli.recipe.schema import SECTIONS, Recipe, field_by_alias
from pace_cli.recipe.toml import toml_key, toml_value


def format_validation_error(error: ValidationError) -> str:
    """One line per pydantic error, joined with '; ', each naming the TOML key path."""
    messages: list[str] = []
    for err in error.errors(include_url=False):
        msg = one_line(_format_one(err))  # backstop: a message must stay on one line
        if msg not in messages:
            messages.append(msg)
    return "; ".join(messages)


def _format_one(err: dict) -> str:
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    value = err.get("input")

    if not loc:
        return _describe(err, None)
    section = toml_key(str(loc[0]))
    if len(loc) == 1:
        if kind == "extra_forbidden":
            return unknown_name("section", f"[{section}]", str(loc[0]), SECTIONS)
        if kind == "missing":
            return f"missing required section [{section}]"
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            return f"{section} = {_show(value)}: must be a table, write it as [{section}]"
        return f"[{section}]: {_describe(err, None)}"

    key = _key_path(loc[1:])
    section_cls = _model_at(loc[:1])
    table = _model_at(loc[:-1]) if kind == "extra_forbidden" else None
    if table is not None:
        allowed = [f.alias or n for n, f in table.model_fields.items()]
        return unknown_name("key", f"[{section}] {key}", str(loc[-1]), allowed)
    if kind == "missing":
        return f"missing required key [{section}] {key}"
    annotation = _annotation_at(section_cls, loc[1:])
    if kind == "value_error" and isinstance(value, dict):  # a whole table's rule: its dump says nothing
        return f"[{section}] {key}: {_describe(err, annotation)}"
    return f"[{section}] {key} = {_show(value)}: {_describe(err, annotation)}"


def unknown_name(kind: str, shown: str, name: str, allowed: Sequence[str]) -> str:
    """'unknown <kind> <shown> (did you mean 'x'? allowed: ...)', the guess only when one is close."""
    near = difflib.get_close_matches(name, allowed, n=1)
    guess = f"did you mean {near[0]!r}? " if near else ""
    return f"unknown {kind} {shown} ({guess}allowed: {', '.join(allowed)})"


def _describe(err: dict, annotation: Any) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    bounds = {
        "greater_than": ("gt", ">"),
        "greater_than_equal": ("ge", ">="),
        "less_than": ("lt", "<"),
        "less_than_equal": ("le", "<="),
    }
    if kind in bounds:
        name, op = bounds[kind]
        return f"must be {op} {_num(ctx.get(name))}"
    if kind == "literal_error":
        choices = _literal_choices(annotation)
        if choices:
            return "must be one of " + ", ".join(str(c) for c in choices)
        return f"must be {ctx.get('expected', 'one of the allowed values')}"
    simple = {
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": 'must be a string in quotes, e.g. "text"',
        "list_type": "must be a list, e.g. [1, 2]",
        "dict_type": "must be a table",
        "model_type": "must be a table",
    }
    if kind in simple:
        return simple[kind]
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n <= 1 else f"needs at least {n} items"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "value_error":
        msg = str(err.get("msg", ""))
        return one_line(msg.removeprefix("Value error, "))
    msg = one_line(str(err.get("msg", "invalid value")))
    return msg[:1].lower() + msg[1:]


def _key_path(parts: tuple) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + toml_key(str(p))
    return out


def _model_at(path: tuple) -> type[BaseModel] | None:
    """The table (a section, an [[eval.targets]] entry) at ``path`` below the recipe, if any."""
    node: Any = Recipe
    for part in path:
        if isinstance(part, int):  # an entry of a list of tables
            args = typing.get_args(node)
            node = args[0] if typing.get_origin(node) is list and args else None
        elif isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(part) or field_by_alias(node, part)
            node = field.annotation if field is not None else None
        else:
            return None
    return node if isinstance(node, type) and issubclass(node, BaseModel) and node is not Recipe else None


def _annotation_at(cls: type[BaseModel] | None, parts: tuple) -> Any:
    if cls is None or not parts or not isinstance(parts[0], str):
        return None
    field = cls.model_fields.get(parts[0]) or field_by_alias(cls, parts[0])
    if field is None or len(parts) > 1:
        return None
    return field.annotation


def _literal_choices(annotation: Any) -> tuple:
    if annotation is None:
        return ()
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return ()


def _num(x: Any) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def _show(value: Any, limit: int = 60) -> str:
    try:
        text = toml_value(value) if not isinstance(value, str) else repr(value)
    except TypeError:
        text = repr(value)
    text = one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
