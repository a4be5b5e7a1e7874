"""Evaluation preprocessing: a decoded image in [0, 1] becomes the model's input tensor."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Transform:
    """Turn a raw ``[c, h, w]`` float image in [0, 1] into the model's input tensor.

    Resized (bilinear) to ``image_size`` squared, grey repeated to three channels when the model
    takes three, then normalised by ``mean``/``std`` when given. A class rather than a closure so
    data sets stay picklable for worker processes.
    """

    def __init__(self, image_size: int, channels: int, mean, std):
        self.image_size = image_size
        self.channels = channels
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        if x.shape[0] == 1 and self.channels == 3:
            x = x.repeat(3, 1, 1)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.contiguous()
