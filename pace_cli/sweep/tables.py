"""The sweep's tables: sweep.json (everything) and sweep.csv (one row per run), rewritten after every run."""

from __future__ import annotations

import csv
import io as text_io
import json
from dataclasses import asdict

from pace_cli import files
from pace_cli.files.layout import SWEEP_CSV, SWEEP_JSON
from pace_cli.sweep.rank import SweepResult


def writes_files() -> bool:
    """Whether this process writes sweep files: every rank runs the same runs in the same order
    (training needs all of them); only rank 0 writes the tables."""
    from pace_cli.distributed import current_world

    return current_world().is_writer


CSV_COLUMNS = ("phase", "setting", "seed", "status", "val_top1", "val_loss", "test_top1", "test_loss",
               "seconds", "run_dir", "protocol", "reason")


def write_tables(result: SweepResult) -> None:
    """sweep.json (everything) and sweep.csv (one row per run, one column per grid key), atomically."""
    if not writes_files():
        return
    result.sweep_dir.mkdir(parents=True, exist_ok=True)
    keys = [axis.key for axis in result.axes]
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*keys, *CSV_COLUMNS])
    for outcome in result.runs:
        row = asdict(outcome)
        writer.writerow([outcome.values.get(k) for k in keys] + ["" if row[c] is None else row[c] for c in CSV_COLUMNS])
    files.write_text_atomic(result.sweep_dir / SWEEP_CSV, buffer.getvalue())
    files.write_text_atomic(result.sweep_dir / SWEEP_JSON, json.dumps(result.to_dict(), indent=2, default=str) + "\n")
