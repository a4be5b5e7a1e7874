"""metrics.jsonl: one JSON record per line, appended as training goes, always written.

A record that cannot be written (a full disk) is cut off again, so the file stays whole lines
and ``--resume`` can continue it; the write error says which file and how to get out.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from pace_cli import files
from pace_cli.files.layout import METRICS_FILE


class JsonlLogger:
    """Writes ``output_dir``/metrics.jsonl; on resume, drops the records past the checkpoint (they will be redone)."""

    def __init__(self, output_dir: Path, *, resumed_at_step: int | None = None):
        self.path = Path(output_dir) / METRICS_FILE
        if resumed_at_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if _logged_step(line) <= resumed_at_step]
            files.write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        try:
            # unbuffered: a record that fails to write must not linger in a buffer and be retried on close
            self._handle = open(self.path, "ab" if resumed_at_step is not None else "wb", buffering=0)
        except OSError as error:
            raise files.write_error(self.path, error) from None

    def log_dict(self, payload: Mapping[str, Any], step: int) -> None:
        data = memoryview((json.dumps(dict(payload)) + "\n").encode("utf-8"))
        end = os.fstat(self._handle.fileno()).st_size
        try:
            while data:
                data = data[self._handle.write(data):]
        except OSError as error:
            # cut the torn record off, so the log stays whole lines for --resume
            with contextlib.suppress(OSError):
                os.ftruncate(self._handle.fileno(), end)
            raise files.write_error(self.path, error) from None

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Nothing: the resolved recipe has its own file (recipe.toml) beside the log."""

    def close(self) -> None:
        self._handle.close()


def _logged_step(line: str) -> float:
    """A record's step; a line that is not a whole record (torn by a crash or a full disk) sorts last."""
    try:
        record = json.loads(line)
    except ValueError:
        return math.inf
    return record.get("step", 0) if isinstance(record, dict) and isinstance(record.get("step", 0), int) else math.inf
