"""The metric-logger registry: tracker names, and opening the loggers a run writes to.

``TRACKERS`` names every logger the loop can write to, as ``"module:Class"`` so that a tracker's
heavy client is imported only when a run asks for it. ``jsonl`` (metrics.jsonl) is always on.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from importlib import import_module
from pathlib import Path
from typing import Iterable, Iterator

from pace_cli.training.loggers.base import MetricLogger

TRACKERS = {
    "jsonl": "pace_cli.training.loggers.jsonl:JsonlLogger",
}


def tracker_class(name: str) -> type[MetricLogger]:
    module, _, attribute = TRACKERS[name].partition(":")
    return getattr(import_module(module), attribute)


@contextmanager
def metric_loggers(names: Iterable[str], output_dir: Path, *, resumed_at_step: int | None) -> Iterator[list[MetricLogger]]:
    """One open logger per name, in order, all closed when the block ends (also when it fails)."""
    with ExitStack() as stack:
        loggers = []
        for name in names:
            logger = tracker_class(name)(output_dir, resumed_at_step=resumed_at_step)
            stack.callback(logger.close)
            loggers.append(logger)
        yield loggers
