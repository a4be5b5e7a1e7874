"""Ranking a sweep: each run's outcome, each setting's score over its seeds, and the sweep's result.

Settings are ranked by their mean validation top-1 over the seeds (the paper's protocol); the
outcomes may come from any backend, in any order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pace_cli.sweep.plan import GridAxis, PlannedRun, Setting


@dataclass
class RunOutcome:
    phase: str
    setting: str
    values: dict[str, Any]
    seed: int
    run_dir: str
    status: str  # trained, resumed, scored (a grid run's adapter, on test), skipped (already complete), failed,
    # stopped (early, by --scheduler asha: never ranked)
    val_top1: float | None = None
    val_loss: float | None = None
    test_top1: float | None = None
    test_loss: float | None = None
    seconds: float = 0.0
    protocol: str = ""  # what the run did to get its score (PlannedRun.protocol)
    reason: str = ""  # why a failed run failed, in one line

    @classmethod
    def of(cls, run: PlannedRun, status: str) -> RunOutcome:
        """The outcome of ``run``, its score still to be filled in."""
        return cls(run.phase, run.setting.name, dict(run.setting.values), run.seed, str(run.run_dir), status,
                   protocol=run.protocol)


@dataclass
class SettingScore:
    setting: str
    values: dict[str, Any]
    index: int
    seeds: int
    val_top1_mean: float
    val_top1_std: float
    val_loss_mean: float
    rank: int = 0


def rank_settings(settings: Sequence[Setting], outcomes: Sequence[RunOutcome]) -> list[SettingScore]:
    """Best first: higher mean validation top-1 over seeds, then lower mean validation loss, then grid order.

    Top-1 on a few hundred images ties often; the loss says which setting is more confident in
    the right answers. Means are compared after rounding to 1e-9 so that float summation order
    cannot break a real tie. Settings without a finished grid run are left out, and so is a setting
    early stopping stopped (any of its runs ``stopped``): its figures are from an earlier epoch than
    the others', and it is stopped whole.
    """
    scores = []
    stopped = {o.setting for o in outcomes if o.phase == "grid" and o.status == "stopped"}
    for setting in settings:
        if setting.name in stopped:
            continue
        done = [o for o in outcomes if o.phase == "grid" and o.setting == setting.name and o.val_top1 is not None]
        if not done:
            continue
        top1 = [o.val_top1 for o in done]
        losses = [o.val_loss for o in done if o.val_loss is not None]
        mean = sum(top1) / len(top1)
        std = math.sqrt(sum((t - mean) ** 2 for t in top1) / (len(top1) - 1)) if len(top1) > 1 else 0.0
        scores.append(SettingScore(setting.name, dict(setting.values), setting.index, len(done), mean, std,
                                   sum(losses) / len(losses) if losses else math.inf))
    scores.sort(key=lambda s: (-round(s.val_top1_mean, 9), round(s.val_loss_mean, 9), s.index))
    for rank, score in enumerate(scores, start=1):
        score.rank = rank
    return scores


@dataclass
class SweepResult:
    sweep_dir: Path
    recipe: str
    axes: list[GridAxis]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    runs: list[RunOutcome] = field(default_factory=list)
    ranking: list[SettingScore] = field(default_factory=list)
    complete: bool = False
    final_protocol: str | None = None  # with --final: what the final runs do (SweepPlan.final_protocol)

    @property
    def best(self) -> SettingScore | None:
        return self.ranking[0] if self.ranking else None

    @property
    def final_runs(self) -> list[RunOutcome]:
        return [o for o in self.runs if o.phase == "final"]

    def to_dict(self) -> dict[str, Any]:
        tests = [o.test_top1 for o in self.final_runs if o.test_top1 is not None]
        return {
            "sweep_dir": str(self.sweep_dir), "recipe": self.recipe, "complete": self.complete,
            "overrides": self.overrides, "grid": {axis.key: list(axis.values) for axis in self.axes},
            "seeds": self.seeds,
            "ranking": [asdict(score) for score in self.ranking],
            "best": asdict(self.best) if self.best else None,
            "final_protocol": self.final_protocol,
            "final_test_top1_mean": sum(tests) / len(tests) if tests else None,
            "runs": [asdict(outcome) for outcome in self.runs],
        }
