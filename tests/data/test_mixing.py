"""The batch mix: timm's Mixup / CutMix over the global batch keyed by (seed, step), and soft-target losses.

The reference mixes are written out here (sample i with sample G-1-i, a box pasted for CutMix,
smoothed one-hot targets mixed with the same weight); only the random draws come from timm's
own functions, under NumPy's generator seeded with the documented key.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from timm.data.mixup import Mixup, cutmix_bbox_and_lam

from pace_cli.data import BatchMix, batch_mix
from pace_cli.errors import PaceError

NOAH_MIX = dict(mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=1.0, switch_prob=0.5, label_smoothing=0.1)
CLASSES = 5


def batch(size=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, CLASSES, (size,), generator=g)


def smoothed(labels, smoothing):
    off = smoothing / CLASSES
    out = torch.full((len(labels), CLASSES), off)
    out[torch.arange(len(labels)), labels] = 1 - smoothing + off
    return out


def expected_mix(images, labels, seed, step, options):
    """By hand, from timm's draws for (seed, step): (images, targets, whether it cut)."""
    np.random.seed(zlib.crc32(f"mix:{seed}:{step}".encode()))
    timm_mixup = Mixup(mixup_alpha=options["mixup_alpha"], cutmix_alpha=options["cutmix_alpha"],
                       prob=options["mix_prob"], switch_prob=options["switch_prob"], num_classes=CLASSES)
    lam, cut = timm_mixup._params_per_batch()
    partner = images[torch.arange(len(images) - 1, -1, -1)]
    out = images.clone()
    if lam != 1.0 and cut:
        (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(images.shape, lam, correct_lam=True)
        out[:, :, yl:yh, xl:xh] = partner[:, :, yl:yh, xl:xh]
    elif lam != 1.0:
        out = lam * images + (1 - lam) * partner
    one_hot = smoothed(labels, options["label_smoothing"])
    return out, lam * one_hot + (1 - lam) * one_hot.flip(0), cut


def test_mix_is_timms_draw_applied_to_the_pairs_of_the_global_batch():
    mix = BatchMix(CLASSES, seed=11, **NOAH_MIX)
    cuts = set()
    for step in range(8):
        images, labels = batch(seed=step)
        want_images, want_targets, cut = expected_mix(images, labels, 11, step, NOAH_MIX)
        got_images, got_targets = mix(images.clone(), labels, step)
        torch.testing.assert_close(got_images, want_images, rtol=0, atol=1e-6)
        torch.testing.assert_close(got_targets, want_targets, rtol=0, atol=1e-6)
        assert got_targets.shape == (6, CLASSES) and torch.allclose(got_targets.sum(1), torch.ones(6))
        cuts.add(cut)
    assert cuts == {True, False}  # both branches were checked


def test_same_step_same_mix_and_numpys_generator_untouched():
    mix = BatchMix(CLASSES, seed=1, **NOAH_MIX)
    images, labels = batch()
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    first = mix(images.clone(), labels, 3)
    assert np.array_equal(np.random.get_state()[1], before)
    np.random.rand(10)  # the run's own draws do not change the mix
    again = mix(images.clone(), labels, 3)
    other = mix(images.clone(), labels, 4)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def test_label_smoothing_alone_keeps_the_images_and_needs_no_pairs():
    mix = batch_mix({**NOAH_MIX, "mixup_alpha": 0.0, "cutmix_alpha": 0.0}, num_classes=CLASSES, seed=0,
                    global_batch=5)
    images, labels = batch(size=5)
    out, targets = mix(images.clone(), labels, 0)
    assert torch.equal(out, images) and torch.allclose(targets, smoothed(labels, 0.1))


def test_an_odd_global_batch_is_refused_before_training():
    assert batch_mix(None, num_classes=CLASSES, seed=0, global_batch=5) is None
    with pytest.raises(PaceError, match="the batch is 5"):
        batch_mix(NOAH_MIX, num_classes=CLASSES, seed=0, global_batch=5)
