"""Tests for pace_cli.data: every data set is built in tmp_path except the shipped digits
asset and the optional system Fashion-MNIST."""

from __future__ import annotations

import gzip
import inspect
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pace_cli.data import SOURCES, PaceDataset, build_dataset, digits, make_loader
from pace_cli.data import loader as data_loader
from pace_cli.errors import PaceError
from pace_cli.recipe import DataSection, EvalTarget, Recipe

FASHION_MNIST_DEFAULT_ROOT = SOURCES["fashion-mnist"].default_root
COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "emu": (0, 255, 0)}


def _png(path: Path, colour, size=(10, 7)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _imagefolder(root: Path, split="train", per_class=None) -> Path:
    per_class = per_class or {"cat": 3, "dog": 2}
    for name, n in per_class.items():
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(root / split / name / f"{i:02d}.png", COLOURS[name])
    return root


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx(path: Path, arr: np.ndarray, magic: int, gz: bool) -> None:
    raw = _idx_bytes(arr, magic)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def _fmnist(root: Path, gz: bool, n_train=12, n_test=6):
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(root / f"{prefix}-images-idx3-ubyte", images, 2051, gz)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, 2049, gz)
        arrays[prefix] = (images, labels)
    return arrays


def _vtab(root: Path, lines: dict[str, list[str]], images=()) -> Path:
    for rel in images:
        _png(root / rel, (10, 20, 30))
    for stem, body in lines.items():
        (root / f"{stem}.txt").write_text("\n".join(body) + "\n")
    return root


# ---------------------------------------------------------------- shapes, transforms


@pytest.mark.parametrize("source", ["digits", "synthetic"])
@pytest.mark.parametrize("channels", [1, 3])
def test_in_memory_shapes_and_dtypes(source, channels):
    ds = build_dataset(source, "train", image_size=20, channels=channels)
    assert isinstance(ds, PaceDataset)
    image, label, index = ds[3]
    assert image.shape == (channels, 20, 20) and image.dtype == torch.float32
    assert isinstance(label, int) and index == 3
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert ds.source == source and ds.split == "train"
    assert len(ds.labels) == len(ds)


