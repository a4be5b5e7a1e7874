"""Mixup and CutMix over the global batch, keyed by (seed, step), with timm's own ``Mixup``.

``timm.data.Mixup`` in its batch mode draws one weight λ per batch (and, with both alphas, whether
to cut instead of blend) from NumPy's global generator, and mixes sample i of the batch with
sample B−1−i. Called as it is on each process's share, the pairs and the draws would depend on
the number of processes. :class:`BatchMix` runs it on the global batch instead: every process
gathers all shares (in rank order, which is the one-process batch), seeds NumPy's global generator
from ``(seed, step)`` for the call, restores it after, and keeps its own rows. So N processes mix
what one does, a resumed run mixes what the uninterrupted one did, and targets become soft
``[B, classes]`` rows (smoothed one-hot labels, mixed with the same λ).
"""

from __future__ import annotations

import zlib

from torch import Tensor

from pace_cli import distributed
from pace_cli.data.augment import seeded_global_generators
from pace_cli.errors import PaceError


class BatchMix:
    """Soft targets for each training batch: timm's Mixup / CutMix and label smoothing over the global batch.

    Call it with this process's share of global batch ``step`` (images and integer labels, on the
    training device); it returns the share's mixed images and its ``[B, num_classes]`` float
    targets. Without an alpha it only smooths the labels (no exchange between processes).
    """

    def __init__(self, num_classes: int, *, seed: int = 0, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 mix_prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.0):
        from timm.data import Mixup

        self.num_classes, self.seed, self.label_smoothing = int(num_classes), int(seed), float(label_smoothing)
        self.mixes = mixup_alpha > 0 or cutmix_alpha > 0
        self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mix_prob,
                           switch_prob=switch_prob, mode="batch", correct_lam=True,
                           label_smoothing=label_smoothing, num_classes=self.num_classes)

    def key(self, step: int) -> int:
        return zlib.crc32(f"mix:{self.seed}:{step}".encode())

    def __call__(self, images: Tensor, labels: Tensor, step: int) -> tuple[Tensor, Tensor]:
        from timm.data.mixup import mixup_target

        if not self.mixes:
            return images, mixup_target(labels, self.num_classes, 1.0, self.label_smoothing)
        world = distributed.current_world()
        local = images.shape[0]
        everyone, everyone_labels = distributed.all_gather_rows(images), distributed.all_gather_rows(labels)
        with seeded_global_generators(self.key(step)):  # Mixup draws from NumPy's
            # in place on the gathered batch (one process: the loaded batch itself)
            mixed, targets = self.mixup(everyone, everyone_labels)
        mine = slice(world.rank * local, (world.rank + 1) * local)
        return mixed[mine], targets[mine]


def batch_mix(options: dict | None, *, num_classes: int, seed: int, global_batch: int) -> BatchMix | None:
    """The batch mix of ``[augment]``'s mix keys (``AugmentSection.batch_mix_options()``); None: none.

    An odd ``global_batch`` (a training split smaller than an even ``[data] batch_size``) cannot be
    paired, so it is refused here, before training starts.
    """
    if options is None:
        return None
    mix = BatchMix(num_classes, seed=seed, **options)
    if mix.mixes and global_batch % 2:
        raise PaceError(f"[augment] mixes sample i of the global batch with sample B-1-i, but the batch is "
                        f"{global_batch} (the whole training split, fewer images than [data] batch_size)",
                        remedy="use an even number of training images, or drop mixup_alpha and cutmix_alpha")
    return mix
