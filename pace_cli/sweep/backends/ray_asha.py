"""``--scheduler asha`` for the Ray backend: asynchronous successive halving, decided per grid setting.

Why not Tune's own ``ASHAScheduler``: it judges each trial on its own result, but a sweep ranks
a *setting* by the mean of its seeds, and a trial here is one seed of one setting. Stopping
seeds one by one would leave settings half stopped and ranked on their luckiest seeds. So this
is a small :class:`~ray.tune.schedulers.TrialScheduler` (Tune's FIFO order otherwise) that keeps
ASHA's rule on settings:

- the rungs are the epochs grace·R^k below a run's last epoch (:class:`.asha.Halving`);
- a setting is judged at a rung once every one of its seeds reported validation top-1 there:
  its mean over seeds is compared with the means of the settings judged at that rung before it,
  and unless it is in their top 1/R (ties kept; the first to arrive always goes on), every seed
  of it is stopped;
- a seed that reaches a rung while a sibling has not started yet is paused (Tune frees its
  slot), so that with fewer slots than seeds the siblings can catch up instead of the early
  seeds training to the end before their setting is judged. A paused trial resumes from its
  own pace checkpoint, which training saves before it reports the epoch;
- runs an earlier sweep left in their folders count with the epochs their metrics.jsonl holds,
  so a rerun or ``--resume`` judges settings as an uninterrupted sweep would.

A stopped run's folder gets ``stopped.json`` (:func:`.asha.record_stopped`) when the decision is
taken, here in the driver; its lock is released, since its worker will never write again.
Imported only with Ray installed.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Sequence

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from pace_cli.sweep.backends.asha import Halving, record_stopped, validation_by_epoch
from pace_cli.sweep.backends.ray_events import release_lock
from pace_cli.sweep.plan import PlannedRun


class SettingHalving(FIFOScheduler):
    """ASHA over settings; ``grid`` is every grid run of the sweep, ``trial_runs`` those that are trials
    (``trial.config["run"]`` indexes them)."""

    def __init__(self, grid: Sequence[PlannedRun], trial_runs: Sequence[PlannedRun], halving: Halving):
        super().__init__()
        self.trial_runs, self.reduction = list(trial_runs), halving.reduction
        self.setting_of = {str(run.run_dir): run.setting.name for run in grid}
        self.seeds: dict[str, set[str]] = defaultdict(set)  # setting -> its runs still expected at the rungs
        self.rungs: dict[str, list[int]] = {}
        for run in grid:
            self.seeds[run.setting.name].add(str(run.run_dir))
            self.rungs[run.setting.name] = halving.rungs(run.recipe)
        self.scores: dict[tuple[int, str], dict[str, float]] = defaultdict(dict)  # (rung, setting) -> run: top-1
        self.judged: dict[int, list[float]] = defaultdict(list)  # rung -> settings' means, in order judged
        self.done: set[tuple[int, str]] = set()
        self.stopped: dict[str, tuple[int, float, float]] = {}  # setting -> (rung, its mean, the cut)
        for run in grid:  # what earlier sweeps left on disk, in grid order
            for epoch, top1 in validation_by_epoch(run.run_dir).items():
                if epoch in self.rungs[run.setting.name]:
                    self.scores[(epoch, run.setting.name)][str(run.run_dir)] = top1
        for setting in dict.fromkeys(run.setting.name for run in grid):
            for rung in self.rungs[setting]:
                self._judge(rung, setting)

    # ------------------------------------------------------------ Tune's events

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if "epoch" not in result:  # the trial's final outcome
            return TrialScheduler.CONTINUE
        run = self.trial_runs[trial.config["run"]]
        setting = run.setting.name
        if setting not in self.stopped and result["epoch"] in self.rungs[setting] \
                and result.get("val_top1") is not None:
            self.scores[(result["epoch"], setting)][str(run.run_dir)] = float(result["val_top1"])
            verdict = self._judge(result["epoch"], setting)
            if verdict is None and self._sibling_waits_for_a_slot(tune_controller, trial, setting):
                # as Tune's PBT pauses: no Tune checkpoint, the trial resumes from its pace checkpoint
                release_lock(run)
                tune_controller.pause_trial(trial, should_checkpoint=False)
                return TrialScheduler.NOOP
        if setting in self.stopped:
            self._stop_siblings(tune_controller, trial, setting)
            self._record(run, setting)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        """A seed that failed for good is not waited for: its setting is judged on the others."""
        if trial.status == Trial.RUNNING and trial.should_recover():
            return  # Tune retries it
        run = self.trial_runs[trial.config["run"]]
        setting = run.setting.name
        self.seeds[setting].discard(str(run.run_dir))
        for rung in self.rungs[setting]:
            self._judge(rung, setting)
        if setting in self.stopped:
            self._stop_siblings(tune_controller, trial, setting)

    # ------------------------------------------------------------ the decision

    def _judge(self, rung: int, setting: str) -> bool | None:
        """Keep (True), stop (False), or None while a seed has not reported at ``rung``."""
        if (rung, setting) in self.done:
            return setting not in self.stopped
        scores = self.scores[(rung, setting)]
        if not self.seeds[setting] or not self.seeds[setting] <= scores.keys():
            return None
        self.done.add((rung, setting))
        mean = statistics.fmean(scores[run] for run in self.seeds[setting])
        means = self.judged[rung]
        means.append(mean)
        cut = sorted(means, reverse=True)[max(1, len(means) // self.reduction) - 1]
        if mean < cut and setting not in self.stopped:
            self.stopped[setting] = (rung, mean, cut)
        return setting not in self.stopped

    def _sibling_waits_for_a_slot(self, tune_controller, trial: Trial, setting: str) -> bool:
        return any(other.status == Trial.PENDING for other in self._siblings(tune_controller, trial, setting))

    def _siblings(self, tune_controller, trial: Trial, setting: str) -> list[Trial]:
        return [other for other in tune_controller.get_trials() if other is not trial
                and self.trial_runs[other.config["run"]].setting.name == setting]

    def _stop_siblings(self, tune_controller, trial: Trial, setting: str) -> None:
        """Seeds of a stopped setting that wait (paused, or not started) are stopped now; running ones
        at their next report."""
        for other in self._siblings(tune_controller, trial, setting):
            if other.status in (Trial.PAUSED, Trial.PENDING):
                self._record(self.trial_runs[other.config["run"]], setting)
                tune_controller.stop_trial(other)

    def _record(self, run: PlannedRun, setting: str) -> None:
        rung, mean, cut = self.stopped[setting]
        record_stopped(run, epoch=rung, mean=mean, cut=cut)
        release_lock(run)