def test_normalisation_applies_mean_and_std():
    plain = build_dataset("synthetic", "train", image_size=12)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    normed = build_dataset("synthetic", "train", image_size=12, mean=mean, std=std)
    expected = (plain[5][0] - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(normed[5][0], expected)


@pytest.mark.parametrize("kwargs", [dict(mean=[0.5], std=[0.5, 0.5, 0.5]),
                                    dict(mean=[0.5] * 3, std=[0.5] * 3, channels=1),
                                    dict(mean=[0.5] * 3, std=[0.0, 1.0, 1.0]),
                                    dict(channels=2)])
def test_bad_transform_settings_raise(kwargs):
    with pytest.raises(PaceError):
        build_dataset("synthetic", "train", **kwargs)


def test_synthetic_is_deterministic_and_split_dependent():
    a = build_dataset("synthetic", "train", image_size=8, synthetic_size=20, synthetic_classes=4)
    b = build_dataset("synthetic", "train", image_size=8, synthetic_size=20, synthetic_classes=4)
    c = build_dataset("synthetic", "test", image_size=8, synthetic_size=20, synthetic_classes=4)
    assert a.labels == b.labels and torch.equal(a[0][0], b[0][0])
    assert not torch.equal(torch.stack([a[i][0] for i in range(20)]),
                           torch.stack([c[i][0] for i in range(20)]))
    assert len(a) == 20 and a.classes == ["0", "1", "2", "3"]
    assert Counter(a.labels) == {k: 5 for k in range(4)}


# ---------------------------------------------------------------- imagefolder


def test_imagefolder_classes_labels_and_pixels(tmp_path):
    root = _imagefolder(tmp_path)
    ds = build_dataset("imagefolder", "train", root=root, image_size=16)
    assert ds.classes == ["cat", "dog"]
    assert ds.labels == [0, 0, 0, 1, 1]
    for i in range(len(ds)):
        image, label, index = ds[i]
        assert image.shape == (3, 16, 16) and index == i
        colour = torch.tensor(COLOURS[ds.classes[label]], dtype=torch.float32) / 255
        torch.testing.assert_close(image.mean(dim=(1, 2)), colour, atol=1e-3, rtol=0)
    grey = build_dataset("imagefolder", "train", root=root, image_size=16, channels=1)
    assert grey[0][0].shape == (1, 16, 16)


@pytest.mark.parametrize("content", [b"definitely not a png", "truncated"])
def test_imagefolder_undecodable_image_names_file(tmp_path, content):
    root = _imagefolder(tmp_path)
    bad = root / "train" / "dog" / "zz_bad.png"
    if content == "truncated":
        good = (root / "train" / "dog" / "00.png").read_bytes()
        content = good[: len(good) // 2]
    bad.write_bytes(content)
    ds = build_dataset("imagefolder", "train", root=root, image_size=8)
    pos = len(ds) - 1  # sorted order puts zz_bad.png last
    with pytest.raises(PaceError, match="zz_bad.png"):
        ds[pos]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(PaceError, match=r"\[data\] root"):
        build_dataset("imagefolder", "train", root=tmp_path / "nope")
    with pytest.raises(PaceError, match=r"\[data\] root"):
        build_dataset("imagefolder", "train", root=None)
    root = _imagefolder(tmp_path)
    with pytest.raises(PaceError, match="val"):
        build_dataset("imagefolder", "val", root=root)
    (root / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(PaceError, match="'empty' has no images"):
        build_dataset("imagefolder", "empty", root=root)
    (root / "flat").mkdir()
    _png(root / "flat" / "x.png", (0, 0, 0))
    with pytest.raises(PaceError, match="no class subfolders"):
        build_dataset("imagefolder", "flat", root=root)


# ---------------------------------------------------------------- k-shot


def test_kshot_exact_deterministic_and_seed_dependent(tmp_path):
    root = _imagefolder(tmp_path, per_class={"cat": 6, "dog": 6, "emu": 6})

    def picks(seed):
        ds = build_dataset("imagefolder", "train", root=root, image_size=8, shots=2, seed=seed)
        assert Counter(ds.labels) == {0: 2, 1: 2, 2: 2}
        assert [ds[i][2] for i in range(len(ds))] == list(range(6))
        return [p.name + str(lab) for p, lab in zip((ds._paths[r] for r in ds._rows), ds.labels)]

    assert picks(0) == picks(0)
    assert any(picks(s) != picks(0) for s in range(1, 6))


def test_kshot_ignores_list_order(tmp_path):
    images = [f"img/{i}.png" for i in range(8)]
    lines = [f"{rel} {i % 2}" for i, rel in enumerate(images)]
    a = _vtab(tmp_path / "a", {"train800": lines}, images)
    shuffled = lines[:]
    random.Random(3).shuffle(shuffled)
    b = _vtab(tmp_path / "b", {"train800": shuffled}, images)

    def chosen(root):
        ds = build_dataset("vtab1k", "train800", root=root, image_size=8, shots=2, seed=7)
        return sorted(ds._paths[r].relative_to(root).as_posix() for r in ds._rows)

    assert chosen(a) == chosen(b)


def test_kshot_errors(tmp_path):
    root = _imagefolder(tmp_path, per_class={"cat": 3, "dog": 8})
    with pytest.raises(PaceError, match=r"class 'cat' in split 'train' has only 3 images.*shots = 8"):
        build_dataset("imagefolder", "train", root=root, shots=8)
    for bad in (0, -2):
        with pytest.raises(PaceError, match="shots"):
            build_dataset("imagefolder", "train", root=root, shots=bad)


# ---------------------------------------------------------------- digits


def test_digits_splits_disjoint_cover_and_proportions():
    images, labels = digits.digits_arrays()
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,) and images.max() == 16
    rows = digits.digits_split_rows()
    train, val, test = (set(rows[s]) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(1797))
    assert set(rows["trainval"]) == train | val
    per_class = Counter(labels.tolist())
    for split, frac in (("test", 0.5), ("val", 0.2), ("train", 0.3)):
        got = Counter(labels[rows[split]].tolist())
        for c, n in per_class.items():
            assert abs(got[c] - frac * n) <= 1, (split, c)
    ds = build_dataset("digits", "val", image_size=8, channels=1)
    assert len(ds) == len(val) and ds.classes == [str(i) for i in range(10)]
    first = sorted(val)[0]
    torch.testing.assert_close(ds[0][0][0], torch.from_numpy(images[first]).float() / 16)
    assert ds.labels[0] == labels[first]


def test_digits_split_is_independent_of_user_seed():
    a = build_dataset("digits", "train", image_size=8, seed=0)
    b = build_dataset("digits", "train", image_size=8, seed=123)
    assert a.labels == b.labels and torch.equal(a[10][0], b[10][0])


# ---------------------------------------------------------------- fashion-mnist


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_idx_files(tmp_path, gz):
    arrays = _fmnist(tmp_path, gz)
    sizes = {s: len(build_dataset("fashion-mnist", s, root=tmp_path, image_size=28))
             for s in ("train", "val", "trainval", "test")}
    assert sizes == {"train": 10, "val": 2, "trainval": 12, "test": 6}
    ds = build_dataset("fashion-mnist", "val", root=tmp_path, image_size=28, channels=1)
    images, labels = arrays["train"]
    image, label, index = ds[1]
    torch.testing.assert_close(image[0], torch.from_numpy(images[11]).float() / 255)
    assert label == labels[11] and index == 1
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    rgb = build_dataset("fashion-mnist", "test", root=tmp_path, image_size=32)
    assert rgb[0][0].shape == (3, 32, 32)
    assert torch.equal(rgb[0][0][0], rgb[0][0][2])


def test_fashion_mnist_bad_files(tmp_path):
    _fmnist(tmp_path, gz=False)
    img = tmp_path / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-5])
    with pytest.raises(PaceError, match="train-images-idx3-ubyte.*truncated"):
        build_dataset("fashion-mnist", "train", root=tmp_path)
    img.write_bytes(_idx_bytes(np.zeros((12, 28, 28)), 2049))
    with pytest.raises(PaceError, match="magic"):
        build_dataset("fashion-mnist", "train", root=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(PaceError, match="t10k-labels-idx1-ubyte"):
        build_dataset("fashion-mnist", "test", root=tmp_path)
    with pytest.raises(PaceError, match="train, val, trainval, test"):
        build_dataset("fashion-mnist", "validation", root=tmp_path)


def test_real_fashion_mnist_sizes():
    if not Path(FASHION_MNIST_DEFAULT_ROOT).is_dir():
        pytest.skip(f"no Fashion-MNIST at {FASHION_MNIST_DEFAULT_ROOT}")
    sizes = {s: len(build_dataset("fashion-mnist", s, image_size=28)) for s in ("train", "val", "test")}
    assert sizes == {"train": 50000, "val": 10000, "test": 10000}
    ds = build_dataset("fashion-mnist", "test", image_size=28, channels=1)
    assert Counter(ds.labels) == {c: 1000 for c in range(10)}


# ---------------------------------------------------------------- vtab1k


def test_vtab1k_last_space_and_shared_classes(tmp_path):
    root = _vtab(tmp_path, {
        "train800": ["images/my cat.png 0", "images/dog.png\t1", "", "images/x y z.png 1"],
        "test": ["images/dog.png 4"],
    }, images=["images/my cat.png", "images/dog.png", "images/x y z.png"])
    ds = build_dataset("vtab1k", "train800", root=root, image_size=8)
    assert len(ds) == 3 and ds.labels == [0, 1, 1]
    assert ds.classes == ["0", "1", "2", "3", "4"]  # max label over all list files
    assert ds._paths[0].name == "my cat.png"
    assert ds[0][0].shape == (3, 8, 8)


@pytest.mark.parametrize("bad, match", [("b.png cat", "line 2.*'cat'"),
                                        ("b.png -1", "line 2.*negative"),
                                        ("lonely.png", "line 2")])
def test_vtab1k_bad_label_line(tmp_path, bad, match):
    root = _vtab(tmp_path, {"train800": ["a.png 0", bad]}, images=["a.png", "b.png"])
    with pytest.raises(PaceError, match=match) as info:
        build_dataset("vtab1k", "train800", root=root)
    assert "train800.txt" in str(info.value)


def test_vtab1k_missing_image_and_split(tmp_path):
    root = _vtab(tmp_path, {"train800": ["a.png 0", "gone.png 1"]}, images=["a.png"])
    with pytest.raises(PaceError, match="gone.png.*line 2"):
        build_dataset("vtab1k", "train800", root=root)
    with pytest.raises(PaceError, match="val200.txt"):
        build_dataset("vtab1k", "val200", root=root)
    with pytest.raises(PaceError, match="train800, val200, train800val200, test"):
        build_dataset("vtab1k", "train", root=root)
    (root / "test.txt").write_text("\n")
    with pytest.raises(PaceError, match="'test' has no images"):
        build_dataset("vtab1k", "test", root=root)


# ---------------------------------------------------------------- generic errors


def test_unknown_source_and_split():
    with pytest.raises(PaceError, match=", ".join(SOURCES)):
        build_dataset("cifar", "train")
    with pytest.raises(PaceError, match="train, val, trainval, test"):
        build_dataset("digits", "train800")
    with pytest.raises(PaceError, match="no images"):
        build_dataset("synthetic", "train", synthetic_size=0)


# ---------------------------------------------------------------- loaders


def test_make_loader_reproducible_and_indices():
    ds = build_dataset("synthetic", "train", image_size=8, synthetic_size=30)

    def order(seed):
        return torch.cat([idx for _, _, idx in make_loader(ds, 7, shuffle=True, seed=seed)]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == list(range(30))

    batches = list(make_loader(ds, 8, shuffle=False))
    assert [len(b[2]) for b in batches] == [8, 8, 8, 6]
    images, labels, indices = (torch.cat(parts) for parts in zip(*batches))
    assert indices.tolist() == list(range(30))
    assert labels.tolist() == list(ds.labels)
    for i in (0, 17, 29):
        assert torch.equal(images[i], ds[i][0])
    assert [len(b[2]) for b in make_loader(ds, 8, shuffle=True, drop_last=True)] == [8, 8, 8]


def test_make_loader_rejects_impossible_batches():
    ds = build_dataset("synthetic", "train", image_size=8, synthetic_size=5)
    with pytest.raises(PaceError, match="batch size"):
        make_loader(ds, 8, shuffle=True, drop_last=True)
    with pytest.raises(PaceError, match="batch size"):
        make_loader(ds, 0, shuffle=False)


def test_kshot_indices_are_positions_after_subsetting():
    ds = build_dataset("digits", "train", image_size=8, shots=3, seed=4)
    assert len(ds) == 30 and Counter(ds.labels) == {c: 3 for c in range(10)}
    batch = next(iter(make_loader(ds, 30, shuffle=True, seed=0)))
    images, labels, indices = batch
    for img, lab, idx in zip(images, labels, indices):
        assert ds.labels[idx] == lab
        assert torch.equal(ds[int(idx)][0], img)


# ---------------------------------------------------------------- decoded-image cache and loader options


def _noisy_imagefolder(root: Path, n: int = 6) -> Path:
    """Random-pixel JPEGs of two sizes, so decoding and resizing both matter."""
    rng = np.random.default_rng(0)
    for i in range(n):
        name = ("cat", "dog")[i % 2]
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(20 + i, 13, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "train" / name / f"{i:02d}.jpg")
    return root


def _images(ds) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in range(len(ds))])


