"""The learning-rate schedules: ``epoch`` against timm's own CosineLRScheduler, driven as the PACE authors drive it."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers import tiny_recipe_text
from timm.scheduler import CosineLRScheduler

from pace_cli.errors import PaceError
from pace_cli.recipe import parse_recipe
from pace_cli.training.schedule import LearningRateSchedule, learning_rate


def authors_rates(*, epochs: int, warmup: int, lr: float, start: float, floor: float, steps_per_epoch: int):
    """The rate of every step of the authors' loop (Vision/train.py): timm's scheduler on a dummy optimiser,
    read from the optimiser during each step and stepped with the 0-based epoch after each epoch."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's note that t_initial = 1 does nothing
        scheduler = CosineLRScheduler(optimizer, t_initial=epochs, warmup_t=warmup, lr_min=floor,
                                      warmup_lr_init=start, cycle_decay=0.1)
    rates = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            rates.append(optimizer.param_groups[0]["lr"])
        scheduler.step(epoch)
    return rates


def schedule(kind: str, *, epochs: int, warmup: int, lr: float, start: float, floor: float, steps_per_epoch: int):
    optim = parse_recipe(tiny_recipe_text(optim={"schedule": kind, "lr": lr, "warmup_epochs": warmup,
                                                 "warmup_start_lr": start, "min_lr": floor})).optim
    return LearningRateSchedule.for_run(optim, steps_per_epoch=steps_per_epoch, epochs=epochs)


@pytest.mark.parametrize("epochs,warmup,lr,steps_per_epoch", [
    (100, 10, 5e-3, 3),   # few-shot, FGVC, domain adaptation
    (300, 10, 1e-3, 2),   # VTAB-1K
    (20, 0, 1e-2, 4),     # no warm-up: epoch 0 trains at the optimiser's own lr
    (7, 7, 2e-3, 2),      # warm-up as long as the run
    (5, 12, 1e-3, 3),     # warm-up longer than the run: never leaves it
    (1, 0, 1e-3, 5),
    (2, 1, 3e-4, 1),
])
def test_epoch_schedule_equals_timm_driven_as_the_authors_drive_it(epochs, warmup, lr, steps_per_epoch):
    kw = dict(epochs=epochs, warmup=warmup, lr=lr, start=1e-6, floor=1e-5, steps_per_epoch=steps_per_epoch)
    expected = authors_rates(**kw)
    ours = schedule("epoch", **kw)
    got = [ours.at(step) for step in range(ours.total_steps)]
    assert len(got) == len(expected) == epochs * steps_per_epoch
    assert got == expected  # the same floats, not merely close


def test_epoch_schedule_shape_at_the_paper_setting():
    ours = schedule("epoch", epochs=100, warmup=10, lr=5e-3, start=1e-6, floor=1e-5, steps_per_epoch=1)
    rates = [ours.at(e) for e in range(100)]
    assert rates[0] == rates[1] == 1e-6                      # the constructor's value, then step(0)'s
    assert rates[11] == pytest.approx(1e-5 + 0.5 * (5e-3 - 1e-5) * (1 + math.cos(math.pi * 10 / 100)))
    assert max(rates) == rates[11] < 5e-3                     # the cosine of t/T, started late: peak never reached
    constant = schedule("epoch", epochs=4, warmup=1, lr=1e-3, start=1e-6, floor=1e-5, steps_per_epoch=5)
    assert len({constant.at(s) for s in range(5, 10)}) == 1   # one rate per epoch


def test_per_step_schedule_is_the_curve_it_always_was():
    """Bit for bit the formula the default schedule had before ``schedule`` existed, written out here."""
    ours = schedule("per_step", epochs=6, warmup=2, lr=1e-3, start=1e-6, floor=1e-5, steps_per_epoch=4)
    for step in range(24):
        if step < 8:
            expected = 1e-6 + (1e-3 - 1e-6) * step / 8
        else:
            expected = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * min(1.0, (step - 8) / 16)))
        assert ours.at(step) == expected
        assert ours.at(step) == learning_rate(step, total_steps=24, warmup_steps=8, peak=1e-3, start=1e-6, floor=1e-5)
    assert ours.total_steps == 24 and ours.at(8) == 1e-3


def test_schedule_default_and_bad_value():
    assert parse_recipe(tiny_recipe_text()).optim.schedule == "per_step"
    with pytest.raises(PaceError, match=r"\[optim\] schedule = 'per_epoch': must be one of per_step, epoch"):
        parse_recipe(tiny_recipe_text(optim={"schedule": "per_epoch"}))


def test_training_follows_the_epoch_schedule(tmp_path):
    """A real run sets the optimiser to the schedule's rate, and the epoch record's lr is the rate its steps used."""
    import json

    from pace_cli.training import train

    recipe = parse_recipe(tiny_recipe_text(
        data={"batch_size": 8, "synthetic_classes": 3, "synthetic_size": 16, "val_split": ""},
        pace={"variant": "off"}, optim={"schedule": "epoch", "lr": 1e-2, "warmup_epochs": 1, "min_lr": 1e-4},
        train={"epochs": 3, "log_every": 1}))
    train(recipe, output_dir=tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    expected = authors_rates(epochs=3, warmup=1, lr=1e-2, start=1e-6, floor=1e-4, steps_per_epoch=2)
    assert [r["lr"] for r in records if r["type"] == "step"] == expected
    assert [r["lr"] for r in records if r["type"] == "epoch"] == expected[1::2]
