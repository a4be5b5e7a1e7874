"""`pace sweep`: train a grid of settings over seeds, rank them, optionally score the best on test; show it live."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from pace_cli.cli.common import SetOption, console, print_json, warn


def sweep(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML file the grid varies.")],
    grid: Annotated[Optional[list[str]], typer.Option(
        "--grid", "-g", metavar="SECTION.KEY=V1,V2,...",
        help="A recipe key and its values (repeatable; the grid is every combination; keys validated like --set).")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Seeds, comma-separated; each sets train.seed and data.seed.")] = "0",
    final: Annotated[bool, typer.Option("--final", help="Score the best setting on the test split with every seed. "
                                        "Under \\[data] shots (every fewshot recipe): its grid runs' adapters, not "
                                        "retrained (the few-shot protocol keeps the training images). Otherwise: "
                                        "retrained on \\[data] trainval_split first, in DIR/final/.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue interrupted runs from their checkpoints.")] = False,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o",
                                             help="Sweep folder (one run folder per setting and seed).")] = Path("runs/sweep"),
    set_: SetOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print sweep.json's content instead of tables.")] = False,
    backend: Annotated[str, typer.Option("--backend", help="What trains the runs: sequential (one after another in "
                                         "this process) or ray (Ray Tune trials over a cluster's CPUs and GPUs; "
                                         "pip install 'pace-cli\\[ray]').")] = "sequential",
    address: Annotated[Optional[str], typer.Option("--address", help="With --backend ray: auto joins the running "
                                                   "cluster, HOST:PORT the one there; unset starts a local one "
                                                   "sized to this machine.")] = None,
    gpus_per_trial: Annotated[Optional[float], typer.Option("--gpus-per-trial", help="With --backend ray: GPUs per "
                                                            "trial (0.25 packs four trials on a GPU).")] = None,
    cpus_per_trial: Annotated[Optional[int], typer.Option("--cpus-per-trial", help="With --backend ray: CPU cores "
                                                          "per trial (torch's thread count; caps num_workers = auto).")] = None,
    max_concurrent: Annotated[Optional[int], typer.Option("--max-concurrent", help="With --backend ray: at most "
                                                          "this many trials at once (default: as many as fit).")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="With --backend ray: fifo (default) trains "
                                                     "the full grid, the paper's protocol; asha stops weak settings "
                                                     "early: at each rung (epochs G, G·R, G·R², …) a setting whose "
                                                     "mean validation top-1 over its seeds is not in the top 1/R of "
                                                     "the settings judged there is stopped, all its seeds. Fewer "
                                                     "epochs, but no longer the paper's protocol: a setting that "
                                                     "starts slowly may be stopped before it would have won. "
                                                     "Stopped runs are 'stopped' in sweep.csv, never ranked or "
                                                     "chosen, and not trained again by a rerun.")] = None,
    grace_epochs: Annotated[Optional[int], typer.Option("--grace-epochs", metavar="G", help="With --scheduler asha: "
                                                        "the first rung's epoch, an evaluated one (default: the "
                                                        "recipe's \\[train] eval_every).")] = None,
    reduction_factor: Annotated[Optional[int], typer.Option("--reduction-factor", metavar="R", help="With "
                                                            "--scheduler asha: each rung keeps the top 1/R of the "
                                                            "settings; rungs at G·R^k (default 3).")] = None,
):
    """Train a grid of settings over seeds, rank them by mean validation top-1, optionally score the best on test.

    Example: [bold]pace sweep recipes/quickstart.toml --grid pace.lambda=0.1,0.5,1 --grid pace.sigma=0.5,1,1.5
    --seeds 0,1,2 --final -o runs/sweep[/]

    Finished runs are skipped, so rerunning extends or completes a sweep. Ctrl-C keeps the current run's
    checkpoint and exits 130; rerun with [bold]--resume[/] to continue. Writes sweep.csv and sweep.json.
    """
    from pace_cli.distributed import is_rank_zero
    from pace_cli.sweep import parse_seeds, plan_sweep, run_sweep

    runner = _backend(backend, address=address, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial,
                      max_concurrent=max_concurrent, scheduler=scheduler, grace_epochs=grace_epochs,
                      reduction_factor=reduction_factor)
    plan = plan_sweep(recipe, output_dir, grid=grid or (), seeds=parse_seeds(seeds), overrides=set_ or (),
                      final=final)
    speaks = is_rank_zero()  # under torchrun every rank trains; rank 0 reports
    if speaks:
        for note in plan.notes:
            warn(note)
    logger = RichSweepLogger(quiet=json_output or not speaks)
    try:
        result = run_sweep(plan, resume=resume, logger=logger, backend=runner)
    finally:
        logger.finish()
    if not speaks:
        return
    if json_output:
        print_json(result.to_dict())
    else:
        render_sweep(result)


def _backend(name: str, **ray_options):
    """The backend object; a Ray flag given to another backend is refused rather than ignored."""
    from pace_cli.errors import PaceError
    from pace_cli.sweep import backend_named

    given = {key: value for key, value in ray_options.items() if value is not None}
    if name != "ray":
        if given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise PaceError(f"{flag} is a --backend ray option; add --backend ray or drop {flag}")
        return backend_named(name)
    return backend_named(name, **given)


def _percent(value) -> str:
    return "" if value is None else f"{100 * value:.2f}"


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
        if outcome.status == "failed":
            score = outcome.reason
        elif outcome.status == "stopped":
            score = f"{score}; {outcome.reason}"
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
    stopped = sorted({o.setting for o in result.runs if o.status == "stopped"})
    if stopped:
        console.print(f"{len(stopped)} settings stopped early by --scheduler asha, not ranked: {', '.join(stopped)}",
                      soft_wrap=True, highlight=False)
    finals = result.final_runs
    if not finals:
        return
    # The title says whether the final runs were retrained or are the grid runs scored as they were.
    table = Table(title=f"final: {result.best.setting}, {result.final_protocol}")
    table.add_column("seed", justify="right")
    table.add_column("test top-1 %", justify="right")
    table.add_column("run folder", justify="left")
    for outcome in finals:
        table.add_row(str(outcome.seed), _percent(outcome.test_top1), outcome.run_dir)
    tests = [o.test_top1 for o in finals if o.test_top1 is not None]
    if tests:
        table.add_row("mean", _percent(sum(tests) / len(tests)), "", style="bold")
    console.print(table)
