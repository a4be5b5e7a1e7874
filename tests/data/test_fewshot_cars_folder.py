"""The shipped few-shot Cars recipe reads NOAH's lists as they are: paths relative to the data-set folder."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pace_cli.builders import build_dataset
from pace_cli.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
LISTS = {  # the shape of NOAH's data/few-shot/stanford_cars/annotations lines
    "train_meta.list.num_shot_1.seed_0": ["cars_train/02766.jpg 13", "cars_train/00211.jpg 180"],
    "val_meta.list": ["cars_train/04428.jpg 13"],
    "test_meta.list": ["cars_test/00001.jpg 180", "cars_test/00002.jpg 13"],
}


def _solid(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), (value, value, value)).save(path)


def test_cars_recipe_finds_cars_train_under_the_data_set_folder(tmp_path):
    (tmp_path / "annotations").mkdir()
    for name, lines in LISTS.items():
        (tmp_path / "annotations" / name).write_text("\n".join(lines) + "\n")
        for line in lines:
            rel = line.split()[0]
            _solid(tmp_path / rel, 255)  # where NOAH's lists point: white
            _solid(tmp_path / "images" / rel, 0)  # the images/ folder other few-shot sets use: black decoys
    recipe = load_recipe(ROOT / "recipes" / "fewshot" / "cars.toml",
                         [f"data.root={str(tmp_path)!r}", "data.shots=1", "data.seed=0", "data.image_size=8"])
    assert recipe.data.image_dir == "."
    for split in ("train", "val", "test"):
        ds = build_dataset(recipe, split, train=split == "train")
        assert len(ds) == len(LISTS["train_meta.list.num_shot_1.seed_0" if split == "train" else f"{split}_meta.list"])
        # white, normalised with ImageNet's mean and std, is positive in every channel; the black decoy is not
        assert all(bool((ds[i][0] > 0).all()) for i in range(len(ds))), split
    assert build_dataset(recipe, "train").classes == ["13", "180"]
