"""What the training loop asks of a metric logger (the always-on metrics.jsonl, the experiment trackers).

The shape follows torchtune's metric loggers: a dict of numbers at a step, the run's
configuration once, and ``close``. A logger is built with the run folder and, on resume, the
step the run continues from, so it can drop or overwrite what it logged past that step. An
experiment tracker is built from a :class:`TrackerRun` instead, which also says its names, its
files' folder, and what it logged before an interruption; the ids it must find again on resume
are kept in the run folder (:data:`TRACKER_IDS_FILE`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

from pace_cli import files

# <output>/trackers.json: each tracker's ids ({"wandb": {"id": ...}, "mlflow": {"run_id": ...}}),
# so that --resume continues the same tracker runs.
TRACKER_IDS_FILE = "trackers.json"


class MetricLogger(Protocol):
    def log_dict(self, payload: Mapping[str, Any], step: int) -> None:
        """Record ``payload`` (one step or epoch record) as logged at global step ``step``."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the run's resolved recipe (as a JSON-able dict), once, before the first step."""

    def close(self) -> None:
        """Flush and release; called once, also when training fails (an experiment tracker is called with
        ``finished=False`` then, so its run is marked as not finished)."""


@dataclass(frozen=True)
class TrackerRun:
    """What an experiment tracker is told about the run it logs."""

    output_dir: Path
    name: str  # [log] run_name, or the output folder's name
    project: str
    group: str | None
    files_dir: Path  # [log] dir, or the output folder
    resumed_at_step: int | None  # the checkpoint's step on resume: records past it are redone
    logged_through: int | None  # on resume, the last step metrics.jsonl held: the tracker has those records

    def redone(self, step: int) -> bool:
        """Whether a record at ``step`` is one trained again after a resume (a tracker that kept its run holds it)."""
        return self.logged_through is not None and step <= self.logged_through

    def saved_ids(self, tracker: str) -> dict[str, Any] | None:
        """The ids ``tracker`` kept in this run folder, on resume (a fresh run starts new tracker runs)."""
        path = self.output_dir / TRACKER_IDS_FILE
        if self.resumed_at_step is None or not path.is_file():
            return None
        return json.loads(path.read_text()).get(tracker)

    def keep_ids(self, tracker: str, ids: Mapping[str, Any]) -> None:
        path = self.output_dir / TRACKER_IDS_FILE
        kept = json.loads(path.read_text()) if path.is_file() else {}
        kept[tracker] = dict(ids)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        files.write_text_atomic(path, json.dumps(kept, indent=2) + "\n")


def scalars(payload: Mapping[str, Any]) -> dict[str, float]:
    """A record's numbers under the trackers' names: ``<type>/<metrics.jsonl name>`` (``step/ce``,
    ``epoch/val_top1``), so a step record's ``lr`` and its epoch's ``lr`` stay two series."""
    kind = payload.get("type")
    return {f"{kind}/{key}" if kind else key: float(value) for key, value in payload.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"pace": {"lambda": 1.0}}`` -> ``{"pace.lambda": 1.0}``; lists and None stay as they are."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_text(value: Any) -> bool | int | float | str:
    """A config value as TensorBoard's hparams and MLflow's params take it: numbers, booleans and
    strings as they are, None as "" (TOML's unset), lists and tables as JSON."""
    if value is None:
        return ""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def final_figure_names(config: Mapping[str, Any]) -> list[str]:
    """The tracker names of the figures a finished run is compared by: the last epoch's."""
    names = ["epoch/train_loss", "epoch/train_top1"]
    if config.get("data", {}).get("val_split"):
        names = ["epoch/val_top1", "epoch/val_loss", *names]
    return names
