"""Shared test helpers: the tiny recipe and the tiny timm models that unit tests build.

Fixtures and hooks live in conftest.py; plain functions live here so tests import them by name
(`from helpers import tiny_vit`) instead of importing conftest, which pytest loads as a plugin.
"""
from __future__ import annotations

import copy
import json
import re

import timm

# The tiny ViT on generated data: 32x32 input, 8x8 patches (16 tokens), width 32, two blocks. Tests add
# the sections and keys they rely on, so each call site shows every setting its assertions depend on.
TINY_RECIPE = {
    "model": {"name": "vit_tiny_patch16_224", "img_size": 32,
              "kwargs": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}},
    "data": {"source": "synthetic"},
}


def tiny_recipe_text(**sections: dict | None) -> str:
    """TOML text of TINY_RECIPE with ``sections`` merged in, e.g. ``tiny_recipe_text(train={"epochs": 1})``.

    Each keyword is a recipe section (model, data, adapter, pace, optim, train, output, eval) whose dict is
    merged key by key, nested dicts such as ``model.kwargs`` too; a value of None removes the key (or the
    whole section). New keys and sections come after the existing ones. A list of dicts, such as
    ``eval={"targets": [...]}``, is written as an array of tables (``[[eval.targets]]``).
    """
    return toml_text(_merged(TINY_RECIPE, sections))


def toml_text(tables: dict[str, dict]) -> str:
    """A TOML document of ``{section: {key: value}}``, one ``key = value`` per line as people write recipes.

    Written here rather than with the library's own writer, so that a bug in that writer cannot also
    change the inputs of the tests meant to catch it.
    """
    blocks = []
    for section, table in tables.items():
        plain = {k: v for k, v in table.items() if not _is_array_of_tables(v)}
        arrays = {k: v for k, v in table.items() if _is_array_of_tables(v)}
        if plain or not arrays:
            blocks.append(f"[{section}]\n" + "".join(f"{_key(k)} = {_value(v)}\n" for k, v in plain.items()))
        for key, rows in arrays.items():
            for row in rows:
                blocks.append(f"[[{section}.{_key(key)}]]\n" + "".join(f"{_key(k)} = {_value(v)}\n"
                                                                      for k, v in row.items()))
    return "\n".join(blocks)


def _merged(base: dict, changes: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _is_array_of_tables(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # TOML basic strings take JSON's escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"no TOML form for {value!r}")


def tiny_vit(depth: int = 2, num_classes: int = 5, **kwargs):
    """A ViT small enough for unit tests: 32x32 input, 8x8 patches (16 tokens), width 32."""
    args = dict(img_size=32, patch_size=8, depth=depth, embed_dim=32, num_heads=2, num_classes=num_classes)
    args.update(kwargs)
    return timm.create_model("vit_tiny_patch16_224", **args)


def tiny_deit(**kwargs):
    args = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=5)
    args.update(kwargs)
    return timm.create_model("deit_tiny_patch16_224", **args)


def tiny_swin(depths=(1, 1), num_classes: int = 5, **kwargs):
    args = dict(img_size=32, patch_size=2, window_size=4, depths=depths, num_heads=(2, 4), embed_dim=16,
                num_classes=num_classes)
    args.update(kwargs)
    return timm.create_model("swin_tiny_patch4_window7_224", **args)


MODEL_FACTORIES = {"vit": tiny_vit, "deit": tiny_deit, "swin": tiny_swin}


def stop_after(step: int | None, stop):
    """A training logger that requests ``stop`` once step ``step`` is logged (None: never), for
    interrupting a run at a chosen step (the resume tests)."""
    from pace_cli.training import TrainLogger

    class StopAfter(TrainLogger):
        def step(self, record):
            if step is not None and record["step"] == step:
                stop.request()

    return StopAfter()

