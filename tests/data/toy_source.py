"""A data source written the way a new one is added: this module plus one row of SOURCES.

Stripes: class c is a vertical stripe in column band c of an otherwise dark image, so a tiny ViT
learns it in one epoch. Its splits have their own names, it reads no root, and it takes one of
the option keys ([data] / [[eval.targets]] synthetic_classes) and draws its noise from the seed.
"""

from __future__ import annotations

import zlib

import torch

from pace_cli.data.datasets import ArrayDataset, PaceDataset
from pace_cli.data.sources import SourceRequest, SourceSpec

SPLIT_SIZES = {"fit": 24, "holdout": 8, "exam": 12}

SPEC = SourceSpec("stripes", "toy_source:build", splits=tuple(SPLIT_SIZES), options=("synthetic_classes",),
                  seed_use="data")


def build(request: SourceRequest, *, synthetic_classes: int = 3) -> PaceDataset:
    n, side = SPLIT_SIZES[request.split], 16
    g = torch.Generator().manual_seed(zlib.crc32(f"stripes:{request.split}:{request.seed}".encode()))
    labels = torch.arange(n) % synthetic_classes
    images = 0.1 * torch.rand(n, request.transform.channels, side, side, generator=g)
    band = side // synthetic_classes
    for i, c in enumerate(labels.tolist()):
        images[i, :, :, c * band:(c + 1) * band] += 0.8
    return ArrayDataset(images.clamp_(0, 1), 1.0, classes=[f"band{c}" for c in range(synthetic_classes)],
                        labels=labels.tolist(), **request.common())
