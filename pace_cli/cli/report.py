"""`pace report`: training curves of runs and heat maps of sweeps, drawn into one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pace_cli.cli.common import console, print_json


def report(
    folders: Annotated[list[Path], typer.Argument(help="Run folders (from `pace train`) and/or sweep folders.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")] = Path("report.png"),
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", help="Legend name per folder, in order "
                                                       "(repeatable; default: the folder names).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
):
    """Draw the training curves of runs, overlaid, and a λ × σ heat map of validation top-1 for sweep folders.

    Example: [bold]pace report runs/off runs/pace --label off --label pace -o report.png[/]

    Curves per epoch from metrics.jsonl: loss, cross-entropy, consistency, lr, validation top-1, gradient
    norm, FP-distance, training top-1. Needs matplotlib: pip install 'pace-cli\\[plot]'.
    """
    from pace_cli.report import write_report

    result = write_report(folders, output, labels=label or (), overwrite=overwrite)
    if json_output:
        print_json({"output": str(result.output), "runs": result.runs, "sweeps": result.sweeps,
                    "width_px": result.width_px, "height_px": result.height_px})
    else:
        console.print(f"[green]wrote[/] {result.output} ({len(result.runs)} runs, {len(result.sweeps)} sweeps)",
                      soft_wrap=True)
