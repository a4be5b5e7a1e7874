"""The ``synthetic`` source: a generated, learnable task for tests and smoke runs.

Class means depend on the seed only, so every split shares one task; samples depend on the split
name too, so any split name works and each gives different samples.
"""

from __future__ import annotations

import zlib

import torch

from pace_cli.data.datasets import ArrayDataset, PaceDataset
from pace_cli.data.sources import SourceRequest
from pace_cli.errors import PaceError

# Side length of the generated base images; the transform upsamples them, so storing
# them small keeps memory flat whatever image_size is asked for.
_BASE_SIZE = 16


def build(request: SourceRequest, *, synthetic_classes: int = 10, synthetic_size: int = 64) -> PaceDataset:
    """``synthetic_size`` images of ``synthetic_classes`` classes (balanced, shuffled)."""
    if int(synthetic_classes) < 1:
        raise PaceError(f"synthetic_classes = {synthetic_classes} must be at least 1")
    if int(synthetic_size) < 0:
        raise PaceError(f"synthetic_size = {synthetic_size} must not be negative")
    n_classes, size, seed = int(synthetic_classes), int(synthetic_size), request.seed
    channels = request.transform.channels  # 1 or 3, checked by build_dataset
    b = _BASE_SIZE
    g_means = torch.Generator().manual_seed(zlib.crc32(f"synthetic-means:{seed}".encode()))
    means = 0.2 + 0.6 * torch.rand(n_classes, channels, b, b, generator=g_means)
    g = torch.Generator().manual_seed(zlib.crc32(f"synthetic:{request.split}:{seed}".encode()))
    labels = torch.arange(size) % n_classes
    labels = labels[torch.randperm(size, generator=g)]
    noise = 0.1 * torch.randn(size, channels, b, b, generator=g)
    images = (means[labels] + noise).clamp_(0.0, 1.0)
    return ArrayDataset(images, 1.0, classes=[str(i) for i in range(n_classes)], labels=labels.tolist(),
                        **request.common())
