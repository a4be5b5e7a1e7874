"""`pace predict`: top-k classes of unlabelled images from a merged file, an adapter or an ONNX file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pace_cli.cli.common import SetOption, err_console
from pace_cli.errors import PaceError


def predict(
    images: Annotated[list[str], typer.Argument(help="Image files, folders (walked recursively, image files "
                                                "only) or @list.txt (one path a line, relative to the list).")],
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Merged file written by `pace merge`.")] = None,
    adapter: Annotated[Optional[Path], typer.Option("--adapter", help="Adapter file; folded in memory into the "
                                                    "base its recorded recipe names.")] = None,
    onnx: Annotated[Optional[Path], typer.Option("--onnx", help="ONNX file written by `pace export --format onnx`, "
                                                 "run by onnxruntime.")] = None,
    recipe: Annotated[Optional[Path], typer.Option("--recipe", "-r", help="Recipe whose model and [data] "
                                                   "preprocessing replace what the file records.")] = None,
    set_: SetOption = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write; default: stdout.")] = None,
    format_: Annotated[Optional[str], typer.Option("--format", help="csv, json or jsonl; default: from the "
                                                   "output's suffix, else csv.")] = None,
    topk: Annotated[int, typer.Option("--topk", help="Classes per image.")] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch.")] = 32,
    workers: Annotated[int, typer.Option("--workers", help="Loader processes reading images ahead.")] = 2,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first unreadable image.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
):
    """Predict the classes of new images: one row per image with its top-k classes and probabilities.

    Images are read exactly as an imagefolder evaluation split. An unreadable file is a row with its
    reason (the run goes on; --strict stops instead), and the output is written atomically.

    Example: [bold]pace predict --weights runs/qs/merged.safetensors photos/ -o preds.csv[/]
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
    from rich.text import Text

    from pace_cli import files
    from pace_cli.data import collect_image_paths
    from pace_cli.predict import format_for, load_image_model, predict_images, render_predictions, write_predictions
    from pace_cli.recipe import load_recipe

    if workers < 0:
        raise PaceError(f"--workers {workers} must be 0 or more")
    fmt = format_for(output, format_)
    if output is not None:
        files.check_can_write(output, overwrite)  # before any work, so a refusal costs nothing
    loaded = load_recipe(recipe, set_ or ()) if recipe is not None else None
    if loaded is None and set_:
        raise PaceError("--set needs --recipe", remedy="pass --recipe RECIPE or drop --set")
    paths = collect_image_paths(images)
    model = load_image_model(weights=weights, adapter=adapter, onnx=onnx, recipe=loaded, device=device)
    source = str(weights or adapter or onnx)

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed or 0:.1f} images/s")

    with Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), Rate(), console=err_console,
                  transient=True) as progress:
        task = progress.add_task("images", total=len(paths))
        report = predict_images(model, paths, topk=topk, batch_size=batch_size, num_workers=workers, strict=strict,
                                on_batch=lambda n: progress.advance(task, n))
    if output is None:
        sys.stdout.write(render_predictions(report, fmt, source))
    else:
        write_predictions(report, output, fmt, source)
    where = f" -> {output}" if output is not None else ""
    err_console.print(f"[green]{report.summary()}[/]{where}", highlight=False, soft_wrap=True)
