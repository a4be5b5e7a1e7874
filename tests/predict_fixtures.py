"""A tiny model trained on a tiny image folder, merged: what the predict and ONNX tests run on.

One epoch of a rank-2 lora_add adapter on a 32x32 ViT over a few PNGs per class is a second or
two; the merged file is written by `merge_files` from the base `export-base` wrote, as a user would.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

from fake_data import write_png
from helpers import tiny_recipe_text

from pace_cli.artifacts import export_base_weights, merge_files
from pace_cli.recipe import parse_recipe
from pace_cli.training.loop import train

CLASSES = ["cat", "dog", "eel"]
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


@dataclass
class Trained:
    root: Path
    recipe: Path
    base: Path
    adapter: Path
    merged: Path


def write_imagefolder(root: Path, splits=("train", "val", "test"), per_class: int = 3) -> None:
    for split in splits:
        for name in CLASSES:
            for k in range(per_class):
                seed = zlib.crc32(f"{split}:{name}:{k}".encode())
                write_png(root / split / name / f"{k}.png", seed=seed, size=(40 + 3 * k, 30 + k))


def train_tiny(tmp_path: Path, model: dict | None = None) -> Trained:
    data = tmp_path / "data"
    write_imagefolder(data)
    text = tiny_recipe_text(
        model=model or {},
        data={"source": "imagefolder", "root": str(data), "train_split": "train", "val_split": "val",
              "test_split": "test", "image_size": 32, "mean": MEAN, "std": STD, "batch_size": 3},
        adapter={"kind": "lora_add", "rank": 2}, optim={"lr": 0.05},
        train={"epochs": 1, "device": "cpu"}, output={"dir": str(tmp_path / "run")})
    recipe_path = tmp_path / "recipe.toml"
    recipe_path.write_text(text)
    recipe = parse_recipe(text)
    result = train(recipe)
    base = export_base_weights(recipe, tmp_path / "base.safetensors")
    merged = tmp_path / "merged.safetensors"
    merge_files(base, result.adapter_path, merged)
    return Trained(data, recipe_path, Path(base), Path(result.adapter_path), merged)