@pytest.mark.parametrize("channels", [1, 3])
def test_cache_gives_the_uncached_images_and_skips_the_files(tmp_path, channels):
    root = _noisy_imagefolder(tmp_path)
    kwargs = dict(root=root, image_size=16, channels=channels, mean=[0.5] * channels, std=[0.25] * channels)
    plain = build_dataset("imagefolder", "train", cache=False, **kwargs)
    cached = build_dataset("imagefolder", "train", cache=True, **kwargs)
    assert not plain.cache_enabled and cached.cache_enabled
    expected = _images(plain)
    assert torch.equal(_images(cached), expected)  # first read: decoded and stored
    for path in root.rglob("*.jpg"):
        path.unlink()  # a second read must come from memory
    assert torch.equal(_images(cached), expected)
    with pytest.raises(PaceError, match="cannot read image"):
        plain[0]


def test_cache_holds_only_the_kshot_subset(tmp_path):
    root = _noisy_imagefolder(tmp_path, n=8)
    ds = build_dataset("imagefolder", "train", root=root, image_size=8, shots=2, cache=True)
    assert len(ds) == 4 and ds._cache.shape == (4, 3, 8, 8)
    reference = build_dataset("imagefolder", "train", root=root, image_size=8, shots=2, cache=False)
    assert torch.equal(_images(ds), _images(reference))


