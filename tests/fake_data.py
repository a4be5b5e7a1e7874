"""Tiny fake data in the layout each data source expects, for any recipe.

``make_fake_data(recipe, root)`` writes a few small PNGs (or idx files) per class and split
under ``root`` for the recipe's ``[data]`` source and for every ``[[eval.targets]]`` entry, and
returns a copy of the recipe whose ``root`` keys point there. Class ids and counts follow the
recipe where it says them (``[model] num_classes``: the largest class id written is
``num_classes - 1``, so a label-space check sees the full head), and the few-shot lists honour
``shots``, ``seed`` and ``fewshot_layout``. Meant for tests that check every shipped recipe
(e.g. ``pace check``) without the real data sets.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from pace_cli.data import SOURCES, fewshot_list
from pace_cli.recipe import Recipe, recipe_to_dict

__all__ = ["make_fake_data", "write_png", "class_ids_for"]

SIZE = (12, 10)  # not square, so resize-then-crop paths are exercised


def write_png(path: Path, seed: int, channels: int = 3, size=SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def class_ids_for(num_classes: int | None, classes: int) -> list[int]:
    """``classes`` ids spread over ``0..num_classes-1`` (first and last included), non-contiguous."""
    if num_classes is None:
        return [3 * i + 1 for i in range(classes)]  # 1, 4, 7: non-contiguous on purpose
    n = min(classes, num_classes)
    if n == 1:
        return [num_classes - 1]
    return sorted({round(i * (num_classes - 1) / (n - 1)) for i in range(n)})


def _lines(entries) -> str:
    return "".join(f"{rel} {label}\n" for rel, label in entries)


def _write_list_set(folder: Path, prefix: str, ids: list[int], per_class: int, channels: int, seed: int):
    """Write ``per_class`` images per id under ``folder``; return ``(relative path, id)`` entries."""
    entries = []
    for c in ids:
        for k in range(per_class):
            rel = f"{prefix}/c{c}_{k}.png"
            write_png(folder / rel, seed=zlib.crc32(f"{prefix}:{c}:{k}:{seed}".encode()), channels=channels)
            entries.append((rel, c))
    return entries


def _vtab1k(root: Path, ids: list[int], per_class: int, channels: int) -> None:
    for split in SOURCES["vtab1k"].splits:
        entries = _write_list_set(root, f"images/{split}", ids, per_class, channels, 0)
        (root / f"{split}.txt").write_text(_lines(entries))


def _fewshot(root: Path, ids: list[int], *, layout: str, shots: int | None, seed: int, image_dir: str | None,
             splits: list[str], per_class: int, channels: int) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    if shots is not None and "train" not in splits:
        splits = ["train", *splits]  # the k-shot list defines every split's classes
    for split in splits:
        list_name, default_dir = fewshot_list(layout, split, shots, seed)
        folder_name = image_dir or default_dir
        folder = root if folder_name == "." else root / folder_name
        n = shots if split == "train" and shots is not None else per_class
        entries = _write_list_set(folder, f"s_{split}", ids, n, channels, seed)
        (root / "annotations" / list_name).write_text(_lines(entries))


def _fgvc(root: Path, ids: list[int], *, image_dir: str | None, per_class: int, channels: int) -> None:
    folder_name = image_dir or "images"
    folder = root if folder_name == "." else root / folder_name
    for split in ("train", "val", "test"):
        entries = _write_list_set(folder, split, ids, per_class, channels, 0)
        (root / f"{split}.json").write_text(json.dumps({rel: c for rel, c in entries}))


def _imagefolder(root: Path, names: list[str], splits: list[str], per_class: int, channels: int) -> None:
    for split in splits:
        for name in names:
            for k in range(per_class):
                write_png(root / split / name / f"{k}.png", seed=zlib.crc32(f"{split}:{name}:{k}".encode()), channels=channels)


def _fashion_mnist(root: Path, per_class: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        labels = np.repeat(np.arange(10), per_class * 6).astype(np.uint8)  # val takes the last sixth
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        for name, arr, magic in ((f"{prefix}-images-idx3-ubyte", images, 2051),
                                 (f"{prefix}-labels-idx1-ubyte", labels, 2049)):
            header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
            (root / name).write_bytes(header + arr.tobytes())


def _write_source(source: str, root: Path, *, ids: list[int], names: list[str], splits: list[str],
                  layout: str | None, shots: int | None, seed: int, image_dir: str | None, per_class: int,
                  channels: int) -> None:
    if source == "vtab1k":
        _vtab1k(root, ids, per_class, channels)
    elif source == "fewshot":
        _fewshot(root, ids, layout=layout or "fgvc", shots=shots, seed=seed, image_dir=image_dir, splits=splits,
                 per_class=per_class, channels=channels)
    elif source == "fgvc":
        _fgvc(root, ids, image_dir=image_dir, per_class=per_class, channels=channels)
    elif source == "imagefolder":
        _imagefolder(root, names, splits, per_class, channels)
    elif source == "fashion-mnist":
        _fashion_mnist(root, per_class)
    # digits ships with pace and synthetic is generated: nothing to write.


def make_fake_data(recipe: Recipe, root: str | Path, *, classes: int = 3, per_class: int = 2) -> Recipe:
    """Write fake data for ``recipe`` (and its eval targets) under ``root``; return the re-pointed recipe.

    ``classes`` classes are written (fewer if ``[model] num_classes`` is smaller), ``per_class``
    images per class and split (``shots`` for a few-shot training list; at least ``shots`` for
    other sources that subsample).
    """
    root = Path(root)
    data = recipe.data
    channels = data.channels
    per_class = max(per_class, data.shots or 0) if data.source != "fewshot" else per_class
    ids = class_ids_for(recipe.model.num_classes, classes)
    if data.source == "vtab1k" and data.shots:
        ids = list(range(len(ids)))  # vtab1k classes run 0..max: k-shot needs every one populated
    names = [f"class_{i}" for i in ids]
    splits = [s for s in (data.train_split, data.val_split, data.test_split) if s]
    out = recipe_to_dict(recipe)
    data_root = root / "data"
    if SOURCES[data.source].reads_root:
        _write_source(data.source, data_root, ids=ids, names=names, splits=splits, layout=data.fewshot_layout,
                      shots=data.shots, seed=data.seed, image_dir=data.image_dir, per_class=per_class,
                      channels=channels)
        out["data"]["root"] = str(data_root)

    # The names the trained head will carry, so a target with class_map = "name" matches them.
    if data.source in ("fewshot", "fgvc"):
        head_names = [str(i) for i in ids]
    elif data.source == "imagefolder":
        head_names = names
    else:
        head_names = [str(i) for i in range(max(ids) + 1)]
    for i, target in enumerate(recipe.eval.targets):
        target_root = root / "targets" / f"{i}_{''.join(ch if ch.isalnum() else '_' for ch in target.name)}"
        # A target holds a subset of the training classes (like ImageNet-A's 200 of 1000).
        subset = ids[: max(1, len(ids) - 1)]
        if target.class_map == "name" and target.source in ("fewshot", "fgvc", "vtab1k"):
            if not all(n.isdigit() for n in head_names):
                raise ValueError(f"target '{target.name}': class names {head_names} are not numeric ids")
            target_ids = [int(head_names[ids.index(c)]) if data.source in ("fewshot", "fgvc") else c for c in subset]
        else:
            target_ids = subset
        target_names = [names[ids.index(c)] for c in subset] if data.source == "imagefolder" else \
            [str(c) for c in target_ids]
        _write_source(target.source, target_root, ids=target_ids, names=target_names, splits=[target.split],
                      layout=target.fewshot_layout, shots=None, seed=0, image_dir=target.image_dir,
                      per_class=per_class, channels=channels)
        if SOURCES[target.source].reads_root:
            out["eval"]["targets"][i]["root"] = str(target_root)
    return Recipe.model_validate(out)
