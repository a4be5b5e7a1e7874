"""`pace eval` and `pace inspect`: score a model on a split (and the recipe's targets), describe a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.panel import Panel
from rich.table import Table

from pace_cli.cli.common import SetOption, console, print_json
from pace_cli.errors import PaceError


def eval_(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML (model architecture and data).")],
    weights: Annotated[Optional[Path], typer.Option("--weights", "-w", help="Merged (or any full) checkpoint.")] = None,
    adapter: Annotated[Optional[Path], typer.Option("--adapter", "-a",
                                                    help="Adapter file; folded into the recipe's base in memory.")] = None,
    unmerged: Annotated[bool, typer.Option("--unmerged", help="With --adapter: run the adapter layers unfolded.")] = False,
    split: Annotated[Optional[str], typer.Option("--split", help="Split name (default: \\[data] test_split).")] = None,
    set_: SetOption = None,
    no_targets: Annotated[bool, typer.Option("--no-targets", help="Skip the recipe's eval targets (eval.targets).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object (top1, top5, samples, split, ...); "
                                              "with targets: results (one object per set), mean_target_top1, mean_target_top5.")] = False,
):
    """Accuracy on a held-out split: top-1, top-5, per class; plus every eval target of the recipe.

    With targets (the recipe's eval.targets tables) the model is built once and one table shows each set
    (top-1, top-5, images, scored logits) and the mean over the targets.

    Example: [bold]pace eval recipes/quickstart.toml --weights runs/qs/merged.safetensors[/]

    From an adapter, as JSON: [bold]pace eval recipes/quickstart.toml --adapter runs/qs/adapter.safetensors --json[/]
    """
    from pace_cli.distributed import is_rank_zero
    from pace_cli.evaluation import evaluate_recipe, evaluate_targets
    from pace_cli.recipe import load_recipe

    if (weights is None) == (adapter is None):
        raise PaceError("pass exactly one of --weights MERGED or --adapter ADAPTER")
    if unmerged and adapter is None:
        raise PaceError("--unmerged goes with --adapter")
    loaded = load_recipe(recipe, set_ or ())
    if loaded.eval.targets and not no_targets:
        report = evaluate_targets(loaded, weights=weights, adapter=adapter, split=split, unmerged=unmerged)
        render = render_targets
    else:
        report = evaluate_recipe(loaded, weights=weights, adapter=adapter, split=split, unmerged=unmerged)
        render = render_result
    if not is_rank_zero():
        return  # under torchrun every rank has the whole (summed) result; rank 0 prints it
    if json_output:
        print_json(report.to_dict())
    else:
        render(report)


def render_result(result) -> None:
    table = Table(title=f"{result.split}: {result.samples} images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("top-1", f"{100 * result.top1:.2f}%")
    if result.top5 is not None:
        table.add_row("top-5", f"{100 * result.top5:.2f}%")
    table.add_row("loss", f"{result.loss:.4f}")
    table.add_row("images/s", f"{result.images_per_second:.0f}")
    for name, acc in result.per_class.items():
        table.add_row(f"class {name}", "n/a" if acc != acc else f"{100 * acc:.1f}%")
    console.print(table)


def render_targets(report) -> None:
    table = Table(title="pace eval: the recipe's split and its targets")
    for column, justify in (("set", "left"), ("split", "left"), ("images", "right"), ("logits", "left"),
                            ("top-1", "right"), ("top-5", "right")):
        table.add_column(column, justify=justify)
    for item in report.sets:
        r = item.result
        logits = (f"{item.scored_classes} of {item.head_classes}" if item.restrict_logits
                  else f"all {item.head_classes}")
        top5 = "n/a" if r.top5 is None else f"{100 * r.top5:.2f}%"
        name = item.name if item.kind == "target" else f"{item.name} (recipe)"
        table.add_row(name, item.split, str(r.samples), logits, f"{100 * r.top1:.2f}%", top5)
    mean1, mean5 = report.mean("top1"), report.mean("top5")
    table.add_section()
    table.add_row(f"mean over {len(report.targets)} targets", "", str(sum(t.result.samples for t in report.targets)),
                  "", f"{100 * mean1:.2f}%" if mean1 is not None else "n/a",
                  f"{100 * mean5:.2f}%" if mean5 is not None else "n/a")
    console.print(table)
    for item in report.targets:
        how = (f"logits restricted to the {item.scored_classes} classes it holds" if item.restrict_logits
               else f"all {item.head_classes} logits")
        console.print(f"{item.name}: scored with {how}", soft_wrap=True)


def inspect(
    file: Annotated[Path, typer.Argument(help="An adapter, merged or base .safetensors file.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    show_recipe: Annotated[bool, typer.Option("--recipe", help="Also print the recipe an adapter came from.")] = False,
):
    """Describe a safetensors file: an adapter's kind, rank, targets and PACE settings, or a checkpoint's tensors.

    Example: [bold]pace inspect runs/qs/adapter.safetensors[/]
    """
    from pace_cli.artifacts.inspect import describe_file

    info = describe_file(file)
    if json_output:
        print_json(info)
        return
    table = Table(title=f"{file} ({info['role']})", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in info.items():
        if key in ("recipe", "metadata", "layers"):
            continue
        table.add_row(key, value if isinstance(value, str) else json.dumps(value, default=str))
    if "layers" in info:
        table.add_row("layers", f"{len(info['layers'])} ({', '.join(info['layers'][:4])}, ...)")
    console.print(table)
    if show_recipe and info.get("recipe"):
        console.print(Panel(info["recipe"], title="recipe"))
