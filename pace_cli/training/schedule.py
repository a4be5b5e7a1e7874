"""The learning-rate schedule: linear warm-up, then cosine decay, evaluated at every step."""

from __future__ import annotations

import math
from dataclasses import dataclass


def learning_rate(step: int, *, total_steps: int, warmup_steps: int, peak: float, start: float,
                  floor: float) -> float:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup_steps`` steps, then cosine decay to ``floor``.

    With t = ``step``, w = ``warmup_steps`` and T = ``total_steps``, the decay is a per-step
    cosine over (t - w) / (T - w), which reaches ``floor`` at t = T. This is not the
    authors' schedule: they step theirs once per epoch, so their rate is constant within an
    epoch and follows a staircase of the same envelope. Per-step decay is kept because short
    runs, common with this tool, would otherwise spend whole epochs at one rate.
    """
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass(frozen=True)
class LearningRateSchedule:
    """A run's schedule, fixed by the recipe and the number of steps per epoch."""

    total_steps: int
    warmup_steps: int
    peak: float
    start: float
    floor: float

    @classmethod
    def for_run(cls, optim, *, steps_per_epoch: int, epochs: int) -> LearningRateSchedule:
        """From a recipe's ``[optim]`` section: warm-up over ``warmup_epochs`` whole epochs."""
        return cls(total_steps=steps_per_epoch * epochs, warmup_steps=steps_per_epoch * optim.warmup_epochs,
                   peak=optim.lr, start=optim.warmup_start_lr, floor=optim.min_lr)

    def at(self, step: int) -> float:
        return learning_rate(step, total_steps=self.total_steps, warmup_steps=self.warmup_steps, peak=self.peak,
                             start=self.start, floor=self.floor)
