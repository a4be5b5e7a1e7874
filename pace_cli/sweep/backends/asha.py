"""``--scheduler asha`` without Ray: its flags, its rungs, the checks against the sweep's recipes, its record on disk.

Everything here runs before Ray starts, so a flag that cannot work with the recipe fails in one
line before any trial. The scheduler itself, which needs Ray Tune, is in :mod:`.ray_asha`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pace_cli import files
from pace_cli.errors import PaceError
from pace_cli.files.layout import METRICS_FILE
from pace_cli.sweep.plan import PlannedRun

SCHEDULERS = ("fifo", "asha")
STOPPED_FILE = "stopped.json"  # in a run folder: the run was stopped early; a rerun does not train it
DEFAULT_REDUCTION = 3


@dataclass(frozen=True)
class Halving:
    """Successive halving's two numbers. ``grace`` None: the recipe's first evaluated epoch (``eval_every``)."""

    grace: int | None = None
    reduction: int = DEFAULT_REDUCTION

    def __post_init__(self):
        if self.grace is not None and self.grace < 1:
            raise PaceError(f"--grace-epochs {self.grace} must be >= 1 (the epoch of the first rung)")
        if self.reduction < 2:
            raise PaceError(f"--reduction-factor {self.reduction} must be >= 2 (each rung keeps the top 1/R "
                            "of the settings that reach it)")

    def rungs(self, recipe) -> list[int]:
        """The epochs at which a setting trained with ``recipe`` is judged: grace·R^k, below the last epoch."""
        epoch, out = self.grace or recipe.train.eval_every, []
        while epoch < recipe.train.epochs:
            out.append(epoch)
            epoch *= self.reduction
        return out


def refuse_unusable(halving: Halving, runs: Sequence[PlannedRun]) -> None:
    """One line before anything starts when the recipe of a grid run cannot be judged at the rungs."""
    for run in runs:
        if run.phase != "grid":
            continue
        train, where = run.recipe.train, f"setting {run.setting.name}"
        grace = halving.grace or train.eval_every
        flag = f"--grace-epochs {grace}" if halving.grace else f"the first rung (epoch {grace}, [train] eval_every)"
        if not run.recipe.data.val_split:
            raise PaceError(f"--scheduler asha judges settings on validation top-1, but {where} has no "
                            "[data] val_split; set one or drop --scheduler asha")
        if grace >= train.epochs:
            raise PaceError(f"{flag} is not below [train] epochs = {train.epochs} ({where}): "
                            "no run would ever be stopped; use a smaller --grace-epochs or drop --scheduler asha")
        if grace % train.eval_every:
            raise PaceError(f"--grace-epochs {grace} is not an evaluated epoch: [train] eval_every = "
                            f"{train.eval_every} ({where}) evaluates every {train.eval_every}th epoch; use a "
                            f"multiple of {train.eval_every}")


def validation_by_epoch(run_dir: Path) -> dict[int, float]:
    """Validation top-1 per evaluated epoch, from a run folder's metrics log (what an earlier sweep left)."""
    path, out = run_dir / METRICS_FILE, {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a record torn by a crash
            if isinstance(record, dict) and record.get("type") == "epoch" and "val_top1" in record:
                out[int(record["epoch"])] = float(record["val_top1"])
    return out


def record_stopped(run: PlannedRun, *, epoch: int, mean: float, cut: float) -> None:
    """The run's folder says it was stopped, so that no backend trains it again."""
    reason = (f"stopped by asha at epoch {epoch}: its setting's mean validation top-1 over seeds "
              f"{100 * mean:.2f}% was below the rung's cut {100 * cut:.2f}%")
    files.write_text_atomic(run.run_dir / STOPPED_FILE, json.dumps(
        {"epoch": epoch, "setting_mean_val_top1": mean, "cut": cut, "reason": reason}, indent=2) + "\n")


def stopped_reason(run: PlannedRun) -> str | None:
    """Why the run was stopped early (its stopped.json), or None when it was not."""
    path = run.run_dir / STOPPED_FILE
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text()).get("reason", "stopped by asha"))
    except ValueError:
        return "stopped by asha"
