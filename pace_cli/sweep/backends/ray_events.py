"""The driver side of the Ray backend's events: a Tune callback that hands each trial's end to the sweep.

Imported only with Ray installed. The callback is a module-level class so that Tune, which
pickles its callbacks, pickles it by reference; the queues it feeds stay in this process.
"""

from __future__ import annotations

import contextlib
import json
import queue

from ray import cloudpickle
from ray.tune import Callback

from pace_cli.errors import PaceError
from pace_cli.files.layout import LOCK_FILE
from pace_cli.sweep.plan import PlannedRun
from pace_cli.sweep.rank import RunOutcome

# The driver's queues, by key: a queue (its locks) cannot be pickled.
_CHANNELS: dict[int, tuple[queue.Queue, list]] = {}


class ForwardTrialEnds(Callback):
    """Each trial's reported outcome, its GPU placement, and its final failure, put on the sweep's queue."""

    def __init__(self, key: int, runs: list[PlannedRun]):
        self.key, self.runs = key, runs

    def _put(self, item, placement=None):
        events, placements = _CHANNELS[self.key]
        if placement is not None:
            placements.append(placement)
        events.put(item)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "outcome" not in result:
            return
        run = self.runs[trial.config["run"]]
        if result["outcome"] == "rung":  # stopped at the stage's rung epoch (--scheduler asha): judged next
            return
        if result["outcome"] == "interrupted":
            self._put(("interrupted", run))
            return
        outcome = RunOutcome(**json.loads(result["outcome"]))
        self._put(("outcome", outcome), {"run_dir": str(run.run_dir), **json.loads(result["placement"])})

    def on_trial_recover(self, iteration, trials, trial, **info):
        release_lock(self.runs[trial.config["run"]])

    def on_trial_error(self, iteration, trials, trial, **info):
        run = self.runs[trial.config["run"]]
        release_lock(run)
        outcome = RunOutcome.of(run, "failed")
        outcome.reason = trial_error(trial)
        self._put(("outcome", outcome))


def forwarding_callback(runs: list[PlannedRun], events: queue.Queue, placements: list) -> ForwardTrialEnds:
    _CHANNELS[id(events)] = (events, placements)
    return ForwardTrialEnds(id(events), runs)


def close_channel(events: queue.Queue) -> None:
    _CHANNELS.pop(id(events), None)


def release_lock(run: PlannedRun) -> None:
    """The failed trial's worker is gone (maybe on another host, where the lock's pid cannot be checked)."""
    with contextlib.suppress(OSError):
        (run.run_dir / LOCK_FILE).unlink()


def trial_error(trial) -> str:
    """The trial's last failure as one line: the exception the trainable raised, or why its worker died."""
    error = None
    with contextlib.suppress(Exception):  # Tune writes it in the trial's local folder, synced to storage later
        with open(trial.pickled_error_file, "rb") as file:
            error = cloudpickle.load(file)
    if error is None:
        with contextlib.suppress(Exception):
            error = trial.get_pickled_error()
    error = getattr(error, "cause", None) or error
    if isinstance(error, PaceError):
        return str(error)
    if error is not None:
        return f"{type(error).__name__}: {first_line(error)}"
    return "the trial failed twice (see its error file under the sweep's ray/ folder)"


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