def test_cache_auto_follows_the_memory_budget(tmp_path, monkeypatch):
    root = _noisy_imagefolder(tmp_path)
    assert build_dataset("imagefolder", "train", root=root, image_size=16, cache="auto").cache_enabled
    monkeypatch.setattr(data_loader, "CACHE_AUTO_BYTES", 6 * 3 * 16 * 16 - 1)  # one byte short of the split
    assert not build_dataset("imagefolder", "train", root=root, image_size=16, cache="auto").cache_enabled
    # in-memory sources never cache: they are arrays already
    assert not build_dataset("synthetic", "train", image_size=8, cache=True).cache_enabled
    with pytest.raises(PaceError, match="cache"):
        build_dataset("imagefolder", "train", root=root, image_size=16, cache="yes")


def test_cache_is_shared_with_worker_processes(tmp_path):
    """Workers fill one shared buffer: after an epoch the main process sees every slot filled."""
    root = _noisy_imagefolder(tmp_path)
    ds = build_dataset("imagefolder", "train", root=root, image_size=16, cache=True)
    loader = make_loader(ds, 2, shuffle=True, seed=3, num_workers=2)
    assert loader.persistent_workers
    first = {int(i): img for images, _, idx in loader for i, img in zip(idx, images)}
    assert ds._cached.tolist() == [1] * len(ds)
    for path in root.rglob("*.jpg"):
        path.unlink()
    second = {int(i): img for images, _, idx in loader for i, img in zip(idx, images)}
    assert first.keys() == second.keys() == set(range(len(ds)))
    assert all(torch.equal(first[i], second[i]) for i in first)


