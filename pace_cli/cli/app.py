"""The `pace` command line: parse, call the library, render with rich, map errors to exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from pace_cli import __version__

app = typer.Typer(
    name="pace",
    help="Fine-tune vision transformers with adapters and the PACE regulariser, then merge the adapters "
    "into the base weights for zero-overhead inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)
STATE = {"debug": False}


def fail(error: BaseException, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_guarded(action):
    """Run a command body: a PaceError becomes one line and its exit code, Ctrl-C exits 130."""
    from pace_cli.errors import PaceError

    if STATE["debug"]:
        return action()
    try:
        return action()
    except PaceError as error:
        fail(error, error.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130)
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001 - anything else is our bug; say so in one line
        message = " ".join(str(error).split()) or type(error).__name__
        fail(f"unexpected {type(error).__name__}: {message} (run `pace --debug ...` for the traceback and "
             "please report it)", 1)


def version_callback(value: bool):
    if value:
        console.print(f"pace {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
):
    STATE["debug"] = debug


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", metavar="SECTION.KEY=VALUE",
                 help="Override a recipe key, e.g. --set pace.sigma=1.5 (repeatable; validated like the file)."),
]


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


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML file (see recipes/).")],
    set_: SetOption = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o",
                                                       help="Where to write outputs (default: [output] dir).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing adapter in the output dir.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in the output dir from its "
                                         "checkpoint (same recipe; more epochs are fine).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of tables.")] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Train with this many processes on this machine "
                                       "(DistributedDataParallel via torchrun's launcher: NCCL on GPUs, Gloo on "
                                       "CPU). [data] batch_size stays the global batch.")] = 1,
):
    """Fine-tune adapters with PACE and write adapter.safetensors, metrics.jsonl and recipe.toml.

    Example: [bold]pace train recipes/quickstart.toml --set pace.sigma=1.5 -o runs/qs[/]

    Several GPUs: [bold]pace train RECIPE --nproc 4[/], or [bold]torchrun --nproc-per-node 4 -m pace_cli train
    RECIPE[/] (multi-node: add torchrun's --nnodes and --rdzv-endpoint).

    Ctrl-C (or SIGTERM) saves a checkpoint and exits 130 (143); [bold]--resume[/] continues the run exactly,
    with any number of processes.
    """
    def action():
        from pace_cli import distributed
        from pace_cli.errors import PaceError
        from pace_cli.recipe.schema import load_recipe
        from pace_cli.training.loop import TrainingInterrupted, train as run_training

        loaded = load_recipe(recipe, set_ or ())
        if nproc > 1:
            if distributed.launched_by_torchrun():
                raise PaceError("--nproc starts its own processes; under torchrun, leave it out "
                                "(torchrun's --nproc-per-node sets the count)")
            # the common mistake, caught before any process starts (training checks it again)
            distributed.local_batch_size(loaded.data.batch_size, distributed.World(0, nproc, 0))
            raise typer.Exit(distributed.launch_local(nproc, _argv_without_nproc(), loaded.train.device))
        speaks = distributed.is_rank_zero()  # under torchrun every rank trains; rank 0 reports
        if speaks:
            from pace_cli.recipe.schema import ineffective_settings

            for note in ineffective_settings(loaded):
                err_console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
        logger = RichTrainLogger(quiet=json_output)
        try:
            result = run_training(loaded, output_dir=output_dir, logger=logger, overwrite=overwrite, resume=resume)
        except PaceError as error:  # interrupted, or a full disk: the resume command names this recipe
            if isinstance(error, TrainingInterrupted) and not speaks:
                raise typer.Exit(error.exit_code)  # rank 0 says it once
            if "pace train RECIPE" not in str(error):
                raise
            raise type(error)(str(error).replace("pace train RECIPE", f"pace train {recipe}"),
                              exit_code=error.exit_code) from None
        finally:
            logger.finish()
        if not speaks:
            return
        summary = {
            "adapter": str(result.adapter_path), "metrics": str(result.metrics_path),
            "recipe": str(result.recipe_path), "steps": result.steps, "seconds": round(result.seconds, 2),
            "images_per_second": round(result.images_per_second, 1),
            "val_top1": result.val.top1 if result.val else None,
            "trainable_parameters": result.report.trainable_parameters,
        }
        if json_output:
            print_json(summary)
        else:
            val = f", val top-1 {result.val.top1:.4f}" if result.val else ""
            console.print(f"[green]done[/] in {result.seconds:.1f}s{val}; adapter written to {result.adapter_path}",
                          soft_wrap=True)

    run_guarded(action)


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


@app.command()
def merge(
    base: Annotated[str, typer.Argument(help="Base weights (.safetensors, or builtin:<name>).")],
    adapter: Annotated[Path, typer.Argument(help="adapter.safetensors written by `pace train`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Merged checkpoint to write.")] = Path("merged.safetensors"),
    force: Annotated[bool, typer.Option("--force", help="Merge even if the base fingerprint differs.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
):
    """Fold an adapter into its base weights: a plain checkpoint of the base architecture with the new head.

    Example: [bold]pace merge builtin:fmnist_vit runs/qs/adapter.safetensors -o runs/qs/merged.safetensors[/]
    """
    def action():
        import time

        from pace_cli.artifacts.core import merge_files
        from pace_cli.models import resolve_checkpoint

        base_path = resolve_checkpoint(base) if base.startswith("builtin:") else Path(base)
        if not base_path.is_file():
            from pace_cli.errors import PaceError
            raise PaceError(f"base file '{base}' not found")
        start = time.perf_counter()
        report = merge_files(base_path, adapter, output, force=force, overwrite=overwrite)
        seconds = time.perf_counter() - start
        if json_output:
            print_json({"output": str(report.output), "tensors": report.tensors, "merged_layers": report.merged_layers,
                        "fingerprint_ok": report.fingerprint_ok, "bytes": report.output_bytes,
                        "seconds": round(seconds, 3)})
        else:
            note = "" if report.fingerprint_ok else " [yellow](fingerprint mismatch ignored: --force)[/]"
            console.print(f"[green]merged[/] {report.merged_layers} layers into {report.output} "
                          f"({report.tensors} tensors) in {seconds:.2f}s{note}", soft_wrap=True)

    run_guarded(action)


@app.command("eval")
def eval_(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML (model architecture and data).")],
    weights: Annotated[Optional[Path], typer.Option("--weights", "-w", help="Merged (or any full) checkpoint.")] = None,
    adapter: Annotated[Optional[Path], typer.Option("--adapter", "-a",
                                                    help="Adapter file; folded into the recipe's base in memory.")] = None,
    unmerged: Annotated[bool, typer.Option("--unmerged", help="With --adapter: run the adapter layers unfolded.")] = False,
    split: Annotated[Optional[str], typer.Option("--split", help="Split name (default: [data] test_split).")] = None,
    set_: SetOption = None,
    no_targets: Annotated[bool, typer.Option("--no-targets", help="Skip the recipe's eval targets (eval.targets).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object (top1, top5, samples, split, ...); "
                                              "with targets: results (one object per set), mean_target_top1, mean_target_top5.")] = False,
):
    """Accuracy on a held-out split: top-1, top-5, per class; plus every eval target of the recipe.

    With targets (the recipe's eval.targets tables) the model is built once and one table shows each set (top-1, top-5, images, scored logits) and the mean over the targets.

    Examples: [bold]pace eval recipes/quickstart.toml --weights runs/qs/merged.safetensors[/]
    · [bold]pace eval recipes/quickstart.toml --adapter runs/qs/adapter.safetensors --json[/]
    """
    def action():
        from pace_cli.errors import PaceError
        from pace_cli.recipe.schema import load_recipe
        from pace_cli.evaluation import evaluate_recipe

        if (weights is None) == (adapter is None):
            raise PaceError("pass exactly one of --weights MERGED or --adapter ADAPTER")
        if unmerged and adapter is None:
            raise PaceError("--unmerged goes with --adapter")
        from pace_cli.distributed import is_rank_zero

        loaded = load_recipe(recipe, set_ or ())
        if loaded.eval.targets and not no_targets:
            from pace_cli.evaluation import evaluate_targets

            report = evaluate_targets(loaded, weights=weights, adapter=adapter, split=split, unmerged=unmerged)
            if not is_rank_zero():
                return  # as below: every rank has the summed result, rank 0 prints it
            if json_output:
                print_json(report.to_dict())
            else:
                render_targets(report)
            return
        result = evaluate_recipe(loaded, weights=weights, adapter=adapter, split=split, unmerged=unmerged)
        if not is_rank_zero():
            return  # under torchrun every rank has the whole result; rank 0 prints it
        if json_output:
            print_json(result.to_dict())
            return
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

    run_guarded(action)


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


@app.command()
def inspect(
    file: Annotated[Path, typer.Argument(help="An adapter, merged or base .safetensors file.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    show_recipe: Annotated[bool, typer.Option("--recipe", help="Also print the recipe an adapter came from.")] = False,
):
    """Describe a safetensors file: an adapter's kind, rank, targets and PACE settings, or a checkpoint's tensors.

    Example: [bold]pace inspect runs/qs/adapter.safetensors[/]
    """
    def action():
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

    run_guarded(action)


@app.command("export-base")
def export_base(
    recipe: Annotated[Path, typer.Argument(help="Recipe whose [model] names the base (checkpoint or pretrained).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="safetensors file to write.")] = Path("base.safetensors"),
    set_: SetOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
):
    """Write the recipe's base weights as a timm-format safetensors file, the input `pace merge` expects.

    Useful when the base came from a .pth/.npz file or timm's hub. Example:
    [bold]pace export-base recipes/vtab1k/cifar100.toml --set model.checkpoint=ViT-B_16.npz -o bases/vit_b16_in21k.safetensors[/]
    """
    def action():
        from pace_cli.recipe.schema import load_recipe
        from pace_cli.artifacts.base import export_base_weights

        path = export_base_weights(load_recipe(recipe, set_ or ()), output, overwrite=overwrite)
        console.print(f"[green]wrote[/] {path}")

    run_guarded(action)


# ---------------------------------------------------------------- interop: PEFT and timm (issue 12)


@app.command("export")
def export(
    adapter: Annotated[Path, typer.Argument(help="A lora_add adapter.safetensors written by `pace train`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write (adapter_config.json, "
                                         "adapter_model.safetensors).")],
    format_: Annotated[str, typer.Option("--format", help="Target format; 'peft' (Hugging Face PEFT LoRA).")] = "peft",
    base: Annotated[Optional[str], typer.Option("--base", help="Base weights (.safetensors or builtin:<name>), read "
                                                "only when the adapter shifts biases; default: the base recorded "
                                                "in the adapter.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Export even if the base fingerprint differs.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing PEFT adapter folder.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
):
    """Write a lora_add adapter as a Hugging Face PEFT LoRA that loads without pace installed.

    Example: [bold]pace export runs/qs/adapter.safetensors --format peft -o runs/qs/peft[/]
    then [bold]PeftModel.from_pretrained(timm_model_with_base_weights, "runs/qs/peft")[/].
    lora_mul and vpt_add adapters have no exact PEFT form: use [bold]pace merge[/] for those.
    """
    def action():
        from pace_cli.errors import PaceError
        from pace_cli.artifacts.peft import EXPORT_FORMATS, export_peft

        if format_ not in EXPORT_FORMATS:
            raise PaceError(f"--format {format_!r} is not supported; choose one of {', '.join(EXPORT_FORMATS)}")
        report = export_peft(adapter, output, base=base, force=force, overwrite=overwrite)
        if json_output:
            print_json({"output": str(report.output), "format": format_, "layers": report.layers,
                        "rank": report.rank, "bias": report.bias, "head": report.head, "tensors": report.tensors,
                        "base": report.base, "fingerprint_ok": report.fingerprint_ok})
            return
        note = "" if report.fingerprint_ok is not False else " [yellow](fingerprint mismatch ignored: --force)[/]"
        console.print(f"[green]exported[/] {report.layers} LoRA layers (rank {report.rank}, bias {report.bias!r}, "
                      f"head {report.head}) to {report.output} in PEFT format{note}", soft_wrap=True)

    run_guarded(action)


@app.command("import-peft")
def import_peft(
    folder: Annotated[Path, typer.Argument(help="PEFT LoRA folder (adapter_config.json + adapter_model.safetensors).")],
    recipe: Annotated[Path, typer.Option("--recipe", "-r", help="Recipe whose \\[model] names the timm model and "
                                         "the base weights the LoRA was trained on.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="pace adapter file to write.")] = Path(
        "adapter.safetensors"),
    set_: SetOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
):
    """Turn a PEFT LoRA for a timm model into a pace lora_add adapter that merge, eval and inspect accept.

    Example: [bold]pace import-peft runs/qs/peft --recipe recipes/quickstart.toml -o runs/qs/imported.safetensors[/]
    """
    def action():
        from pace_cli.artifacts.peft import import_peft as run_import
        from pace_cli.recipe.schema import load_recipe

        report = run_import(folder, output, load_recipe(recipe, set_ or ()), overwrite=overwrite)
        if json_output:
            print_json({"output": str(report.output), "layers": report.layers, "rank": report.rank,
                        "scaling": report.scaling, "bias": report.bias, "bias_layers": report.bias_layers,
                        "head": report.head, "head_from": report.head_from, "num_classes": report.num_classes})
            return
        console.print(f"[green]imported[/] {report.layers} LoRA layers (rank {report.rank}, scaling "
                      f"{report.scaling:g} folded into lora_B, {report.bias_layers} bias shifts, head from "
                      f"{report.head_from}) into {report.output}", soft_wrap=True)

    run_guarded(action)


# ---------------------------------------------------------------- check, sweep, report


def _percent(value) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def render_check(report) -> None:
    table = Table(title=f"pace check {report.recipe}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for split in report.splits:
        counts = sorted(split.per_class.values())
        spread = f"{counts[0]}" if counts and counts[0] == counts[-1] else (f"{counts[0]}–{counts[-1]}" if counts else "0")
        table.add_row(f"{split.role} split", f"'{split.split}': {split.samples} images, {len(split.per_class)} classes "
                      f"({spread} per class)")
    if report.model:
        table.add_row("model", f"{report.model}, {report.num_classes} classes")
    if report.adapted_layers is not None:
        share = 100 * report.trainable_parameters / max(1, report.total_parameters)
        table.add_row("adapters", f"{report.adapted_layers} layers; {report.trainable_parameters:,} trainable / "
                      f"{report.total_parameters:,} parameters ({share:.2f}%)")
    if report.sigma_per_block:
        table.add_row("σ per block", ", ".join(f"{block} {sigma:.3g}" for block, sigma in report.sigma_per_block.items()))
    if report.steps_per_epoch is not None:
        table.add_row("steps", f"{report.steps_per_epoch} per epoch (batch {report.batch_size}), {report.total_steps} in all")
    if report.memory:
        from pace_cli.files.tensors import human_size

        m = report.memory
        table.add_row("memory / step", f"~{human_size(m.total_bytes)}: activations {human_size(m.activation_bytes)} "
                      f"({human_size(m.activation_bytes_per_image)} per image x {m.images_per_step}), weights + grads + "
                      f"AdamW {human_size(m.weight_bytes)}")
        table.add_row("", f"[dim]{escape(m.how)}[/]")
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


@app.command()
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
    def action():
        from pace_cli.check import check_recipe

        report = check_recipe(recipe, set_ or ())
        if json_output:
            print_json(report.to_dict())
        else:
            render_check(report)
        if not report.ok:
            raise typer.Exit(2)

    run_guarded(action)


class RichSweepLogger:
    """One line per finished run, with a progress bar over the whole sweep."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task = None

    def start(self, *, runs, settings, seeds):
        if self.quiet:
            return
        console.print(f"[bold]pace sweep[/]: {settings} settings x {seeds} seeds, {runs} runs", soft_wrap=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        self.progress.start()
        self.task = self.progress.add_task("sweep", total=runs)

    def run_start(self, run, number, total):
        if self.progress:
            self.progress.update(self.task, description=f"{run.phase} {run.setting.name} seed {run.seed}")

    def train_logger(self, run):
        return None

    def run_end(self, outcome):
        if not self.progress:
            return
        score = (f"val top-1 {_percent(outcome.val_top1)}" if outcome.phase == "grid"
                 else f"test top-1 {_percent(outcome.test_top1)}")
        self.progress.console.print(f"{outcome.status:8} {outcome.phase} {outcome.setting} seed {outcome.seed}: "
                                    f"{score} ({outcome.seconds:.1f}s)", soft_wrap=True, highlight=False)
        self.progress.advance(self.task)

    def finish(self):
        if self.progress:
            self.progress.stop()
            self.progress = None


def render_sweep(result) -> None:
    keys = [axis.key for axis in result.axes]
    table = Table(title=f"sweep {result.sweep_dir}: settings by mean validation top-1 over seeds")
    for name in ("rank", *keys, "seeds", "val top-1 % (mean ± std)", "val loss"):
        table.add_column(name, justify="right")
    for score in result.ranking:
        table.add_row(str(score.rank), *[str(score.values.get(k)) for k in keys], str(score.seeds),
                      f"{100 * score.val_top1_mean:.2f} ± {100 * score.val_top1_std:.2f}", f"{score.val_loss_mean:.4f}",
                      style="bold green" if score.rank == 1 else None)
    console.print(table)
    finals = result.final_runs
    if finals:
        table = Table(title=f"final: {result.best.setting} retrained on train + val, scored on test")
        table.add_column("seed", justify="right")
        table.add_column("test top-1 %", justify="right")
        for outcome in finals:
            table.add_row(str(outcome.seed), _percent(outcome.test_top1))
        tests = [o.test_top1 for o in finals if o.test_top1 is not None]
        if tests:
            table.add_row("mean", _percent(sum(tests) / len(tests)), style="bold")
        console.print(table)


@app.command()
def sweep(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML file the grid varies.")],
    grid: Annotated[Optional[list[str]], typer.Option(
        "--grid", "-g", metavar="SECTION.KEY=V1,V2,...",
        help="A recipe key and its values (repeatable; the grid is every combination; keys validated like --set).")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Seeds, comma-separated; each sets train.seed and data.seed.")] = "0",
    final: Annotated[bool, typer.Option("--final", help="Retrain the best setting on \\[data] trainval_split with every "
                                        "seed and score it on the test split.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue interrupted runs from their checkpoints.")] = False,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o",
                                             help="Sweep folder (one run folder per setting and seed).")] = Path("runs/sweep"),
    set_: SetOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print sweep.json's content instead of tables.")] = False,
):
    """Train a grid of settings over seeds, rank them by mean validation top-1, optionally retrain the best.

    Example: [bold]pace sweep recipes/quickstart.toml --grid pace.lambda=0.1,0.5,1 --grid pace.sigma=0.5,1,1.5
    --seeds 0,1,2 --final -o runs/sweep[/]

    Finished runs are skipped, so rerunning extends or completes a sweep. Ctrl-C keeps the current run's
    checkpoint and exits 130; rerun with [bold]--resume[/] to continue. Writes sweep.csv and sweep.json.
    """
    def action():
        from pace_cli.distributed import is_rank_zero
        from pace_cli.sweep import parse_seeds, plan_sweep, run_sweep

        plan = plan_sweep(recipe, output_dir, grid=grid or (), seeds=parse_seeds(seeds), overrides=set_ or (),
                          final=final)
        speaks = is_rank_zero()  # under torchrun every rank trains; rank 0 reports
        logger = RichSweepLogger(quiet=json_output or not speaks)
        try:
            result = run_sweep(plan, resume=resume, logger=logger)
        finally:
            logger.finish()
        if not speaks:
            return
        if json_output:
            print_json(result.to_dict())
        else:
            render_sweep(result)

    run_guarded(action)


@app.command()
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
    norm, FP-distance, training top-1. Needs matplotlib: pip install 'pace-cli[plot]'.
    """
    def action():
        from pace_cli.report import write_report

        result = write_report(folders, output, labels=label or (), overwrite=overwrite)
        if json_output:
            print_json({"output": str(result.output), "runs": result.runs, "sweeps": result.sweeps,
                        "width_px": result.width_px, "height_px": result.height_px})
        else:
            console.print(f"[green]wrote[/] {result.output} ({len(result.runs)} runs, {len(result.sweeps)} sweeps)",
                          soft_wrap=True)

    run_guarded(action)


if __name__ == "__main__":  # pragma: no cover
    app()
