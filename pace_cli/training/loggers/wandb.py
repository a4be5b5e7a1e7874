"""Weights & Biases: the run's records, its recipe as the run's config, grouped with its sweep.

W&B's own settings apply: ``WANDB_MODE=offline`` writes the run to files only (synced later with
``wandb sync``), under ``WANDB_DIR`` or else ``<[log] dir or the output folder>/wandb``. The run id
is kept in the run folder, so ``--resume`` continues the same W&B run; the records it already
holds (those redone after the checkpoint) are not sent again, as W&B takes a step only once.
The last epoch's figures (``epoch/val_top1``, ...) are the run's summary, W&B's default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from pace_cli.training.loggers.base import TrackerRun, flat_config, scalars


class WandbLogger:
    def __init__(self, run: TrackerRun):
        import wandb

        self.tracker_run = run
        saved = run.saved_ids("wandb")
        self.continued = saved is not None  # the tracker's run holds what was logged before the resume
        options: dict[str, Any] = {"project": run.project, "name": run.name, "group": run.group}
        if saved:
            options.update(id=saved["id"], resume="allow")
        # read here, not left to wandb: its settings are read once per process (a sweep trains many runs in one)
        folder = Path(os.environ.get("WANDB_DIR") or run.files_dir)
        folder.mkdir(parents=True, exist_ok=True)
        options["dir"] = str(folder)
        if os.environ.get("WANDB_MODE"):
            options["mode"] = os.environ["WANDB_MODE"]
        self.run = wandb.init(**options)
        run.keep_ids("wandb", {"id": self.run.id})

    def log_dict(self, payload: Mapping[str, Any], step: int) -> None:
        if not (self.continued and self.tracker_run.redone(step)):  # W&B takes a step once
            self.run.log(scalars(payload), step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        # a resumed run may have changed a key resume allows (more epochs), so later values win
        self.run.config.update(flat_config(config), allow_val_change=True)

    def close(self, finished: bool = True) -> None:
        self.run.finish(exit_code=0 if finished else 1)
