"""The learning-rate schedules: linear warm-up then cosine decay, set per step or once per epoch.

``[optim] schedule`` picks one of two different curves:

- ``per_step`` (the default): the rate changes at every step; a linear warm-up over
  ``warmup_epochs`` epochs' worth of steps reaches ``lr`` and a cosine over the remaining steps
  ends at ``min_lr``.
- ``epoch``: the rate the PACE authors' code trains with. They build timm's
  ``CosineLRScheduler(t_initial=epochs, warmup_t=warmup_epochs, warmup_lr_init=warmup_start_lr,
  lr_min=min_lr)`` (``warmup_prefix`` left false) and call ``step(e)`` after epoch ``e``. The
  rate is constant within an epoch; epochs 0 and 1 both train at ``warmup_start_lr`` (the
  constructor sets it, and ``step(0)`` sets timm's value at t = 0, the same number); the cosine
  is indexed by the epoch itself, cos(π·t/T), so when warm-up ends it is already below ``lr``:
  with a warm-up the rate never reaches ``lr``. Over 100 epochs at warm-up 10 it averages about 10%
  below ``per_step`` (``benchmarks/lr_schedules.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pace_cli.recipe.schema import LrSchedule


def learning_rate(step: int, *, total_steps: int, warmup_steps: int, peak: float, start: float,
                  floor: float) -> float:
    """The ``per_step`` curve: linear warm-up from ``start`` to ``peak``, then cosine decay to ``floor``.

    With t = ``step``, w = ``warmup_steps`` and T = ``total_steps``, the decay is a cosine over
    (t - w) / (T - w): it starts at ``peak`` when warm-up ends and reaches ``floor`` at t = T.
    This is *not* the authors' curve (see :func:`epoch_learning_rate`); it is the default
    because short runs, common with this tool, would otherwise spend whole epochs at one rate.
    """
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def _timm_cosine_value(t: int, *, epochs: int, warmup_epochs: int, peak: float, start: float,
                       floor: float) -> float:
    """The value timm's cosine scheduler sets on ``step(t)`` (one cycle, no prefix, no noise, k = 1).

    The arithmetic is written in timm's order so that the floats come out identical.
    """
    if t < warmup_epochs:
        return start + t * ((peak - start) / warmup_epochs)
    if t >= epochs:  # past the single cycle
        return floor
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * t / epochs))


def epoch_learning_rate(epoch: int, *, epochs: int, warmup_epochs: int, peak: float, start: float,
                        floor: float) -> float:
    """The ``epoch`` curve: the rate in force during 0-based ``epoch`` of the authors' loop.

    Epoch 0 runs at what the scheduler's constructor left in the optimiser: ``start`` with a
    warm-up, the optimiser's own ``peak`` without one. Epoch e ≥ 1 runs at what ``step(e - 1)``
    set.
    """
    if epoch == 0:
        return start if warmup_epochs else peak
    return _timm_cosine_value(epoch - 1, epochs=epochs, warmup_epochs=warmup_epochs, peak=peak, start=start,
                              floor=floor)


@dataclass(frozen=True)
class LearningRateSchedule:
    """A run's schedule, fixed by the recipe and the number of steps per epoch."""

    kind: LrSchedule
    steps_per_epoch: int
    epochs: int
    warmup_epochs: int
    peak: float
    start: float
    floor: float

    @classmethod
    def for_run(cls, optim, *, steps_per_epoch: int, epochs: int) -> LearningRateSchedule:
        """From a recipe's ``[optim]`` section (``schedule``, ``lr``, ``warmup_epochs``, ``warmup_start_lr``, ``min_lr``)."""
        return cls(kind=optim.schedule, steps_per_epoch=steps_per_epoch, epochs=epochs,
                   warmup_epochs=optim.warmup_epochs, peak=optim.lr, start=optim.warmup_start_lr, floor=optim.min_lr)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def at(self, step: int) -> float:
        """The rate of 0-based training step ``step`` (its epoch is ``step // steps_per_epoch``)."""
        if self.kind == "epoch":
            return epoch_learning_rate(step // self.steps_per_epoch, epochs=self.epochs,
                                       warmup_epochs=self.warmup_epochs, peak=self.peak, start=self.start,
                                       floor=self.floor)
        return learning_rate(step, total_steps=self.total_steps, warmup_steps=self.steps_per_epoch * self.warmup_epochs,
                             peak=self.peak, start=self.start, floor=self.floor)
