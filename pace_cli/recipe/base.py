"""The base of every recipe section: strict pydantic, "" as unset, and whether a key was set.

Torch-free like the rest of the recipe package; :mod:`.schema` and :mod:`.augment` build on it.
"""

from __future__ import annotations

import os
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class _Section(BaseModel):
    # strict: TOML values are already typed, so "10" for an int or true for an int is a mistake.
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _normalise_inputs(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key, value in data.items():
            if isinstance(value, os.PathLike):  # callers building recipes in code pass Paths
                out[key] = value = os.fspath(value)
            field = cls.model_fields.get(key) or field_by_alias(cls, key)
            if value == "" and field is not None and _is_optional(field.annotation):
                out[key] = None
        return out


def field_by_alias(cls: type[BaseModel], key: str):
    """The field of ``cls`` whose TOML name ``key`` differs from its Python name (``lambda``)."""
    for f in cls.model_fields.values():
        if f.alias == key:
            return f
    return None


def _is_optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def is_set(section: BaseModel, key: str) -> bool:
    """Whether the recipe gave ``key`` a value that differs from leaving it out.

    A key written out with its default value changes nothing either way, and pace's own saved
    recipe.toml writes every key; only a set, non-default value can be a setting that does nothing.
    """
    if key not in section.model_fields_set:
        return False
    return getattr(section, key) != type(section).model_fields[key].default
