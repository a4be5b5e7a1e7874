"""What a sweep backend is: it gets planned runs and yields their outcomes; ranking and tables never know which ran them.

Also what every backend shares: the progress interface, the check that a finished run folder
belongs to this sweep, reading a run's score from the files it left, and the unit of work of a
run whose job is to score (:func:`score_adapter`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from pace_cli import files
from pace_cli.errors import PaceError
from pace_cli.files.layout import ADAPTER_FILE, METRICS_FILE, RECIPE_FILE, TEST_FILE
from pace_cli.recipe import parse_recipe, recipe_to_dict
from pace_cli.sweep.backends.asha import stopped_reason
from pace_cli.sweep.plan import PlannedRun
from pace_cli.sweep.rank import RunOutcome
from pace_cli.sweep.tables import writes_files
from pace_cli.training.stop import StopRequest

# Keys that change where or how fast a run goes, not what it computes: a finished run is
# reused even if they differ (the sweep folder may have moved, the machine may differ).
_RESULT_NEUTRAL_KEYS = {("output", "dir"), ("train", "device"), ("data", "num_workers"),
                        ("data", "eval_batch_size"),
                        *(("log", key) for key in ("trackers", "project", "run_name", "group", "dir"))}


class SweepLogger:
    """Receives progress; the CLI renders it. The default does nothing."""

    def start(self, *, runs: int, settings: int, seeds: int) -> None: ...

    def run_start(self, run: PlannedRun, number: int, total: int) -> None: ...

    def train_logger(self, run: PlannedRun):
        """The TrainLogger for one run (None: silent)."""
        return None

    def run_end(self, outcome: RunOutcome) -> None: ...


@dataclass
class RunContext:
    """What the sweep gives a backend with each batch of runs."""

    resume: bool  # continue interrupted runs from their checkpoints
    logger: SweepLogger
    stop: StopRequest  # one request for the whole sweep
    total: int  # runs in the whole sweep, for progress
    finished: Sequence[RunOutcome]  # the sweep's outcomes so far, kept up to date by the sweep


class SweepBackend(Protocol):
    def run(self, runs: Sequence[PlannedRun], context: RunContext) -> Iterator[RunOutcome]:
        """Do every run's job, yielding each outcome as soon as it is known.

        A ``train`` run is trained, or reused when its folder is finished; an interrupted one is
        resumed only with ``context.resume``. A ``score`` run trains nothing: :func:`score_adapter`.
        When ``context.stop`` is requested, stop with
        :class:`~pace_cli.training.stop.TrainingInterrupted`, leaving checkpoints to resume.
        """
        ...


def refuse_another_recipe(run: PlannedRun) -> None:
    """A finished run folder is reused only if it was trained with this run's recipe."""
    path = run.run_dir / RECIPE_FILE
    if not path.is_file():
        differences = ["no recipe.toml"]
    else:
        saved = recipe_to_dict(parse_recipe(path.read_text(), source=str(path)))
        now = recipe_to_dict(run.recipe)
        differences = [f"[{section}] {key}" for section in now for key in now[section]
                       if (section, key) not in _RESULT_NEUTRAL_KEYS and saved.get(section, {}).get(key) != now[section][key]]
    if differences:
        raise PaceError(f"'{run.run_dir}' holds a finished run of another recipe ({', '.join(differences[:3])} "
                        "differ); sweep into a new folder, or delete that run to redo it")


def score(run: PlannedRun, outcome: RunOutcome, adapter: Path) -> None:
    """Fill in the outcome's score: validation (grid runs, from the metrics log) or test (final runs,
    retrained or scored)."""
    if run.phase == "grid":
        outcome.val_top1, outcome.val_loss = last_validation(run.run_dir / METRICS_FILE)
    else:
        outcome.test_top1, outcome.test_loss = _test_score(run, adapter)


def stopped_outcome(run: PlannedRun) -> RunOutcome | None:
    """A grid run an earlier ``--scheduler asha`` sweep stopped early (status ``stopped``, its last
    validation figures), or None: such a run is not trained again, by either backend."""
    reason = stopped_reason(run) if run.phase == "grid" and run.job == "train" else None
    if reason is None:
        return None
    outcome = RunOutcome.of(run, "stopped")
    outcome.val_top1, outcome.val_loss = last_validation(run.run_dir / METRICS_FILE)
    outcome.reason = reason
    return outcome


def last_validation(metrics_path: Path) -> tuple[float | None, float | None]:
    top1 = loss = None
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # blank, or a record torn by a crash or a full disk
            if isinstance(record, dict):
                if record.get("type") == "epoch" and "val_top1" in record:
                    top1, loss = record["val_top1"], record.get("val_loss")
    return top1, loss


def score_adapter(run: PlannedRun) -> RunOutcome:
    """The job of a ``score`` run: the finished adapter in its folder scored on the test split.

    A score already saved beside that adapter is reused (status ``skipped``), so a rerun of the
    sweep scores only what is missing; a new one is ``scored``.
    """
    adapter = run.run_dir / ADAPTER_FILE
    if not adapter.is_file():
        raise PaceError(f"'{run.run_dir}' has no adapter to score on test; its grid run has not finished, "
                        "rerun the sweep (with --resume if it was interrupted)")
    refuse_another_recipe(run)
    outcome = RunOutcome.of(run, "skipped" if saved_test_score(run, adapter) else "scored")
    score(run, outcome, adapter)
    return outcome


def saved_test_score(run: PlannedRun, adapter: Path) -> tuple[float, float] | None:
    """The test score kept in test.json beside ``adapter``, unless the adapter is newer."""
    path = run.run_dir / TEST_FILE
    if path.is_file() and path.stat().st_mtime >= adapter.stat().st_mtime:
        saved = json.loads(path.read_text())
        return saved["top1"], saved["loss"]
    return None


def _test_score(run: PlannedRun, adapter: Path) -> tuple[float, float]:
    """Test top-1 and loss of the adapter, kept in test.json beside it so a rerun does not re-evaluate."""
    from pace_cli.evaluation import evaluate_recipe

    saved = saved_test_score(run, adapter)
    if saved is not None:
        return saved
    result = evaluate_recipe(run.recipe, adapter=adapter, split=run.recipe.data.test_split)
    if writes_files():
        files.write_text_atomic(run.run_dir / TEST_FILE,
                                json.dumps({k: v for k, v in result.to_dict().items() if k != "per_class"},
                                           indent=2) + "\n")
    return result.top1, result.loss
