"""The fewshot and fgvc sources: list/JSON formats, class mapping, image folders, crops, errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_png
from PIL import Image

from pace_cli.builders import build_dataset as build_from_recipe
from pace_cli.data import build_dataset, make_loader
from pace_cli.errors import PaceError
from pace_cli.recipe import parse_recipe


def _lists(root: Path, files: dict[str, list[tuple[str, int]]], folder="images") -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for name, entries in files.items():
        lines = []
        for rel, label in entries:
            write_png((root / folder / rel) if folder != "." else root / rel, seed=label * 31 + len(lines))
            lines.append(f"{rel} {label}\n")
        (root / "annotations" / name).write_text("".join(lines))
    return root


def _fewshot_root(root: Path, shots=2, seed=0) -> Path:
    ids = [12, 3, 7]  # unsorted and non-contiguous on purpose
    train = [(f"tr/{c}_{k}.png", c) for c in ids for k in range(shots)]
    return _lists(root, {
        f"train_meta.list.num_shot_{shots}.seed_{seed}": train,
        "val_meta.list": [("va/a.png", 7), ("va/b.png", 3)],
        "test_meta.list": [("te/a.png", 12), ("te/b.png", 3), ("te/c.png", 7)],
    })


def fewshot(root, split, **kw):
    kw.setdefault("image_size", 8)
    kw.setdefault("list_shots", 2)
    return build_dataset("fewshot", split, root=root, **kw)


# ---------------------------------------------------------------- fewshot


def test_fewshot_labels_follow_the_sorted_training_ids(tmp_path):
    root = _fewshot_root(tmp_path)
    train = fewshot(root, "train")
    assert train.classes == ["3", "7", "12"] and train.class_ids == [3, 7, 12]
    assert train.labels == [2, 2, 0, 0, 1, 1]  # file order kept, ids 12, 3, 7 -> 2, 0, 1
    assert fewshot(root, "val").labels == [1, 0]
    test = fewshot(root, "test")
    assert test.labels == [2, 0, 1] and test.classes == train.classes
    assert test[0][0].shape == (3, 8, 8)


def test_fewshot_shots_and_seed_pick_the_list(tmp_path):
    root = _fewshot_root(tmp_path, shots=1, seed=2)
    assert len(fewshot(root, "train", list_shots=1, seed=2)) == 3
    with pytest.raises(PaceError, match=r"train_meta.list.num_shot_4.seed_2 not found"):
        fewshot(root, "train", list_shots=4, seed=2)
    with pytest.raises(PaceError, match=r"needs \[data\] shots"):
        fewshot(root, "train", list_shots=None)


def test_fewshot_without_shots_uses_the_splits_own_ids(tmp_path):
    root = _lists(tmp_path, {"val_meta.list": [("a.png", 400), ("b.png", 9)]}, folder=".")
    ds = fewshot(root, "val", list_shots=None, image_dir=".")
    assert ds.classes == ["9", "400"] and ds.labels == [1, 0]


def test_fewshot_errors_name_the_file(tmp_path):
    root = _fewshot_root(tmp_path)
    (root / "annotations" / "test_meta.list").write_text("te/a.png 12\nte/z.png 99\n")
    with pytest.raises(PaceError, match=r"test_meta.list line 2: class id 99 does not occur in "
                                        r"train_meta.list.num_shot_2.seed_0"):
        fewshot(root, "test")
    (root / "annotations" / "test_meta.list").write_text("te/a.png 12\nte/gone.png 3\n")
    with pytest.raises(PaceError, match=r"te/gone.png listed on line 2 of .*test_meta.list not found"):
        fewshot(root, "test")
    (root / "annotations" / "test_meta.list").write_text("\n")
    with pytest.raises(PaceError, match=r"test_meta.list has no images"):
        fewshot(root, "test")


def test_fewshot_imagenet_layout(tmp_path):
    root = tmp_path
    _lists(root, {"train_meta.list.num_shot_1.seed_0": [("n1/a.png", 0), ("n2/b.png", 5)],
                  "unofficial_val_list_4_shot16seed0": [("n2/c.png", 5)]}, folder="train")
    _lists(root, {"val_meta.list": [("n1/d.png", 0)]}, folder="val")
    kw = dict(fewshot_layout="imagenet", list_shots=1)
    assert fewshot(root, "train", **kw)._root == root / "train"
    search = fewshot(root, "val", **kw)
    assert search._root == root / "train" and search.labels == [1]
    test = fewshot(root, "test", **kw)
    assert test._root == root / "val" and test.labels == [0] and test.classes == ["0", "5"]


def test_fewshot_lists_that_carry_the_folder_prefix(tmp_path):
    _lists(tmp_path, {"val_meta.list": [("val/x/a.png", 1)]}, folder=".")
    ds = fewshot(tmp_path, "test", fewshot_layout="imagenet", list_shots=None)
    assert len(ds) == 1 and ds._root == tmp_path


# ---------------------------------------------------------------- fgvc


def _fgvc_root(root: Path, folder="images", splits=None) -> Path:
    splits = splits or {
        "train": {"001.a/x.jpg": 17, "001.a/y.jpg": 17, "002.b/z.jpg": 4, "003.c/w.jpg": 230},
        "val": {"002.b/v.jpg": 4},
        "test": {"003.c/t.jpg": 230, "001.a/t.jpg": 17},
    }
    for split, mapping in splits.items():
        for rel, label in mapping.items():
            write_png((root / folder / rel) if folder != "." else root / rel, seed=label)
        (root / f"{split}.json").write_text(json.dumps(mapping))
    return root


def fgvc(root, split, **kw):
    kw.setdefault("image_size", 8)
    return build_dataset("fgvc", split, root=root, **kw)


def test_fgvc_one_class_mapping_from_train(tmp_path):
    root = _fgvc_root(tmp_path)
    train = fgvc(root, "train")
    assert train.classes == ["4", "17", "230"] and train.labels == [1, 1, 0, 2]
    assert fgvc(root, "test").labels == [2, 1] and fgvc(root, "val").labels == [0]
    trainval = fgvc(root, "trainval")
    assert len(trainval) == 5 and trainval.labels[-1] == 0
    assert train[0][0].shape == (3, 8, 8)


@pytest.mark.parametrize("folder", ["images", "Images", "."])
def test_fgvc_image_folder_per_data_set(tmp_path, folder):
    root = _fgvc_root(tmp_path, folder=folder)
    ds = fgvc(root, "test")
    assert ds._root == (root / folder if folder != "." else root)
    assert fgvc(root, "test", image_dir=folder)._root == ds._root


def test_fgvc_errors_name_the_file(tmp_path):
    root = _fgvc_root(tmp_path)
    (root / "test.json").write_text(json.dumps({"001.a/t.jpg": 17, "003.c/t.jpg": 999}))
    with pytest.raises(PaceError, match=r"test.json: class id 999 of '003.c/t.jpg' does not occur in .*train.json"):
        fgvc(root, "test")
    (root / "test.json").write_text(json.dumps({"001.a/t.jpg": 17, "001.a/gone.jpg": 17}))
    with pytest.raises(PaceError, match=r"gone.jpg listed in .*test.json not found"):
        fgvc(root, "test")
    (root / "val.json").write_text("{}")
    with pytest.raises(PaceError, match=r"val.json has no images"):
        fgvc(root, "val")
    (root / "val.json").write_text("[1, 2]")
    with pytest.raises(PaceError, match=r"val.json holds a JSON list"):
        fgvc(root, "val")
    (root / "val.json").write_text('{"a.jpg": "x"}')
    with pytest.raises(PaceError, match=r"class id 'x'"):
        fgvc(root, "val")
    with pytest.raises(PaceError, match=r"unknown split 'dev'"):
        fgvc(root, "dev")
    (root / "val.json").unlink()
    with pytest.raises(PaceError, match=r"val.json not found"):
        fgvc(root, "val")


# ---------------------------------------------------------------- transforms


def _one_image(tmp_path, size=(20, 10)) -> Path:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path = tmp_path / "images" / "a.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(arr).save(path)
    (tmp_path / "test.json").write_text(json.dumps({"a.png": 0}))
    (tmp_path / "train.json").write_text(json.dumps({"a.png": 0}))
    return path


def _resized(path: Path, image_size: int) -> np.ndarray:
    """Independent Resize(image_size * 256 / 224) of the shorter side."""
    resize = round(image_size * 256 / 224)
    with Image.open(path) as img:
        w, h = img.size
        scale = resize / min(w, h)
        img = img.convert("RGB").resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
        return np.asarray(img).astype(np.float32) / 255


def test_eval_transform_is_a_centre_crop(tmp_path):
    path = _one_image(tmp_path)
    ds = fgvc(tmp_path, "test", image_size=8)
    big = _resized(path, 8)  # 18 x 9
    top, left = (big.shape[0] - 8) // 2, (big.shape[1] - 8) // 2
    expected = torch.from_numpy(big[top:top + 8, left:left + 8]).permute(2, 0, 1)
    torch.testing.assert_close(ds[0][0], expected)


def _windows(big: np.ndarray, size: int) -> list[torch.Tensor]:
    out = []
    for top in range(big.shape[0] - size + 1):
        for left in range(big.shape[1] - size + 1):
            w = torch.from_numpy(big[top:top + size, left:left + size].copy()).permute(2, 0, 1)
            out += [w, w.flip(-1)]
    return out


def test_train_transform_random_crop_and_flip(tmp_path):
    path = _one_image(tmp_path)
    ds = fgvc(tmp_path, "train", image_size=8, train=True)
    windows = _windows(_resized(path, 8), 8)
    torch.manual_seed(0)
    draws = [ds[0][0] for _ in range(30)]
    assert all(d.shape == (3, 8, 8) for d in draws)
    # Each draw is some window of the resized image, flipped or not, and they vary.
    assert all(any(torch.allclose(d, w) for w in windows) for d in draws)
    assert len({tuple(d.flatten().tolist()) for d in draws}) > 3
    flips = [any(torch.allclose(d, w) for w in windows[1::2]) and not any(torch.allclose(d, w) for w in windows[0::2])
             for d in draws]
    assert any(flips) and not all(flips)
    # Reproducible from torch's seed.
    torch.manual_seed(0)
    again = [ds[0][0] for _ in range(30)]
    assert all(torch.equal(a, b) for a, b in zip(draws, again))


def test_set_epoch_crops_depend_on_seed_epoch_and_sample_only(tmp_path):
    _one_image(tmp_path)
    ds = fgvc(tmp_path, "train", image_size=8, train=True, seed=3)
    ds.set_epoch(1)
    torch.manual_seed(0)
    a = ds[0][0]
    torch.manual_seed(123)
    assert torch.equal(ds[0][0], a)
    others = []
    for epoch in range(2, 8):
        ds.set_epoch(epoch)
        others.append(ds[0][0])
    assert any(not torch.equal(o, a) for o in others)


def test_crops_are_deterministic_with_workers_and_datasets_pickle(tmp_path):
    root = _fewshot_root(tmp_path)
    ds = fewshot(root, "train", train=True)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.labels == ds.labels and clone.augment

    def batches():
        loader = make_loader(ds, 3, shuffle=True, seed=5, num_workers=1)
        return [b[0] for b in loader]

    first, second = batches(), batches()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_existing_sources_ignore_train(tmp_path):
    a = build_dataset("synthetic", "x", image_size=8, train=True)
    b = build_dataset("synthetic", "x", image_size=8, train=False)
    assert torch.equal(a[0][0], b[0][0])


# ---------------------------------------------------------------- recipe keys


RECIPE = """
[model]
name = "vit_tiny_patch16_224"
[data]
source = "{source}"
root = "{root}"
image_size = 8
{extra}
"""


def test_recipe_fewshot_shots_pick_the_list_and_do_not_subsample(tmp_path):
    root = _fewshot_root(tmp_path)
    recipe = parse_recipe(RECIPE.format(source="fewshot", root=root, extra="shots = 2"))
    train = build_from_recipe(recipe, "train", train=True)
    assert len(train) == 6 and train.augment
    assert not build_from_recipe(recipe, "test").augment


@pytest.mark.parametrize("source, extra, message", [
    ("fewshot", "", "needs shots = k"),
    ("digits", 'image_dir = "images"', "image_dir is only read by source = 'fewshot' or 'fgvc', not 'digits'"),
    ("vtab1k", 'fewshot_layout = "imagenet"', "fewshot_layout is only read by source = 'fewshot', not 'vtab1k'"),
    ("fgvc", 'fewshot_layout = "fgvc"', "fewshot_layout is only read by source = 'fewshot', not 'fgvc'"),
    ("fewshot", 'shots = 1\nfewshot_layout = "coco"', "must be one of fgvc, imagenet"),
])
def test_recipe_source_keys_are_validated(tmp_path, source, extra, message):
    with pytest.raises(PaceError, match=message.replace("(", r"\(")):
        parse_recipe(RECIPE.format(source=source, root=tmp_path, extra=extra))
