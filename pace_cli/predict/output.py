"""Predictions as CSV, JSON or JSON lines, written atomically (the old file or the new one, never a mix).

CSV: ``path, class_1, prob_1, ..., class_K, prob_K, error`` (a header row, one row per image;
an unreadable image has empty class and probability cells and its reason under ``error``).
JSON: ``{"model", "topk", "images", "failed", "predictions": [{"path", "topk": [{"class", "prob"}],
"error"}]}``. JSON lines: one prediction object a line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pace_cli import files
from pace_cli.errors import PaceError
from pace_cli.predict.run import PredictReport, PredictionRow

OUTPUT_FORMATS = ("csv", "json", "jsonl")


def format_for(output: Path | None, chosen: str | None) -> str:
    """The output format: ``chosen``, else the output's suffix (.json, .jsonl), else csv."""
    if chosen is not None:
        if chosen not in OUTPUT_FORMATS:
            raise PaceError(f"--format {chosen!r} is not supported", remedy=f"choose one of {', '.join(OUTPUT_FORMATS)}")
        return chosen
    suffix = output.suffix.lower().lstrip(".") if output is not None else ""
    return suffix if suffix in OUTPUT_FORMATS else "csv"


def _entry(row: PredictionRow) -> dict:
    return {"path": row.path, "topk": [{"class": name, "prob": prob}
                                      for name, prob in zip(row.classes, row.probabilities)],
            "error": row.error or None}


def render_predictions(report: PredictReport, fmt: str, model: str) -> str:
    if fmt == "json":
        return json.dumps({"model": model, "topk": report.topk, "images": len(report.rows), "failed": report.failed,
                           "predictions": [_entry(row) for row in report.rows]}, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(_entry(row)) + "\n" for row in report.rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["path"]
    for i in range(1, report.topk + 1):
        header += [f"class_{i}", f"prob_{i}"]
    writer.writerow(header + ["error"])
    for row in report.rows:
        cells = [row.path]
        for i in range(report.topk):
            has = i < len(row.classes)
            cells += [row.classes[i] if has else "", f"{row.probabilities[i]:.6g}" if has else ""]
        writer.writerow(cells + [row.error])
    return buffer.getvalue()


def write_predictions(report: PredictReport, output: Path, fmt: str, model: str) -> None:
    """Write under a temporary name and rename into place: Ctrl-C leaves the previous file or none."""
    files.write_text_atomic(output, render_predictions(report, fmt, model))
