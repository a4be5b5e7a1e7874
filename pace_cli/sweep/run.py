"""`pace sweep`: train a grid of recipe settings over seeds, rank them on validation, optionally retrain.

The protocol is the paper's: every setting of the grid is trained on the train split with each
seed and scored on the validation split; settings are ranked by their mean validation top-1 over
the seeds; with ``final`` the best setting is scored once on the test split with each seed:
retrained on the train + val split (``[data] trainval_split``), or, under ``[data] shots`` (the
few-shot protocol), as its grid runs trained it (:func:`~pace_cli.sweep.plan.final_job`).

Each run is a normal `pace train` output folder (adapter, metrics.jsonl, recipe.toml) under the
sweep folder, so a run already complete is skipped and an interrupted one resumes from its
checkpoint. Planning is in :mod:`.plan`, ranking in :mod:`.rank`, the tables in :mod:`.tables`;
a backend (:mod:`.backends`) runs the planned runs.
"""

from __future__ import annotations

import contextlib
import threading

from pace_cli.sweep.backends.base import RunContext, SweepBackend, SweepLogger
from pace_cli.sweep.plan import SweepPlan, final_runs
from pace_cli.sweep.rank import RunOutcome, SweepResult, rank_settings
from pace_cli.sweep.tables import write_tables, writes_files
from pace_cli.training.stop import StopRequest


def run_sweep(plan: SweepPlan, *, resume: bool = False, logger: SweepLogger | None = None,
              stop: StopRequest | threading.Event | None = None,
              backend: SweepBackend | str = "sequential") -> SweepResult:
    """Train every grid run (skipping finished ones), rank the settings, then the final runs if asked
    (retrained, or the grid runs' adapters scored on test: both are planned runs the backend runs).

    sweep.json and sweep.csv are rewritten after every run, so an interrupted sweep leaves a
    correct table of what finished. Ctrl-C stops the current run at its next step with its
    checkpoint saved; the sweep then ends with :class:`~pace_cli.training.stop.TrainingInterrupted`.
    The writer holds the sweep folder's lock throughout, so a second sweep into it is refused.
    ``backend`` runs the runs: a backend object, or the name of a registered one
    (:data:`~pace_cli.sweep.backends.registry.BACKENDS`); the default, ``sequential``, trains them
    one after another in this process. A backend's optional ``check_plan(plan)`` and then
    ``prepare()`` run before the sweep folder is locked.
    """
    from pace_cli.files.lock import output_lock
    from pace_cli.sweep.backends.registry import backend_named
    from pace_cli.training.loggers.registry import check_trackers_installed, prepare_trackers

    if isinstance(backend, str):
        backend = backend_named(backend)  # an unknown name fails here, before the folder is locked
    check = getattr(backend, "check_plan", None)
    if check is not None:  # what the backend's options cannot do with this plan, before it starts anything
        check(plan)
    check_trackers_installed(plan.runs[0].recipe.log.trackers)  # every trial's, before any starts
    prepare = getattr(backend, "prepare", None)
    if prepare is not None:  # e.g. joining a cluster: what fails there fails before the folder is touched
        prepare()

    with output_lock(plan.sweep_dir) if writes_files() else contextlib.nullcontext():
        if writes_files():
            prepare_trackers(plan.runs[0].recipe.log)  # e.g. the one MLflow experiment the trials share
        return _run_sweep(plan, resume=resume, logger=logger or SweepLogger(), stop=StopRequest.of(stop),
                          backend=backend)


def _run_sweep(plan: SweepPlan, *, resume: bool, logger: SweepLogger, stop: StopRequest,
               backend: SweepBackend) -> SweepResult:
    result = SweepResult(plan.sweep_dir, str(plan.recipe_path), plan.axes, plan.seeds, list(plan.overrides),
                         final_protocol=plan.final_protocol)
    total = len(plan.runs) + (len(plan.seeds) if plan.final else 0)
    logger.start(runs=total, settings=len(plan.settings), seeds=len(plan.seeds))
    # One stop request for the whole sweep: a Ctrl-C that lands while a run evaluates its last
    # epoch lets that run finish, and must still stop the sweep before the next run starts.
    context = RunContext(resume=resume, logger=logger, stop=stop, total=total, finished=result.runs)

    def record(outcome: RunOutcome) -> None:
        result.runs.append(outcome)
        result.ranking = rank_settings(plan.settings, result.runs)
        write_tables(result)
        logger.run_end(outcome)

    try:
        for outcome in backend.run(plan.runs, context):
            record(outcome)
        if plan.final and result.best is not None:
            for outcome in backend.run(final_runs(plan, result.best.setting), context):
                record(outcome)
        result.complete = True
    finally:
        write_tables(result)
    return result
