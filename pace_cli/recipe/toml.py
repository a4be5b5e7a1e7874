"""Writing recipes: the resolved recipe as TOML (round-trips through parse_recipe) or a JSON-able dict.

TOML has no null: a ``None`` whose default is not ``None`` is written as ``key = ""`` (the
recipe's "not set"), one whose default is ``None`` is left out.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel

from pace_cli.recipe.schema import SECTIONS, Recipe


def recipe_to_dict(recipe: Recipe) -> dict:
    """JSON-able dict of the whole recipe, keys as written in TOML (``lambda``, not ``lambda_``)."""
    return recipe.model_dump(mode="json", by_alias=True)


def recipe_to_toml(recipe: Recipe) -> str:
    """Serialise a recipe to TOML such that ``parse_recipe(recipe_to_toml(r)) == r``."""
    lines: list[str] = []
    for section_name in SECTIONS:
        section: BaseModel = getattr(recipe, section_name)
        values = section.model_dump(by_alias=True)
        nested: dict[str, dict] = {}
        arrays: dict[str, list] = {}
        if lines:
            lines.append("")
        lines.append(f"[{section_name}]")
        for name, info in type(section).model_fields.items():
            key = info.alias or name
            value = values[key]
            if isinstance(value, dict):
                nested[key] = value
                continue
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                arrays[key] = value
                continue
            if value is None:
                if info.default is None:
                    continue
                value = ""  # explicit "unset" for a key whose default is set
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
        for key, table in nested.items():
            if not table:
                continue
            lines.append("")
            lines.append(f"[{section_name}.{toml_key(key)}]")
            lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items())
        for key, tables in arrays.items():
            for table in tables:
                lines.append("")
                lines.append(f"[[{section_name}.{toml_key(key)}]]")
                # TOML has no null: an unset key is left out (its default is None).
                lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items() if v is not None)
    return "\n".join(lines) + "\n"


def toml_document(data: dict) -> str:
    """Write ``{table: {key: scalar-or-list}}`` as TOML; handy for building recipes in tests."""
    lines: list[str] = []
    for table, body in data.items():
        lines.append(f"[{toml_key(table)}]")
        lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in body.items())
        lines.append("")
    return "\n".join(lines)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-tripping form; 1e-05 style is valid TOML
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
