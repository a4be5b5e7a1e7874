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
def base_for(tmp_path_factory):
    """The base a recipe's model names, as `pace export-base` would write it (head excluded), one file per
    architecture: the ViT-B/16 every paper recipe shares, and Table 5's Swin-B and LAION ViT-B."""
    made: dict[str, Path] = {}

    def base(model_name: str) -> Path:
        architecture = model_name.split(".")[0]
        if architecture not in made:
            with torch.device("meta"):
                model = timm.create_model(architecture, num_classes=0)
            path = tmp_path_factory.mktemp("bases") / f"{architecture}.safetensors"
            write_sparse_safetensors(path, {k: tuple(v.shape) for k, v in model.state_dict().items()})
            made[architecture] = path
        return made[architecture]

    return base


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_check_passes_on_every_shipped_recipe(path, tmp_path, base_for):
    recipe = make_fake_data(load_recipe(path), tmp_path / "data")
    if recipe.model.checkpoint and not recipe.model.checkpoint.startswith("builtin:"):
        base = str(base_for(recipe.model.name))
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"checkpoint": base})})
    faked = tmp_path / "recipe.toml"
    faked.write_text(recipe_to_toml(recipe))
    report = check_recipe(faked)
    assert report.ok, report.problems
