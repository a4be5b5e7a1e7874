"""`pace train`: parse, train (on one process or --nproc of them), show the progress and the result."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pace_cli.cli.common import SetOption, console, print_json, warn
from pace_cli.errors import PaceError


class RichTrainLogger:
    """Progress bar with the live losses, a summary of what was adapted, one line per evaluated epoch."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task = None

    def start(self, *, total_steps, steps_per_epoch, report, device, train_samples):
        if self.quiet:
            return
        console.print(
            f"[bold]pace train[/]: {len(report.adapted_layers)} adapted layers, "
            f"{report.trainable_parameters:,} trainable / {report.total_parameters:,} parameters "
            f"({100 * report.trainable_parameters / max(1, report.total_parameters):.2f}%), "
            f"{train_samples} training images, {steps_per_epoch} steps/epoch, device {device}",
            soft_wrap=True,  # one line per message, whatever the terminal width: logs stay greppable
        )
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("ce {task.fields[ce]:.3f} cons {task.fields[cons]:.3f} lr {task.fields[lr]:.2e} "
                       "{task.fields[ips]:.0f} img/s"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, epoch=1, ce=0.0, cons=0.0, lr=0.0, ips=0.0)

    def step(self, record):
        if self.progress:
            self.progress.update(self.task, advance=1, epoch=record["epoch"], ce=record["ce"],
                                 cons=record["consistency"], lr=record["lr"], ips=record["images_per_s"])

    def epoch(self, record):
        if self.progress and "val_top1" in record:
            self.progress.console.print(
                f"epoch {record['epoch']}: train top-1 {record['train_top1']:.3f}, val top-1 {record['val_top1']:.3f}, "
                f"grad-norm {record['grad_norm']:.3f}, FP-distance {record['fp_distance']:.4f}", soft_wrap=True
            )

    def finish(self):
        if self.progress:
            self.progress.stop()
            self.progress = None


def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML file (see recipes/).")],
    set_: SetOption = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o",
                                                       help="Where to write outputs (default: \\[output] dir).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing adapter in the output dir.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in the output dir from its "
                                         "checkpoint (same recipe; more epochs are fine).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of tables.")] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Train with this many processes on this machine "
                                       "(DistributedDataParallel via torchrun's launcher: NCCL on GPUs, Gloo on "
                                       "CPU). \\[data] batch_size stays the global batch.")] = 1,
):
    """Fine-tune adapters with PACE and write adapter.safetensors, metrics.jsonl and recipe.toml.

    Example: [bold]pace train recipes/quickstart.toml --set pace.sigma=1.5 -o runs/qs[/]

    Several GPUs: [bold]pace train RECIPE --nproc 4[/], or [bold]torchrun --nproc-per-node 4 -m pace_cli train
    RECIPE[/] (multi-node: add torchrun's --nnodes and --rdzv-endpoint).

    Ctrl-C (or SIGTERM) saves a checkpoint and exits 130 (143); [bold]--resume[/] continues the run exactly,
    with any number of processes.
    """
    from pace_cli import distributed
    from pace_cli.recipe import ineffective_settings, load_recipe
    from pace_cli.training import TrainingInterrupted, checked_global_batch
    from pace_cli.training import train as run_training

    loaded = load_recipe(recipe, set_ or ())
    if nproc > 1:
        if distributed.launched_by_torchrun():
            raise PaceError("--nproc starts its own processes; under torchrun, leave it out "
                            "(torchrun's --nproc-per-node sets the count)")
        # the common mistake, caught before any process starts (training checks it again)
        checked_global_batch(loaded, distributed.World(0, nproc, 0))
        raise typer.Exit(distributed.launch_local(nproc, _argv_without_nproc(), loaded.train.device))
    speaks = distributed.is_rank_zero()  # under torchrun every rank trains; rank 0 reports
    if speaks:
        for note in ineffective_settings(loaded):
            warn(note)
    logger = RichTrainLogger(quiet=json_output)
    try:
        # the resume hints the library writes name this recipe file
        result = run_training(loaded, output_dir=output_dir, logger=logger, overwrite=overwrite, resume=resume,
                              recipe_label=str(recipe))
    except TrainingInterrupted as error:
        if not speaks:
            raise typer.Exit(error.exit_code) from None  # rank 0 says it once
        raise
    finally:
        logger.finish()
    if speaks:
        _show_result(result, json_output)


def _show_result(result, json_output: bool) -> None:
    if json_output:
        print_json({
            "adapter": str(result.adapter_path), "metrics": str(result.metrics_path),
            "recipe": str(result.recipe_path), "steps": result.steps, "seconds": round(result.seconds, 2),
            "images_per_second": round(result.images_per_second, 1),
            "val_top1": result.val.top1 if result.val else None,
            "trainable_parameters": result.report.trainable_parameters,
        })
        return
    val = f", val top-1 {result.val.top1:.4f}" if result.val else ""
    console.print(f"[green]done[/] in {result.seconds:.1f}s{val}; adapter written to {result.adapter_path}",
                  soft_wrap=True)


def _argv_without_nproc() -> list[str]:
    """This command line for the launched processes: everything after the program, less --nproc."""
    args, out, skip = sys.argv[1:], [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
