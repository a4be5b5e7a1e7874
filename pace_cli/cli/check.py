"""`pace check`: every problem a recipe has, and the plan of its training run, without training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pace_cli.cli.common import SetOption, console, err_console, print_json


def check(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML file to check.")],
    set_: SetOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object (ok, problems, splits, plan).")] = False,
):
    """Check a recipe without training, in seconds and without a GPU: data, model, targets, checkpoint, plan.

    Example: [bold]pace check recipes/quickstart.toml --set data.shots=2[/]

    Lists every problem found (exit 2 if any), then the plan: trainable parameters, σ per block, steps and
    an estimate of the memory one training step needs.
    """
    from pace_cli.check import check_recipe

    report = check_recipe(recipe, set_ or ())
    if json_output:
        print_json(report.to_dict())
    else:
        render_check(report)
    if not report.ok:
        raise typer.Exit(2)


def render_check(report) -> None:
    table = Table(title=f"pace check {report.recipe}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for split in report.splits:
        table.add_row(f"{split.role} split", f"'{split.split}': {split.samples} images, {len(split.per_class)} classes "
                      f"({_per_class_spread(split.per_class)} per class)")
    if report.model:
        table.add_row("model", f"{report.model}, {report.num_classes} classes")
    if report.adapted_layers is not None:
        share = 100 * report.trainable_parameters / max(1, report.total_parameters)
        table.add_row("adapters", f"{report.adapted_layers} layers; {report.trainable_parameters:,} trainable / "
                      f"{report.total_parameters:,} parameters ({share:.2f}%)")
    if report.adapter_tensors:
        table.add_row("adapter tensors", ", ".join(f"{name} {c['parameters']:,} ({c['layers']} layers)"
                                                   for name, c in report.adapter_tensors.items()))
    if report.sigma_per_block:
        table.add_row("σ per block", ", ".join(f"{block} {sigma:.3g}" for block, sigma in report.sigma_per_block.items()))
    if report.steps_per_epoch is not None:
        table.add_row("steps", f"{report.steps_per_epoch} per epoch (batch {report.batch_size}), {report.total_steps} in all")
    if report.memory:
        _add_memory_rows(table, report.memory)
    for note in report.notes:
        table.add_row("note", escape(note))
    console.print(table)
    for problem in report.problems:
        err_console.print(f"[bold red]problem:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if report.ok:
        console.print("[green]ok[/]: ready to train")
    else:
        count = len(report.problems)
        err_console.print(f"[bold red]error:[/] {count} problem{'s' if count > 1 else ''} in {escape(report.recipe)}; "
                          "fix them and check again", highlight=False, soft_wrap=True)


def _per_class_spread(per_class: dict) -> str:
    counts = sorted(per_class.values())
    if not counts:
        return "0"
    return f"{counts[0]}" if counts[0] == counts[-1] else f"{counts[0]}–{counts[-1]}"


def _add_memory_rows(table: Table, memory) -> None:
    from pace_cli.files.sizes import human_size

    table.add_row("memory / step", f"~{human_size(memory.total_bytes)}: activations "
                  f"{human_size(memory.activation_bytes)} ({human_size(memory.activation_bytes_per_image)} per image "
                  f"x {memory.images_per_step}), weights + grads + AdamW {human_size(memory.weight_bytes)}")
    table.add_row("", f"[dim]{escape(memory.how)}[/]")
