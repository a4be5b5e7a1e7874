"""timm's training transform, run on each sample with generators keyed by (seed, epoch, sample).

timm's transforms draw from the process's global generators: RandomResizedCrop, RandAugment's
magnitudes and random erasing's boxes from Python's ``random``, RandAugment's choice of operations
from NumPy's, the flip, colour jitter and the erased pixels from torch's. Left alone, a sample's
augmentation would depend on which worker or process loaded it and on everything drawn before.
:class:`SampleAugment` saves the three generators' states, seeds all three from a key of
``(seed, epoch, row)``, runs the transform and restores them: a sample looks the same for any
number of workers or processes, in a resumed run as in an uninterrupted one, and the run's own
random streams do not move.
"""

from __future__ import annotations

import random
import re
import zlib
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from pace_cli.errors import PaceError, one_line


@contextmanager
def seeded_global_generators(key: int) -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU) global generators seeded by ``key`` inside, as they were after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch_state = torch.random.get_rng_state()
    random.seed(key)
    np.random.seed(key)
    # the CPU generator only: torch.manual_seed would reseed CUDA's generators as well
    torch.random.default_generator.manual_seed(key)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)


def timm_train_transform(image_size: int, mean: Sequence[float], std: Sequence[float], **options: Any):
    """``timm.data.create_transform(is_training=True, ...)``; what timm refuses is one line naming the key.

    ``options`` are create_transform's augmentation arguments (``auto_augment``, ``color_jitter``,
    ``scale``, ``ratio``, ``hflip``, ``interpolation``, ``re_prob``, ``re_mode``, ``re_count``);
    a colour jitter of 0 means none.
    """
    from timm.data import create_transform

    options = dict(options)
    ignored = _sections_timm_ignores(options.get("auto_augment"))
    if ignored:
        raise PaceError(f"[augment] auto_augment = {options['auto_augment']!r}: timm would silently ignore "
                        f"{', '.join(map(repr, ignored))} (a section is a letter code and a number, e.g. 'm9')",
                        remedy="fix or drop those sections, e.g. 'rand-m9-mstd0.5-inc1'")
    if not options.get("color_jitter"):
        options["color_jitter"] = None  # timm would apply ColorJitter(0, 0, 0) for a 0
    for key in ("scale", "ratio"):
        if options.get(key) is not None:
            options[key] = tuple(options[key])

    def create(**changes: Any):
        return create_transform(int(image_size), is_training=True, mean=tuple(mean), std=tuple(std),
                                **{**options, **changes})

    try:
        return _with_zero_bit_posterize(create())
    except Exception as error:  # timm checks its strings with asserts and dict look-ups
        why = one_line(error) or type(error).__name__
        policy = options.get("auto_augment")
        if policy:
            try:
                create(auto_augment=None)
            except Exception:
                pass
            else:
                raise PaceError(f"[augment] auto_augment = {policy!r}: timm rejects it ({why})",
                                remedy="use a string timm's create_transform reads, e.g. 'rand-m9-mstd0.5-inc1' "
                                "(RandAugment) or 'original' (AutoAugment)") from None
        raise PaceError(f"[augment]: timm's create_transform rejects these settings ({why})",
                        remedy="fix the [augment] keys") from None


def _sections_timm_ignores(policy: str | None) -> list[str]:
    """The sections of a RandAugment or AugMix string that timm skips without a word.

    timm splits ``rand-m9-mstd0.5`` at '-' and reads each later section as a key followed by its
    number; a section without a digit (a typo such as ``mX`` or ``mstd``) is passed over, so the
    policy runs without the setting the user wrote.
    """
    if not policy or not policy.startswith(("rand", "augmix")):
        return []
    return [section for section in policy.split("-")[1:] if not re.search(r"\d", section)]


def posterize_keeping_zero_bits(img, bits_to_keep, **kwargs):
    """timm's posterize, where keeping 0 bits gives the black image Pillow gave before it refused 0.

    RandAugment's PosterizeIncreasing keeps ``4 - int(4 * m / 10)`` bits, 0 at magnitude 10, which
    ``rand-m9-mstd0.5`` reaches (m drawn from N(9, 0.5), clipped at 10) for about 0.4% of images;
    Pillow 13 raises ``bits must be between or equal to 1 and 8`` there, which would stop a run
    within its first epoch. The Pillow of timm 0.5.4's time (NOAH's) turned the image black.
    """
    from timm.data import auto_augment
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)  # every channel to 0, the lookup older Pillow applied
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def _with_zero_bit_posterize(transform):
    """``transform`` with each timm posterize operation replaced by :func:`posterize_keeping_zero_bits`."""
    from timm.data import auto_augment

    for step in getattr(transform, "transforms", ()):
        ops = list(getattr(step, "ops", ())) + [op for sub in getattr(step, "policy", ()) for op in sub]
        for op in ops:
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = posterize_keeping_zero_bits
    return transform


class SampleAugment:
    """timm's training transform for one split: a PIL image in, the model's input tensor out.

    Built at ``image_size`` with the split's normalisation (``mean``/``std`` unset: none, i.e. 0
    and 1, so the output is in [0, 1] like the evaluation transform's). Calling it with a sample's
    ``epoch`` and ``row`` draws that sample's augmentation from the key ``(seed, epoch, row)``.
    Picklable, so data sets carry it into DataLoader worker processes.
    """

    def __init__(self, image_size: int, channels: int, mean: Sequence[float] | None, std: Sequence[float] | None,
                 *, seed: int = 0, **options: Any):
        self.image_size, self.channels, self.seed = int(image_size), int(channels), int(seed)
        self.mean = tuple(mean) if mean is not None else (0.0,) * self.channels
        self.std = tuple(std) if std is not None else (1.0,) * self.channels
        self.options = dict(options)
        self.transform = timm_train_transform(self.image_size, self.mean, self.std, **self.options)

    def key(self, epoch: int, row: int) -> int:
        return zlib.crc32(f"augment:{self.seed}:{epoch}:{row}".encode())

    def __call__(self, image, *, epoch: int, row: int) -> torch.Tensor:
        with seeded_global_generators(self.key(epoch, row)):
            return self.transform(image).contiguous()

    def __repr__(self) -> str:
        return f"SampleAugment(seed={self.seed}, {self.transform!r})"
