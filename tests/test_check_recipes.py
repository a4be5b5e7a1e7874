"""`pace check` passes on every shipped recipe, given fake data in its layout and a base file of the right shape."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import timm
import torch
from fake_data import make_fake_data

from pace_cli.check import check_recipe
from pace_cli.recipe import load_recipe, recipe_to_toml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.toml"))
IDS = [p.relative_to(ROOT / "recipes").as_posix() for p in RECIPES]


def write_sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A valid safetensors file whose data is a hole: right names and shapes, no disk, instant.

    `pace check` reads only the header, so a 330 MB ViT-B/16 base costs nothing here.
    """
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * int(torch.Size(shape).numel())
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
    os.truncate(path, 8 + len(raw) + offset)


@pytest.fixture(scope="module")
def shared_base(tmp_path_factory) -> Path:
    """The ViT-B/16 base every paper recipe names, as `pace export-base` would write it (head excluded)."""
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=0)
    path = tmp_path_factory.mktemp("bases") / "vit_b16_in21k.safetensors"
    write_sparse_safetensors(path, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    return path


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_check_passes_on_every_shipped_recipe(path, tmp_path, shared_base):
    recipe = make_fake_data(load_recipe(path), tmp_path / "data")
    if recipe.model.checkpoint and not recipe.model.checkpoint.startswith("builtin:"):
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"checkpoint": str(shared_base)})})
    faked = tmp_path / "recipe.toml"
    faked.write_text(recipe_to_toml(recipe))
    report = check_recipe(faked)
    assert report.ok, report.problems
