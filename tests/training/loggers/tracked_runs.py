"""Tiny tracked runs for the tracker tests: a straight run, or one cut off by a crash and resumed.

Three steps an epoch, two epochs, a record every step, a checkpoint every two steps: a crash
after step 5 resumes from step 4's checkpoint, so step 5 is trained and logged twice.
"""

import json
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import tiny_recipe_text

from pace_cli.recipe import parse_recipe
from pace_cli.training import TrainLogger, train

RECIPE = tiny_recipe_text(
    data={"batch_size": 16, "synthetic_classes": 4, "synthetic_size": 48},
    adapter={"rank": 2},
    optim={"lr": 0.01, "warmup_epochs": 1},
    train={"epochs": 2, "log_every": 1, "checkpoint_every": 2},
)
CRASH_AT, CHECKPOINT_BEFORE_CRASH = 5, 4


class Crash(TrainLogger):
    def step(self, record):
        if record["step"] == CRASH_AT:
            raise RuntimeError("power cut")


def recipe(trackers, *overrides):
    return parse_recipe(RECIPE, [f"log.trackers={json.dumps(trackers)}", *overrides])


def train_tracked(out: Path, trackers, *overrides, **kwargs):
    return train(recipe(trackers, *overrides), output_dir=out, **kwargs)


def crash_and_resume(out: Path, trackers, *overrides, after_crash=lambda: None) -> list[dict]:
    """Train until the crash, resume; the records metrics.jsonl held at the crash."""
    with pytest.raises(RuntimeError, match="power cut"):
        train_tracked(out, trackers, *overrides, logger=Crash())
    after_crash()
    before = records(out)
    assert max(r["step"] for r in before) == CRASH_AT
    train_tracked(out, trackers, *overrides, resume=True)
    return before


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def kept_through_the_crash(before: list[dict], out: Path) -> list[dict]:
    """What a tracker that keeps what it had (W&B, MLflow: they do not resend a redone step) holds after the
    resume: the records logged before the crash, then the resumed run's later ones. The redone steps differ
    from metrics.jsonl's only in their timings (a resumed run trains bit for bit as before)."""
    redone = {r["step"]: r for r in records(out) if CHECKPOINT_BEFORE_CRASH < r["step"] <= CRASH_AT}
    for record in before:
        if record["step"] in redone:
            timings = {"images_per_s", "seconds"}
            assert {k: v for k, v in record.items() if k not in timings} == \
                {k: v for k, v in redone[record["step"]].items() if k not in timings}
    return before + [r for r in records(out) if r["step"] > CRASH_AT]


def series(out: Path, logged: list[dict] | None = None) -> dict[str, dict[int, float]]:
    """The numbers of metrics.jsonl (or of ``logged``) as the trackers name them: '<record type>/<field>' ->
    {step: value}."""
    found: dict[str, dict[int, float]] = defaultdict(dict)
    for record in records(out) if logged is None else logged:
        for key, value in record.items():
            if key not in ("type", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                assert record["step"] not in found[f"{record['type']}/{key}"]  # one value a step in the log itself
                found[f"{record['type']}/{key}"][record["step"]] = float(value)
    return dict(found)
