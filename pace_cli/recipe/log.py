"""The ``[log]`` section: which experiment trackers a run also writes to, under which names, checked torch-free.

metrics.jsonl is always written and stays the source of truth; the trackers named here get the
same records (:mod:`pace_cli.training.loggers`). Whether a tracker's package is installed is
checked when a run or a sweep starts, not here, so a recipe loads on a machine without them.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, field_validator

from pace_cli.recipe.base import _Section, is_set

# The trackers a recipe may name, in the order the README lists them; the training loggers'
# registry maps each to its module (a test holds the two together).
TRACKER_NAMES = ("tensorboard", "wandb", "mlflow")
# The trackers that read [log] project and group (TensorBoard has neither notion).
NAMED_RUN_TRACKERS = ("wandb", "mlflow")


class LogSection(_Section):
    trackers: list[str] = Field(
        default_factory=list,
        description="Experiment trackers that also receive every record of metrics.jsonl, the resolved recipe "
        "and the final validation figures: any of " + ", ".join(TRACKER_NAMES) + "; [] = metrics.jsonl only.")
    project: str = Field("pace", min_length=1, description="W&B project; MLflow experiment (with group: "
                         "<project>/<group>).")
    run_name: str | None = Field(None, min_length=1, description="The run's name in every tracker; unset = the "
                                 "output folder's name (in pace sweep: runs/<setting>_seed-<s> or final/...).")
    group: str | None = Field(None, min_length=1, description="Runs compared together: W&B's group, MLflow's "
                              "experiment <project>/<group>; pace sweep sets it to the sweep folder's name.")
    dir: str | None = Field(None, min_length=1, description="Folder of the trackers' local files (TensorBoard "
                            "events under tensorboard/<run_name>, W&B's wandb/, MLflow's file store mlruns/); "
                            "unset = the output folder (pace sweep: the sweep folder).")

    @field_validator("trackers")
    @classmethod
    def _known_once(cls, names: list[str]) -> list[str]:
        for i, name in enumerate(names):
            if name not in TRACKER_NAMES:
                raise ValueError(f"{name!r} is not a tracker; use any of " + ", ".join(TRACKER_NAMES))
            if name in names[:i]:
                raise ValueError(f"{name!r} is listed twice; name each tracker once")
        return names


def unread_log_keys(log: LogSection) -> list[str]:
    """Warnings for [log] keys set but read by none of the trackers named (see :mod:`pace_cli.recipe.inert`)."""
    if not log.trackers:
        unread = [key for key in ("project", "run_name", "group", "dir") if is_set(log, key)]
        reason = "trackers is empty, so only metrics.jsonl is written"
    else:
        unread = [key for key in ("project", "group") if is_set(log, key)] \
            if not set(log.trackers) & set(NAMED_RUN_TRACKERS) else []
        reason = "they are read by wandb and mlflow only"
    return [f"[log] {', '.join(unread)} set but ignored: {reason}"] if unread else []


def sweep_log_overrides(log: LogSection, sweep_dir: Path, run_dir: Path) -> list[str]:
    """The ``--set`` items that file a sweep's run with its sweep: named by its folder in the sweep
    (``runs/<setting>_seed-<s>``), its files in the sweep folder (one MLflow store, one TensorBoard
    folder over every run), grouped by the sweep folder's name. Keys the recipe sets are kept."""
    if not log.trackers:
        return []
    wanted = {"run_name": run_dir.relative_to(sweep_dir).as_posix(), "dir": str(sweep_dir)}
    if set(log.trackers) & set(NAMED_RUN_TRACKERS):
        wanted["group"] = sweep_dir.resolve().name
    return [f"log.{key}={json.dumps(value)}" for key, value in wanted.items() if not is_set(log, key)]
