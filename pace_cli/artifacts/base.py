"""`pace export-base`: the recipe's base weights (local file, .npz or hub) as one safetensors file."""

from __future__ import annotations

from pathlib import Path

from pace_cli import files
from pace_cli.builders import build_base_model, build_dataset, timm_kwargs
from pace_cli.recipe.schema import Recipe


def export_base_weights(recipe: Recipe, output: Path, *, overwrite: bool = False) -> Path:
    files.check_can_write(output, overwrite)
    # The head is irrelevant to merging, but timm's random init depends on it, and a recipe without
    # base weights must export the same seeded random base that `train` used.
    num_classes = recipe.model.num_classes or len(build_dataset(recipe, recipe.data.train_split).classes)
    model = build_base_model(recipe, num_classes)
    files.save_tensors(output, model.state_dict(), {
        "format": "pace-base", "format_version": files.FORMAT_VERSION, "timm_model": recipe.model.name,
        "timm_kwargs": timm_kwargs(recipe), "source": recipe.model.checkpoint or "timm hub",
    })
    return output
