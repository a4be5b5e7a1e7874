"""The sequential backend: every run done in this process, one after another, in plan order."""

from __future__ import annotations

import time
from typing import Iterator, Sequence

from pace_cli.errors import PaceError
from pace_cli.files.layout import ADAPTER_FILE, CHECKPOINT_FILE
from pace_cli.sweep.backends.base import RunContext, refuse_another_recipe, score, score_adapter, stopped_outcome
from pace_cli.sweep.plan import PlannedRun
from pace_cli.sweep.rank import RunOutcome
from pace_cli.training.stop import TrainingInterrupted


class SequentialBackend:
    def run(self, runs: Sequence[PlannedRun], context: RunContext) -> Iterator[RunOutcome]:
        for run in runs:
            done = len(context.finished)
            if context.stop.requested:
                # e.g. a Ctrl-C while the previous run evaluated its last epoch: it finished, the sweep stops
                raise TrainingInterrupted(
                    f"sweep interrupted after {done} runs (before '{run.run_dir}'); "
                    "continue with the same command plus --resume", exit_code=context.stop.exit_code())
            context.logger.run_start(run, done + 1, context.total)
            started = time.perf_counter()
            try:
                outcome = _train(run, context) if run.job == "train" else score_adapter(run)
            except TrainingInterrupted as stopped:
                raise TrainingInterrupted(
                    f"sweep interrupted in run '{run.run_dir}' (its checkpoint is saved; {done} runs done); "
                    "continue with the same command plus --resume", exit_code=stopped.exit_code) from None
            except KeyboardInterrupt:
                # A Ctrl-C outside training's own handler (e.g. while a run is scored on test): the
                # files are written whole or not at all, so the rerun picks up where this stopped.
                raise TrainingInterrupted(
                    f"sweep interrupted in run '{run.run_dir}' ({done} runs done); "
                    "continue with the same command plus --resume", exit_code=130) from None
            outcome.seconds = time.perf_counter() - started
            yield outcome


def _train(run: PlannedRun, context: RunContext) -> RunOutcome:
    from pace_cli.training.loop import train

    adapter = run.run_dir / ADAPTER_FILE
    stopped = stopped_outcome(run)
    if stopped is not None:  # stopped early by a --scheduler asha sweep: not trained again
        return stopped
    outcome = RunOutcome.of(run, "skipped")
    if adapter.is_file():
        refuse_another_recipe(run)
    else:
        interrupted = (run.run_dir / CHECKPOINT_FILE).is_file()
        if interrupted and not context.resume:
            raise PaceError(f"run '{run.run_dir}' was interrupted; add --resume to continue it from its checkpoint "
                            "(or delete the folder to start it over)")
        # A folder left without a checkpoint (stopped before its first save) is simply started over.
        train(run.recipe, output_dir=run.run_dir, logger=context.logger.train_logger(run), resume=interrupted,
              stop=context.stop)
        outcome.status = "resumed" if interrupted else "trained"
    score(run, outcome, adapter)
    return outcome
