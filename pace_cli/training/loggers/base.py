"""What the training loop asks of a metric logger (the always-on metrics.jsonl, later experiment trackers).

The shape follows torchtune's metric loggers: a dict of numbers at a step, the run's
configuration once, and ``close``. A logger is built with the run folder and, on resume, the
step the run continues from, so it can drop or overwrite what it logged past that step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol


class MetricLogger(Protocol):
    def __init__(self, output_dir: Path, *, resumed_at_step: int | None = None) -> None: ...

    def log_dict(self, payload: Mapping[str, Any], step: int) -> None:
        """Record ``payload`` (one step or epoch record) as logged at global step ``step``."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the run's resolved recipe (as a JSON-able dict), once, before the first step."""

    def close(self) -> None:
        """Flush and release; called once, also when training fails."""
