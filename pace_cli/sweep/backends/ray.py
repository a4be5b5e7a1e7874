"""The Ray backend: every planned run is one Ray Tune trial, placed on the cluster's CPUs and GPUs.

A trial trains through the library's :func:`~pace_cli.training.loop.train` into the run's own
folder under the sweep folder, the folder the sequential backend uses, so `pace report`,
`pace eval` and a later sequential rerun see the same sweep. Ray's bookkeeping lives in
``SWEEP/ray/`` (absolute paths). Finished runs are reused by the driver without a trial.

Faults: Tune restarts a failed trial once (``FailureConfig``); the trial resumes from its pace
checkpoint, and the driver first removes the lock the failed worker may have left in the run
folder (it knows that worker is gone, even on another host). A second failure gives the run
status ``failed`` with a one-line reason, and the other trials go on. A stop request (Ctrl-C in
the driver) sets a flag every trial checks at every training step: each saves its checkpoint
and ends, trials not yet started do nothing, and the sweep ends with exit code 130.

Early stopping (``scheduler="asha"``, opt-in): the grid is trained rung by rung, one Tune run per
stage, and :func:`~pace_cli.sweep.backends.asha.halve` stops whole settings between stages (why
not Tune's ASHAScheduler: :mod:`.asha`); a stopped run is ``stopped`` (``stopped.json`` in its
folder), never ranked, and not trained again by a rerun of either backend.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from pace_cli.errors import PaceError
from pace_cli.files.layout import ADAPTER_FILE, CHECKPOINT_FILE
from pace_cli.sweep.backends.asha import (SCHEDULERS, Halving, halve, record_stopped, refuse_unusable, stages,
                                          stopped_epoch, validation_by_epoch)
from pace_cli.sweep.backends.base import (RunContext, refuse_another_recipe, saved_test_score, score, score_adapter,
                                          stopped_outcome)
from pace_cli.sweep.backends.ray_trial import StopFlag, run_trial
from pace_cli.sweep.plan import PlannedRun
from pace_cli.sweep.rank import RunOutcome
from pace_cli.training.stop import TrainingInterrupted, stop_on_signals

RAY_FOLDER = "ray"  # Ray Tune's storage inside the sweep folder
INSTALL = "pip install 'pace-cli[ray]'"


def import_ray():
    """Ray and Ray Tune, or one line saying how to install them."""
    try:
        import ray
        from ray import tune
    except ImportError:
        raise PaceError("--backend ray needs Ray Tune, which is not installed",
                        remedy=f"install it with: {INSTALL} (or pip install 'ray[tune]')") from None
    return ray, tune


class RayBackend:
    """Runs the planned runs as Ray Tune trials; see the module's docstring.

    ``address``: ``None`` starts a local cluster sized to this machine (or uses the one this
    process already joined), ``"auto"`` joins a running one, ``HOST:PORT`` the one there.
    ``trial_hook(run, step)``, when given, is called in the trial after every training step
    (fault-injection in tests). ``trials`` records, per trial that ended, where it ran.
    ``scheduler``: ``"fifo"`` trains the full grid; ``"asha"`` stops weak settings early
    (``grace_epochs``, ``reduction_factor``: :class:`~pace_cli.sweep.backends.asha.Halving`).
    """

    def __init__(self, *, address: str | None = None, gpus_per_trial: float = 0.0, cpus_per_trial: int = 1,
                 max_concurrent: int | None = None, scheduler: str = "fifo", grace_epochs: int | None = None,
                 reduction_factor: int | None = None, trial_hook: Callable[[PlannedRun, int], None] | None = None):
        if not (isinstance(cpus_per_trial, int) and cpus_per_trial >= 1):
            raise PaceError(f"--cpus-per-trial {cpus_per_trial} must be a whole number >= 1")
        if not gpus_per_trial >= 0 or (gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial)):
            raise PaceError(f"--gpus-per-trial {gpus_per_trial} must be >= 0, and whole when above 1 "
                            "(e.g. 0.25 packs four trials on a GPU, 2 gives a trial two GPUs)")
        if max_concurrent is not None and max_concurrent < 1:
            raise PaceError(f"--max-concurrent {max_concurrent} must be >= 1")
        self.halving = _halving(scheduler, grace_epochs, reduction_factor)
        import_ray()  # a missing extra is one line before the sweep folder is touched
        self.address, self.gpus, self.cpus = address, float(gpus_per_trial), cpus_per_trial
        self.max_concurrent, self.trial_hook = max_concurrent, trial_hook
        self.trials: list[dict[str, Any]] = []
        self._ray = None

    # ------------------------------------------------------------ checks before any trial

    def check_plan(self, plan) -> None:
        """What the recipe makes impossible for the scheduler, in one line before Ray starts."""
        if self.halving is not None:
            refuse_unusable(self.halving, plan.runs)

    def prepare(self):
        """Join (or start) the cluster and check it can place a trial; every refusal is one line."""
        from pace_cli.distributed import launched_by_torchrun

        if launched_by_torchrun():
            raise PaceError("--backend ray under torchrun: Ray places the trials itself",
                            remedy="run `pace sweep ... --backend ray` as one plain process (no torchrun)")
        if self._ray is not None:
            return self._ray
        ray, _ = import_ray()
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner over the sweep's own progress
        if self.address not in (None, "auto"):
            _probe(self.address)
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                from pace_cli.sweep.backends.ray_events import first_line

                raise PaceError(f"cannot join the Ray cluster at --address {self.address}: {first_line(error)}",
                                remedy="start it with `ray start --head` (or leave out --address for a local one)") from None
        self._refuse_unplaceable(ray)
        self._ray = ray
        return ray

    def _refuse_unplaceable(self, ray) -> None:
        """Ray would wait for ever for a trial no node can hold: refuse it now instead."""
        nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
        if any(n.get("CPU", 0) >= self.cpus and n.get("GPU", 0) >= self.gpus for n in nodes):
            return
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        raise PaceError(f"a trial asks for {self.cpus} CPU and {self.gpus:g} GPU but no node of the Ray cluster has "
                        f"that much (the largest: {largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU)",
                        remedy="lower --cpus-per-trial / --gpus-per-trial, or add such a node to the cluster")

    # ------------------------------------------------------------ the backend

    def run(self, runs: Sequence[PlannedRun], context: RunContext) -> Iterator[RunOutcome]:
        ray = self.prepare()
        trial_runs = []
        stopped = {run.run_dir: stopped_outcome(run) for run in runs}
        for run in runs:  # the refusals of a sequential sweep, before any trial starts
            if run.job == "train" and stopped[run.run_dir] is None and not (run.run_dir / ADAPTER_FILE).is_file() \
                    and (run.run_dir / CHECKPOINT_FILE).is_file() and not context.resume:
                raise PaceError(f"run '{run.run_dir}' was interrupted; add --resume to continue it from its "
                                "checkpoint (or delete the folder to start it over)")
        for run in runs:
            adapter = run.run_dir / ADAPTER_FILE
            if stopped[run.run_dir] is not None:
                yield stopped[run.run_dir]  # stopped early by an earlier asha sweep: not trained again
            elif run.job == "train" and adapter.is_file():
                yield _reused(run)
            elif run.job == "score" and adapter.is_file() and saved_test_score(run, adapter) is not None:
                yield score_adapter(run)  # its saved score, read back
            else:
                trial_runs.append(run)
        if not trial_runs:
            return
        refuse_unshared_folder(ray, trial_runs[0].run_dir.parents[1].resolve())
        if context.stop.requested:
            raise TrainingInterrupted(f"sweep interrupted before its {len(trial_runs)} trials started; "
                                      "continue with the same command plus --resume", exit_code=context.stop.exit_code())
        if self.halving is not None and all(run.phase == "grid" and run.job == "train" for run in runs):
            yield from self._halving(ray, runs, trial_runs, context)  # the final runs have no validation
        else:
            yield from self._trials(ray, trial_runs, context)

    def _halving(self, ray, grid: Sequence[PlannedRun], trial_runs: list[PlannedRun],
                 context: RunContext) -> Iterator[RunOutcome]:
        """``--scheduler asha``: each stage trains the live runs to a rung, then the weak settings are stopped."""
        # A rung ranks every setting that reached it: complete ones (never stopped), and on a rerun those
        # stopped there or later, so that a rerun takes the decisions an uninterrupted sweep took.
        stopped_at = {run.setting.name: epoch for run in grid if (epoch := stopped_epoch(run)) is not None}
        for rung in [*stages(self.halving, grid), None]:
            todo = [run for run in trial_runs if run.setting.name not in stopped_at and (rung is None or (
                rung in self.halving.rungs(run.recipe) and rung not in validation_by_epoch(run.run_dir)))]
            for outcome in self._trials(ray, todo, context, stop_at=rung) if todo else ():
                trial_runs = [run for run in trial_runs if str(run.run_dir) != outcome.run_dir]  # ended: done or failed
                yield outcome
            if rung is None:
                return
            reached = {run.setting.name for run in grid if stopped_at.get(run.setting.name, rung) >= rung}
            for setting, (mean, cut) in halve(rung, grid, self.halving, reached).items():
                if setting in stopped_at:
                    continue
                stopped_at[setting] = rung
                for run in trial_runs:
                    if run.setting.name == setting:
                        record_stopped(run, epoch=rung, mean=mean, cut=cut)
                        yield stopped_outcome(run)

    def _trials(self, ray, runs: list[PlannedRun], context: RunContext,
                stop_at: int | None = None) -> Iterator[RunOutcome]:
        from pace_cli.sweep.backends.ray_events import close_channel

        events: queue.Queue = queue.Queue()
        flag = ray.remote(num_cpus=0)(StopFlag).remote()
        tuner = self._tuner(runs, events, flag, runs[0], stop_at)
        fit = threading.Thread(target=_fit_into, args=(tuner, events), daemon=True, name="pace-ray-tune")
        interrupted = 0
        flagged = done = False
        try:
            with stop_on_signals(context.stop):
                fit.start()
                while not done:
                    if context.stop.requested and not flagged:
                        flag.set.remote()
                        flagged = True
                    try:
                        kind, payload = events.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    done = kind == "done"
                    if kind == "error":
                        raise payload
                    if kind == "interrupted":
                        interrupted += 1
                    elif kind == "outcome":
                        yield payload
        finally:
            if not done:  # the sweep failed or was abandoned here: the trials still save and stop
                flag.set.remote()
                fit.join(timeout=120)
            close_channel(events)
        fit.join()
        if flagged or interrupted:
            raise TrainingInterrupted(
                f"sweep interrupted: {interrupted} trials saved their checkpoints and stopped ({len(context.finished)} "
                "runs done); continue with the same command plus --resume", exit_code=context.stop.exit_code())

    def _tuner(self, runs: list[PlannedRun], events: queue.Queue, flag, first: PlannedRun, stop_at: int | None):
        _, tune = import_ray()
        from pace_cli.sweep.backends.ray_events import forwarding_callback

        trainable = tune.with_parameters(run_trial, runs=runs, cpus=self.cpus, stop_flag=flag,
                                         hook=self.trial_hook, cwd=os.getcwd(), stop_at=stop_at)
        stage = "" if stop_at is None else f"-to-epoch-{stop_at}"  # --scheduler asha: one Tune run per stage
        storage = (Path(first.run_dir).parents[1] / RAY_FOLDER).resolve()
        return tune.Tuner(
            tune.with_resources(trainable, {"cpu": self.cpus, "gpu": self.gpus}),
            param_space={"run": tune.grid_search(list(range(len(runs))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=self.max_concurrent or 0, reuse_actors=True),
            run_config=tune.RunConfig(
                name=f"{first.phase}{stage}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(storage), verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
                callbacks=[forwarding_callback(runs, events, self.trials)]))


def _halving(scheduler: str, grace_epochs: int | None, reduction_factor: int | None) -> Halving | None:
    """The early-stopping numbers, or None for the full grid; a number without ``asha`` is refused."""
    if scheduler not in SCHEDULERS:
        raise PaceError(f"unknown --scheduler {scheduler!r}; use fifo (the full grid) or asha (early stopping)")
    if scheduler == "fifo":
        given = "--grace-epochs" if grace_epochs is not None else "--reduction-factor" \
            if reduction_factor is not None else None
        if given:
            raise PaceError(f"{given} is a --scheduler asha option; add --scheduler asha or drop {given}")
        return None
    return Halving(grace_epochs, *(() if reduction_factor is None else (reduction_factor,)))


def refuse_unshared_folder(ray, folder: Path, *, every_node: bool = False) -> None:
    """Every node must see the sweep folder (trials write there): asked of each node but this one
    (``every_node``: this one too), by a task of no resources pinned to it, before any trial starts."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive") and (every_node or n["NodeID"] != here)]
    if not nodes:
        return
    sees = ray.remote(num_cpus=0)(_sees)
    answers = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                       .remote(str(folder)) for n in nodes])
    blind = [host for host, seen in answers if not seen]
    if blind:
        raise PaceError(f"the sweep folder '{folder}' is not visible on {', '.join(sorted(set(blind)))}",
                        remedy="put the sweep folder, recipe and data on a file system every node of the Ray "
                               "cluster sees, at the same path")


def _sees(folder: str) -> tuple[str, bool]:
    return socket.gethostname(), Path(folder).is_dir()


def _fit_into(tuner, events: queue.Queue) -> None:
    try:
        tuner.fit()
    except BaseException as error:  # noqa: BLE001 - handed to the driver's thread, which raises it
        events.put(("error", error if isinstance(error, Exception) else RuntimeError(str(error))))
    events.put(("done", None))


def _probe(address: str) -> None:
    """A ``HOST:PORT`` nobody listens on fails here in seconds, not after Ray's long connection retries."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise PaceError(f"bad --address {address!r}: expected auto or HOST:PORT (e.g. 10.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise PaceError(f"cannot reach the Ray cluster at --address {address}: {error.strerror or error}",
                        remedy="start it there with `ray start --head --port PORT`, or use --address auto on a "
                               "node of the cluster") from None


def _reused(run: PlannedRun) -> RunOutcome:
    """A finished train run, read back in the driver: no trial for it."""
    refuse_another_recipe(run)
    outcome = RunOutcome.of(run, "skipped")
    score(run, outcome, run.run_dir / ADAPTER_FILE)
    return outcome