def test_make_loader_defaults_follow_the_machine(monkeypatch):
    ds = build_dataset("synthetic", "train", image_size=8, synthetic_size=8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loader = make_loader(ds, 4, shuffle=False, num_workers="auto")
    assert loader.num_workers == 0 and not loader.pin_memory
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert data_loader.default_num_workers() >= 1
    with pytest.raises(PaceError, match="num_workers"):
        make_loader(ds, 4, shuffle=False, num_workers=-1)


# ---------------------------------------------------------------- the source registry


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_row_agrees_with_its_builder_and_the_recipe(name):
    spec = SOURCES[name]
    params = inspect.signature(spec.load_builder()).parameters
    assert list(params)[1:] == list(spec.options)  # the options, and nothing else, are its keyword arguments
    for key in spec.options:
        assert key in DataSection.model_fields and key in EvalTarget.model_fields, key
        default = DataSection.model_fields[key].default
        # an unset target key gets the builder's default, a [data] key the recipe's: they must agree
        assert default is None or default == params[key].default, key


@pytest.mark.parametrize("name", list(SOURCES))
def test_cacheable_rows_build_cacheable_sets(name, tmp_path):
    from fake_data import make_fake_data

    spec = SOURCES[name]
    data = {"source": name, "train_split": spec.splits[0] if spec.splits else "train", "val_split": "",
            "test_split": "", "shots": 1 if spec.needs_shots else None}
    if spec.root == "required":
        data["root"] = "written by make_fake_data"
    recipe = make_fake_data(Recipe.model_validate({"model": {"name": "x"}, "data": data}), tmp_path)
    ds = build_dataset(name, recipe.data.train_split, root=recipe.data.root, image_size=8, cache=True,
                       list_shots=recipe.data.shots)
    assert ds.cache_enabled == spec.cacheable


def test_arguments_a_source_does_not_read_are_refused(tmp_path):
    with pytest.raises(PaceError, match="^image_dir is only read by source = 'fewshot' or 'fgvc', not 'digits'; remove it$"):
        build_dataset("digits", "train", image_dir="images")
    with pytest.raises(PaceError, match="root is only read by source = 'imagefolder' or 'vtab1k'"):
        build_dataset("synthetic", "train", root=tmp_path)
    with pytest.raises(PaceError, match="list_shots is only read by source = 'fewshot', not 'vtab1k'"):
        build_dataset("vtab1k", "train800", root=tmp_path, list_shots=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'image_folder'"):
        build_dataset("digits", "train", image_folder="images")
    # unset (None) options are not "given"
    assert len(build_dataset("digits", "val", image_size=8, image_dir=None, fewshot_layout=None)) > 0
