"""The ``digits`` source: scikit-learn's 8x8 handwritten digits, shipped in pace_cli/assets.

A fixed stratified split, independent of the user's seed: 30% train, 20% val, 50% test per class.
"""

from __future__ import annotations

import functools
import io
import random
from importlib.resources import files

import numpy as np
import torch

from pace_cli.data.datasets import ArrayDataset, PaceDataset
from pace_cli.data.sources import SourceRequest


def build(request: SourceRequest) -> PaceDataset:
    images, labels = digits_arrays()
    rows = digits_split_rows()[request.split]
    return ArrayDataset(torch.from_numpy(images[rows]), 16.0, classes=[str(i) for i in range(10)],
                        labels=labels[rows].tolist(), **request.common())


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(images [1797, 8, 8] in 0..16, labels [1797])`` of the shipped asset."""
    with (files("pace_cli") / "assets" / "digits.npz").open("rb") as fh:
        with np.load(io.BytesIO(fh.read())) as npz:
            return npz["images"].copy(), npz["labels"].copy()


@functools.lru_cache(maxsize=1)
def digits_split_rows() -> dict[str, list[int]]:
    """Rows of each split: a fixed stratified draw (seed 0), 30/20/50 per class."""
    _, labels = digits_arrays()
    rng = random.Random(0)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == c).tolist()
        rng.shuffle(rows)
        n_test = round(0.5 * len(rows))
        n_val = round(0.2 * len(rows))
        out["test"] += rows[:n_test]
        out["val"] += rows[n_test:n_test + n_val]
        out["train"] += rows[n_test + n_val:]
    out = {k: sorted(v) for k, v in out.items()}
    out["trainval"] = sorted(out["train"] + out["val"])
    return out
