"""The metric-logger registry: tracker names, their packages, and opening the loggers a run writes to.

``TRACKERS`` names every logger the loop can write to, as ``"module:Class"`` so that a tracker's
heavy client is imported only when a run asks for it. ``jsonl`` (metrics.jsonl) is always on, is
opened first and its write errors stop the run. An experiment tracker is opened behind a guard:
whatever fails in it (a full disk, a server gone, at start or mid-run) is one warning, after
which that tracker logs nothing more, and training and metrics.jsonl go on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
from contextlib import ExitStack, contextmanager
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from pace_cli.errors import PaceError, one_line
from pace_cli.files.layout import METRICS_FILE
from pace_cli.recipe import LogSection
from pace_cli.training.loggers.base import TRACKER_IDS_FILE, MetricLogger, TrackerRun

TRACKERS = {
    "jsonl": "pace_cli.training.loggers.jsonl:JsonlLogger",
    "tensorboard": "pace_cli.training.loggers.tensorboard:TensorBoardLogger",
    "wandb": "pace_cli.training.loggers.wandb:WandbLogger",
    "mlflow": "pace_cli.training.loggers.mlflow:MlflowLogger",
}
# The package each tracker imports, and the pace-cli extra that installs it.
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
                    "mlflow": ("mlflow", "mlflow")}

_warnings = logging.getLogger("pace_cli.trackers")


def tracker_class(name: str) -> type:
    module, _, attribute = TRACKERS[name].partition(":")
    return getattr(import_module(module), attribute)


def check_trackers_installed(names: Iterable[str]) -> None:
    """Refuse, before anything is trained, a tracker whose package is not installed (one line naming the extra)."""
    for name in names:
        package, extra = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise PaceError(f"[log] trackers names {name!r}, but the {package} package is not installed",
                            remedy=f"pip install 'pace-cli[{extra}]', or remove {name!r} from [log] trackers")


def prepare_trackers(log: LogSection) -> None:
    """What a sweep's driver does once before its trials start: create the MLflow experiment they share,
    so that trials running in parallel never race to create it. A failure is the trackers' warning."""
    if "mlflow" in log.trackers:
        from pace_cli.training.loggers.mlflow import create_experiment

        GuardedTracker("mlflow", lambda: create_experiment(log), doing="creating the sweep's experiment")


@contextmanager
def metric_loggers(names: Iterable[str], output_dir: Path, *, resumed_at_step: int | None,
                   log: LogSection | None = None) -> Iterator[list[MetricLogger]]:
    """One open logger per name, in order, all closed when the block ends (also when it fails).

    ``log`` is the recipe's [log] section, which the trackers (every name but ``jsonl``) read.
    """
    names = list(names)
    if names and resumed_at_step is None:  # a new run into this folder starts new tracker runs, whatever it names
        (Path(output_dir) / TRACKER_IDS_FILE).unlink(missing_ok=True)
    run = _tracker_run(output_dir, resumed_at_step, log or LogSection()) if set(names) - {"jsonl"} else None
    with ExitStack() as stack:
        loggers = []
        for name in names:
            if name == "jsonl":
                logger = tracker_class(name)(output_dir, resumed_at_step=resumed_at_step)
            else:
                logger = GuardedTracker(name, lambda name=name: tracker_class(name)(run))
            stack.callback(logger.close)
            loggers.append(logger)
        try:
            yield loggers
        except BaseException:  # interrupted or failed: the trackers' runs say so (MLflow KILLED, W&B exit code 1)
            for logger in loggers:
                logger.finished = False
            raise


def _tracker_run(output_dir: Path, resumed_at_step: int | None, log: LogSection) -> TrackerRun:
    output_dir = Path(output_dir)
    return TrackerRun(output_dir=output_dir, name=log.run_name or output_dir.resolve().name, project=log.project,
                      group=log.group, files_dir=Path(log.dir) if log.dir else output_dir,
                      resumed_at_step=resumed_at_step,
                      logged_through=None if resumed_at_step is None else last_logged_step(output_dir / METRICS_FILE))


def last_logged_step(metrics_path: Path) -> int | None:
    """The highest step of metrics.jsonl's whole records (read before it is cut back to the checkpoint)."""
    steps = []
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("step"), int):
                    steps.append(record["step"])
    return max(steps, default=None)


class GuardedTracker:
    """An experiment tracker whose first failure is a warning: then it is closed and logs nothing more."""

    def __init__(self, name: str, open_tracker: Callable[[], Any], *, doing: str = "starting"):
        self.name = name
        self.finished = True  # False when training ended early: the tracker closes its run as not finished
        self.tracker = None
        self.tracker = self._guard(doing, open_tracker)

    def log_dict(self, payload: Mapping[str, Any], step: int) -> None:
        if self.tracker is not None:
            self._guard("logging step " + str(step), lambda: self.tracker.log_dict(payload, step))

    def log_config(self, config: Mapping[str, Any]) -> None:
        if self.tracker is not None:
            self._guard("logging the recipe", lambda: self.tracker.log_config(config))

    def close(self) -> None:
        if self.tracker is not None:
            tracker = self.tracker
            self._guard("closing", lambda: tracker.close(finished=self.finished))
            self.tracker = None

    def _guard(self, doing: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as error:
            reason = one_line(error)
            reason = reason if len(reason) <= 300 else reason[:299] + "…"
            _warnings.warning(f"warning: tracker {self.name!r} failed while {doing} ({reason}); it logs "
                              "nothing more in this run; training goes on and metrics.jsonl keeps every record")
            failed, self.tracker = self.tracker, None
            if failed is not None and doing != "closing":
                with contextlib.suppress(Exception):
                    failed.close()
            return None
