"""`pace report`: the curves of one or more runs, overlaid, and a λ × σ heat map for sweep folders.

Reads only files pace wrote: a run folder's metrics.jsonl (its epoch records) and a sweep
folder's sweep.json. matplotlib is an optional extra (``pip install 'pace-cli[plot]'``),
imported only here and only when drawing, with the Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pace_cli import files
from pace_cli.errors import PaceError
from pace_cli.files.layout import METRICS_FILE, SWEEP_JSON

# (epoch record key, panel title, log scale)
CURVES = (
    ("train_loss", "training loss (CE + λ·consistency)", False),
    ("train_ce", "cross-entropy", False),
    ("train_consistency", "consistency", False),
    ("lr", "learning rate", False),
    ("val_top1", "validation top-1", False),
    ("grad_norm", "gradient norm (mean over the epoch)", False),
    ("fp_distance", "FP-distance (logits with vs without adapters)", True),
    ("train_top1", "training top-1", False),
)
HEATMAP_AXES = ("pace.lambda", "pace.sigma")


@dataclass
class RunCurves:
    label: str
    path: Path
    epochs: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # key -> [(epoch, value)]


@dataclass
class SweepGrid:
    label: str
    path: Path
    row_key: str
    col_key: str | None
    rows: list[Any]
    cols: list[Any]
    values: list[list[float | None]]  # mean validation top-1 per cell
    best: tuple[int, int] | None


@dataclass
class ReportResult:
    output: Path
    runs: list[str]
    sweeps: list[str]
    width_px: int
    height_px: int


def read_run(path: Path, label: str) -> RunCurves:
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        raise PaceError(f"'{path}' is neither a run folder (no {METRICS_FILE}) nor a sweep folder (no {SWEEP_JSON}); "
                        "pass folders written by `pace train` or `pace sweep`")
    curves = RunCurves(label, path)
    for number, line in enumerate(metrics.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise PaceError(f"{metrics} line {number} is not JSON; was the file edited or cut short?") from None
        if record.get("type") != "epoch":
            continue
        for key, _, _ in CURVES:
            value = record.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                curves.epochs.setdefault(key, []).append((int(record["epoch"]), float(value)))
    if not curves.epochs:
        raise PaceError(f"{metrics} has no epoch records yet; report a run that finished at least one epoch")
    return curves


def read_sweep(path: Path, label: str) -> SweepGrid:
    try:
        table = json.loads((path / SWEEP_JSON).read_text())
        grid: dict[str, list] = table["grid"]
        ranking = table["ranking"]
    except (OSError, ValueError, KeyError, TypeError):
        raise PaceError(f"{path / SWEEP_JSON} is not a sweep table written by `pace sweep`") from None
    if not grid:
        raise PaceError(f"sweep '{path}' has no grid (seeds only): nothing to draw as a heat map")
    keys = list(grid)
    # λ down, σ across when both were swept; otherwise the first two axes of the grid
    row_key, col_key = HEATMAP_AXES if all(k in grid for k in HEATMAP_AXES) else (keys[0], keys[1] if len(keys) > 1 else None)
    rows, cols = grid[row_key], grid[col_key] if col_key else [None]
    values: list[list[float | None]] = [[None] * len(cols) for _ in rows]
    cells: dict[tuple[int, int], list[float]] = {}
    for score in ranking:
        settings = score["values"]
        if settings.get(row_key) not in rows or (col_key and settings.get(col_key) not in cols):
            continue
        cell = rows.index(settings[row_key]), cols.index(settings[col_key]) if col_key else 0
        # With more than two axes, a cell shows the best over the axes not drawn.
        cells.setdefault(cell, []).append(score["val_top1_mean"])
    for (r, c), scores in cells.items():
        values[r][c] = max(scores)
    best = None
    if table.get("best"):
        settings = table["best"]["values"]
        best = rows.index(settings[row_key]), cols.index(settings[col_key]) if col_key else 0
    return SweepGrid(label, path, row_key, col_key, rows, cols, values, best)


def _labels(paths: Sequence[Path], labels: Sequence[str]) -> list[str]:
    if labels:
        if len(labels) != len(paths):
            raise PaceError(f"{len(labels)} --label for {len(paths)} folders; give one label per folder, or none")
        return list(labels)
    names = [p.resolve().name for p in paths]
    return [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PaceError("pace report draws with matplotlib, which is not installed; "
                        "install it with: pip install 'pace-cli[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(folders: Sequence[str | Path], output: str | Path, *, labels: Sequence[str] = (),
                 overwrite: bool = False, dpi: int = 100) -> ReportResult:
    """Draw the runs' curves (overlaid) and each sweep's heat map into one PNG, written atomically."""
    paths = [Path(f) for f in folders]
    if not paths:
        raise PaceError("no folders to report; pass run folders (from `pace train`) or sweep folders")
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise PaceError(f"report output '{output}' must end in .png")
    files.check_can_write(output, overwrite)
    runs, sweeps = [], []
    for path, label in zip(paths, _labels(paths, labels)):
        if not path.is_dir():
            raise PaceError(f"'{path}' is not a folder; pass run or sweep folders")
        if (path / SWEEP_JSON).is_file():
            sweeps.append(read_sweep(path, label))
        else:
            runs.append(read_run(path, label))
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    columns = 4 if runs else min(4, len(sweeps))
    curve_rows = math.ceil(len(CURVES) / columns) if runs else 0
    sweep_rows = math.ceil(len(sweeps) / columns)
    figure = plt.figure(figsize=(4.2 * columns, 3.3 * (curve_rows + sweep_rows)), dpi=dpi)
    spec = figure.add_gridspec(curve_rows + sweep_rows, columns)
    try:
        for i, (key, title, log) in enumerate(CURVES if runs else ()):
            axes = figure.add_subplot(spec[i // columns, i % columns])
            for run in runs:
                points = run.epochs.get(key)
                if points:
                    epochs, values = zip(*points)
                    axes.plot(epochs, values, marker="o" if len(points) < 12 else None, markersize=3, label=run.label)
            if not any(run.epochs.get(key) for run in runs):
                # e.g. validation in runs trained on train + val: say so rather than draw empty axes
                axes.text(0.5, 0.5, f"no {key} in these runs", ha="center", va="center", transform=axes.transAxes,
                          fontsize=9, color="gray")
            if log and any(v > 0 for run in runs for _, v in run.epochs.get(key, [])):
                axes.set_yscale("log")
            axes.set_title(title, fontsize=10)
            axes.set_xlabel("epoch", fontsize=8)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.tick_params(labelsize=8)
            axes.grid(alpha=0.3)
            if i == 0:
                axes.legend(fontsize=8)
        for j, grid in enumerate(sweeps):
            _draw_heatmap(figure.add_subplot(spec[curve_rows + j // columns, j % columns]), grid, figure)
        figure.tight_layout()
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            with files.atomic_path(output) as tmp:
                figure.savefig(tmp, format="png", dpi=dpi)
        except OSError as error:  # a full disk: one line, and the previous report stays as it was
            raise files.write_error(output, error) from None
        width, height = (round(v * dpi) for v in figure.get_size_inches())
    finally:
        plt.close(figure)
    return ReportResult(output, [str(r.path) for r in runs], [str(s.path) for s in sweeps], width, height)


def _draw_heatmap(axes, grid: SweepGrid, figure) -> None:
    import numpy as np

    cells = np.array([[math.nan if v is None else 100 * v for v in row] for row in grid.values], dtype=float)
    image = axes.imshow(cells, cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    finite = cells[np.isfinite(cells)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for r in range(cells.shape[0]):
        for c in range(cells.shape[1]):
            if math.isfinite(cells[r, c]):
                best = grid.best == (r, c)
                axes.text(c, r, f"{cells[r, c]:.1f}" + ("*" if best else ""), ha="center", va="center", fontsize=8,
                          color="black" if cells[r, c] > middle else "white", fontweight="bold" if best else None)
    axes.set_yticks(range(len(grid.rows)), [str(v) for v in grid.rows], fontsize=8)
    axes.set_ylabel(grid.row_key.replace("pace.lambda", "λ (pace.lambda)"), fontsize=8)
    if grid.col_key:
        axes.set_xticks(range(len(grid.cols)), [str(v) for v in grid.cols], fontsize=8)
        axes.set_xlabel(grid.col_key.replace("pace.sigma", "σ (pace.sigma)"), fontsize=8)
    else:
        axes.set_xticks([])
    axes.set_title(f"{grid.label}: val top-1 %, mean over seeds (* best)", fontsize=10)
