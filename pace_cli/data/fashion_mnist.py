"""The ``fashion-mnist`` source: the four idx files (gzipped or not) under ``[data] root``.

``train`` and ``val`` split the training file (the last sixth is held out), ``trainval`` is all
of it, ``test`` the t10k file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pace_cli.data.datasets import ArrayDataset, PaceDataset
from pace_cli.data.lists import read_idx
from pace_cli.data.sources import SourceRequest
from pace_cli.errors import PaceError

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def build(request: SourceRequest) -> PaceDataset:
    root, split = request.root, request.split
    prefix = "t10k" if split == "test" else "train"
    img_file = _find_idx(root, f"{prefix}-images-idx3-ubyte")
    lab_file = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(img_file, 2051)
    labels = read_idx(lab_file, 2049)
    if len(images) != len(labels):
        raise PaceError(f"{img_file} holds {len(images)} images but {lab_file} holds "
                        f"{len(labels)} labels; the files do not belong together, re-download them")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise PaceError(f"{lab_file} has label {int(labels.max())}, but Fashion-MNIST has 10 "
                        "classes (0-9); the file is corrupt, re-download it")
    # The standard split holds out the last sixth (10,000 of 60,000) for validation;
    # using a fraction keeps train/val disjoint for smaller files too.
    n = len(labels)
    n_val = n // 6
    if split == "train":
        rows = slice(0, n - n_val)
    elif split == "val":
        rows = slice(n - n_val, n)
    else:
        rows = slice(0, n)
    # Copy: the cached array is a read-only view of the file bytes, which torch rejects.
    images_t = torch.from_numpy(images[rows].copy())
    ds = ArrayDataset(images_t, 255.0, classes=FASHION_MNIST_CLASSES, labels=labels[rows].tolist(),
                      **request.common())
    ds._root = root  # named by the "no images" error
    return ds


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise PaceError(f"Fashion-MNIST file {stem}[.gz] not found in {root}; "
                    "set [data] root to the folder holding the idx files")
