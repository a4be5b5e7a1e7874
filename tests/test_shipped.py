"""The recipes and the backbone that ship with pace must keep working."""
from pathlib import Path

import pytest
import torch

from pace_cli.builders import build_base_model, build_dataset
from pace_cli.files.header import read_metadata
from pace_cli.models import resolve_checkpoint
from pace_cli.recipe import load_recipe
from pace_cli.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.relative_to(ROOT / "recipes").as_posix() for p in RECIPES])
def test_shipped_recipes_are_valid(path):
    recipe = load_recipe(path)
    import timm
    assert timm.is_model(recipe.model.name)


def test_builtin_backbone_loads_into_the_recipe_model():
    recipe = load_recipe(ROOT / "recipes" / "quickstart.toml")
    path = resolve_checkpoint(recipe.model.checkpoint)
    meta = read_metadata(path)
    assert meta["timm_model"] == recipe.model.name
    model = build_base_model(recipe, num_classes=10).eval()  # the backbone's own 10-class head is kept
    recipe.data.source = "digits"
    digits = build_dataset(recipe, "test")
    images = torch.stack([digits[i][0] for i in range(32)])
    with torch.no_grad():
        assert model(images).shape == (32, 10)


def test_quickstart_recipe_trains_briefly(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "quickstart.toml",
                         ["train.epochs=1", "data.shots=2", "output.dir=" + str(tmp_path / "qs")])
    result = train(recipe)
    assert result.adapter_path.is_file() and result.val is not None and result.val.samples > 300
