"""The worker side of the Ray backend: one trial is one planned run, done as the sequential backend does it.

Imported in the Ray worker; needs no Ray at import (the driver's ``ray`` module names it).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path

from pace_cli.errors import PaceError
from pace_cli.files.layout import ADAPTER_FILE, CHECKPOINT_FILE
from pace_cli.sweep.backends.asha import RungReached
from pace_cli.sweep.backends.base import score, score_adapter
from pace_cli.sweep.plan import PlannedRun
from pace_cli.sweep.rank import RunOutcome
from pace_cli.training.stop import StopRequest, TrainingInterrupted

_POLL_S = 0.2  # how often a trial asks the driver's flag; training itself checks the request every step


class StopFlag:
    """The sweep's stop request, shared with every trial (a Ray actor of no resources)."""

    def __init__(self):
        self.requested = False

    def set(self) -> None:
        self.requested = True

    def get(self) -> bool:
        return self.requested


def run_trial(config, *, runs, cpus, stop_flag, hook, cwd, stop_at=None):
    """Tune's trainable: train (or score) ``runs[config["run"]]`` and report its outcome once.

    ``stop_at`` (``--scheduler asha``): the epoch at whose end training stops with its checkpoint, for
    the driver to judge the settings there; the trial then reports ``"rung"``."""
    import ray
    import torch
    from ray import tune

    run: PlannedRun = runs[config["run"]]
    started = time.time()
    if not Path(cwd).is_dir():
        raise PaceError(f"the sweep's working directory '{cwd}' does not exist on host {socket.gethostname()}",
                        remedy="put the sweep folder, recipe and data on a file system every node sees, "
                               "at the same path")
    os.chdir(cwd)  # the run's folder, recipe and data paths are the driver's, relative to its directory
    torch.set_num_threads(cpus)
    stop = StopRequest()
    watcher = threading.Thread(target=_watch, args=(stop_flag, stop), daemon=True)
    watcher.start()
    try:
        outcome = None if ray.get(stop_flag.get.remote()) else _do(run, cpus, stop, hook, stop_at)
    except TrainingInterrupted:
        outcome = None
    except RungReached:
        tune.report({"outcome": "rung"})
        return
    finally:
        stop.request()  # ends the watcher
    if outcome is None:  # stopped by the sweep: the checkpoint is saved, a rerun continues
        tune.report({"outcome": "interrupted"})
        return
    outcome.seconds = time.time() - started
    placement = {"gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                 "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                 "torch_threads": torch.get_num_threads(), "host": socket.gethostname(), "pid": os.getpid(),
                 "started": started, "ended": time.time()}
    tune.report({"outcome": json.dumps(asdict(outcome), default=str), "placement": json.dumps(placement)})


def _watch(stop_flag, stop: StopRequest) -> None:
    import ray

    while not stop.requested:
        if ray.get(stop_flag.get.remote()):
            stop.request()
            return
        time.sleep(_POLL_S)


def _do(run: PlannedRun, cpus: int, stop: StopRequest, hook, stop_at: int | None) -> RunOutcome:
    if run.job == "score":
        return score_adapter(run)
    from pace_cli.training.loop import TrainLogger, train

    adapter = run.run_dir / ADAPTER_FILE
    status = "trained"
    if not adapter.is_file():  # else: a retry of a trial that trained and then failed while scoring
        resume = (run.run_dir / CHECKPOINT_FILE).is_file()  # --resume was checked by the driver; a retry resumes
        logger = _TrialLogger(run, hook, stop_at) if hook or stop_at else TrainLogger()
        train(with_workers_capped(run.recipe, cpus), output_dir=run.run_dir, logger=logger, resume=resume, stop=stop)
        status = "resumed" if resume else "trained"
    outcome = RunOutcome.of(run, status)
    score(run, outcome, adapter)
    return outcome


def with_workers_capped(recipe, cpus: int):
    """``num_workers = "auto"`` sized to the trial's cores (one kept for the training process), not the node's."""
    from pace_cli.data.loader import default_num_workers

    if recipe.data.num_workers != "auto":
        return recipe
    workers = min(default_num_workers(), max(0, cpus - 1))
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"num_workers": workers})})


class _TrialLogger:
    """A silent TrainLogger that calls the test's hook after every step and ends training at the end of
    epoch ``stop_at`` (training saved that epoch's checkpoint before telling the logger)."""

    def __init__(self, run: PlannedRun, hook, stop_at: int | None):
        from pace_cli.training.loop import TrainLogger

        self._quiet, self._run, self._hook, self._stop_at = TrainLogger(), run, hook, stop_at

    def step(self, record) -> None:
        if self._hook:
            self._hook(self._run, record["step"])

    def epoch(self, record) -> None:
        if record["epoch"] == self._stop_at:
            raise RungReached(f"epoch {self._stop_at}")

    def __getattr__(self, name):
        return getattr(self._quiet, name)
