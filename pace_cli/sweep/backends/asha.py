"""``--scheduler asha``: successive halving of whole settings, judged at rungs on validation top-1.

Why not Ray Tune's ``ASHAScheduler``: it judges each trial on its own result, but a sweep ranks a
*setting* by the mean of its seeds, and a trial is one seed of one setting; stopping seeds one by
one would leave settings half stopped and ranked on their luckiest seeds. A setting can only be
judged once all its seeds reached the rung, and its seeds need not run together: with fewer trial
slots than seeds, the first seeds would train to the end while they wait. Pausing them in a Tune
scheduler does not free their slots (Tune 2.60 counts paused trials against
``max_concurrent_trials``). So the Ray backend runs the grid rung by rung, each stage a Tune run
of its own: every live run trains up to the rung epoch and stops there with its pace checkpoint
(:class:`RungReached`), then :func:`halve` ranks the settings judged at that rung by their mean
over seeds, keeps the top 1/R (at least one), and stops every seed of the others; the next stage
resumes the kept runs from their checkpoints (bit for bit as if never stopped). The last stage
trains the survivors to their last epoch. Rungs are ASHA's: epochs grace·R^k below the last.

Everything here runs in the driver without Ray, and what cannot work with the recipe fails in
one line before Ray starts. A stopped run keeps its folder (metrics, checkpoint) and gets
``stopped.json``; no backend trains it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pace_cli import files
from pace_cli.errors import PaceError
from pace_cli.files.layout import ADAPTER_FILE, METRICS_FILE
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
                            f"{train.eval_every} ({where}) evaluates epochs {train.eval_every}, {2 * train.eval_every}, "
                            f"…; use a multiple of {train.eval_every}")


class RungReached(Exception):
    """Raised by a trial's logger at the end of its rung epoch, after that epoch's checkpoint is saved."""


def stages(halving: Halving, runs: Sequence[PlannedRun]) -> list[int]:
    """Every rung epoch of the grid runs, in order (settings may differ in epochs)."""
    return sorted({rung for run in runs if run.phase == "grid" for rung in halving.rungs(run.recipe)})


def halve(rung: int, runs: Sequence[PlannedRun], halving: Halving, live: set[str]) -> dict[str, tuple[float, float]]:
    """The settings to stop at ``rung``, each with its mean and the cut: of the ``live`` settings with this
    rung, those with validation figures there are ranked like the sweep's ranking (mean top-1 over the
    seeds that have one, then mean loss, then grid order) and all but the top 1/R (at least one) go.
    A setting none of whose runs is left to train counts in the ranking but is not stopped."""
    by_setting: dict[str, list[PlannedRun]] = {}
    for run in runs:
        if run.phase == "grid" and run.setting.name in live and rung in halving.rungs(run.recipe):
            by_setting.setdefault(run.setting.name, []).append(run)
    ranked = []
    for name, members in by_setting.items():
        figures = [f for f in (validation_by_epoch(run.run_dir).get(rung) for run in members) if f is not None]
        if figures:
            top1 = sum(f[0] for f in figures) / len(figures)
            losses = [f[1] for f in figures if f[1] is not None]
            loss = sum(losses) / len(losses) if losses else float("inf")
            ranked.append((-round(top1, 9), round(loss, 9), members[0].setting.index, name, top1))
    ranked.sort()
    keep = max(1, len(ranked) // halving.reduction)
    if len(ranked) <= keep:
        return {}
    cut = ranked[keep - 1][4]
    return {name: (top1, cut) for *_, name, top1 in ranked[keep:]
            if any(not (run.run_dir / ADAPTER_FILE).is_file() for run in by_setting[name])}


def validation_by_epoch(run_dir: Path) -> dict[int, tuple[float, float | None]]:
    """Validation top-1 and loss per evaluated epoch, from a run folder's metrics log."""
    path, out = run_dir / METRICS_FILE, {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a record torn by a crash
            if isinstance(record, dict) and record.get("type") == "epoch" and "val_top1" in record:
                out[int(record["epoch"])] = (float(record["val_top1"]), record.get("val_loss"))
    return out


def record_stopped(run: PlannedRun, *, epoch: int, mean: float, cut: float) -> None:
    """The run's folder says it was stopped, so that no backend trains it again."""
    reason = (f"stopped by asha at epoch {epoch}: its setting's mean validation top-1 over seeds, "
              f"{100 * mean:.2f}%, was not in the rung's top 1/R (the cut: {100 * cut:.2f}%)")
    files.write_text_atomic(run.run_dir / STOPPED_FILE, json.dumps(
        {"epoch": epoch, "setting_mean_val_top1": mean, "cut": cut, "reason": reason}, indent=2) + "\n")


def _stopped_record(run: PlannedRun) -> dict | None:
    path = run.run_dir / STOPPED_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        record = None  # written atomically, so only a hand edit gets here
    return record if isinstance(record, dict) else {}


def stopped_reason(run: PlannedRun) -> str | None:
    """Why the run was stopped early (its stopped.json), or None when it was not."""
    record = _stopped_record(run)
    return None if record is None else str(record.get("reason", "stopped by asha"))


def stopped_epoch(run: PlannedRun) -> int | None:
    """The rung at which the run was stopped, or None when it was not (0 when stopped.json says no epoch)."""
    record = _stopped_record(run)
    return None if record is None else int(record.get("epoch", 0))
