"""`pace sweep`: train a grid of recipe settings over seeds, rank them on validation, optionally retrain.

The protocol is the paper's: every setting of the grid is trained on the train split with each
seed and scored on the validation split; settings are ranked by their mean validation top-1 over
the seeds; with ``final`` the best setting is retrained on the train + val split
(``[data] trainval_split``) with each seed and scored once on the test split.

Each run is a normal `pace train` output folder (adapter, metrics.jsonl, recipe.toml) under the
sweep folder, so a run already complete is skipped and an interrupted one resumes from its
checkpoint. A seed sets both ``train.seed`` (initialisation, noise, shuffling) and ``data.seed``
(which k images a few-shot recipe draws): every setting then sees the same images for the same
seed, so settings are compared on paired data, and the spread over seeds includes the choice of
images, as in the few-shot protocol.
"""

from __future__ import annotations

import contextlib
import csv
import io as text_io
import itertools
import json
import math
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pace_cli import files
from pace_cli.errors import PaceError
from pace_cli.recipe.schema import Recipe, load_recipe, parse_recipe, recipe_to_dict
from pace_cli.files.layout import (
    ADAPTER_FILE, CHECKPOINT_FILE, FINAL_FOLDER, GRID_FOLDER, METRICS_FILE, RECIPE_FILE, SWEEP_CSV, SWEEP_JSON, TEST_FILE,
)

SEED_KEYS = ("train.seed", "data.seed")
# Keys that change where or how fast a run goes, not what it computes: a finished run is
# reused even if they differ (the sweep folder may have moved, the machine may differ).
_RESULT_NEUTRAL_KEYS = {("output", "dir"), ("train", "device"), ("data", "num_workers"),
                        ("data", "eval_batch_size")}


def _is_writer() -> bool:
    """Whether this process writes sweep files: every rank runs the same runs in the same order
    (training needs all of them); only rank 0 writes the tables."""
    from pace_cli.distributed import current_world

    return current_world().is_writer


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid key=v1,v2,...``: the recipe key and its values (parsed, and as typed)."""

    key: str
    values: tuple[Any, ...]
    texts: tuple[str, ...]


@dataclass(frozen=True)
class Setting:
    """One point of the grid."""

    index: int  # position in grid order (the last tie-breaker)
    name: str  # folder-safe and readable, e.g. lambda-0.5_sigma-1
    values: dict[str, Any]
    overrides: tuple[str, ...]


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and quotes, so a list value ``[1, 2]`` stays one value."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def parse_grid(specs: Sequence[str]) -> list[GridAxis]:
    """Read ``section.key=v1,v2,...`` items; keys are validated later, with the recipe, like ``--set``."""
    from pace_cli.recipe.schema import _parse_value

    axes: list[GridAxis] = []
    for spec in specs:
        if "=" not in spec:
            raise PaceError(f"bad --grid {spec!r}: expected section.key=v1,v2,..., e.g. pace.lambda=0.1,0.5,1")
        key, _, raw = spec.partition("=")
        key = key.strip()
        texts = tuple(_split_top_level(raw))
        if not raw.strip() or any(not t for t in texts):
            raise PaceError(f"bad --grid {spec!r}: empty value; list values separated by commas, e.g. {key}=0.1,0.5")
        if key in SEED_KEYS:
            raise PaceError(f"bad --grid {spec!r}: seeds are swept with --seeds (it sets train.seed and data.seed)")
        if any(axis.key == key for axis in axes):
            raise PaceError(f"bad --grid {spec!r}: {key} is gridded twice; give all its values in one --grid")
        values = tuple(_parse_value(t) for t in texts)
        for i, value in enumerate(values):
            if value in values[:i]:
                raise PaceError(f"bad --grid {spec!r}: value {texts[i]} is listed twice")
        axes.append(GridAxis(key, values, texts))
    return axes


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise PaceError(f"bad --seeds {text!r}: expected whole numbers separated by commas, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise PaceError(f"bad --seeds {text!r}: a seed is listed twice")
    return seeds


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """``pace.lambda`` -> ``lambda``; keys that would share a short name keep their section."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: (short if last.count(short) == 1 else key.replace(".", "-")) for key, short in zip(keys, last)}


def _folder_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "_"


def grid_settings(axes: Sequence[GridAxis]) -> list[Setting]:
    """Every combination, the first axis varying slowest; no axes gives one setting, ``base``."""
    short = _short_names([axis.key for axis in axes])
    settings = []
    for index, combo in enumerate(itertools.product(*[range(len(axis.values)) for axis in axes])):
        chosen = [(axis, i) for axis, i in zip(axes, combo)]
        name = "_".join(f"{_folder_safe(short[axis.key])}-{_folder_safe(axis.texts[i])}" for axis, i in chosen)
        settings.append(Setting(
            index=index, name=name or "base", values={axis.key: axis.values[i] for axis, i in chosen},
            overrides=tuple(f"{axis.key}={axis.texts[i]}" for axis, i in chosen)))
    names = [s.name for s in settings]
    clash = next((name for name in names if names.count(name) > 1), None)
    if clash:
        raise PaceError(f"two grid settings would share the run folder name '{clash}'; write the values of "
                        "--grid so they differ in letters, digits, '.', '+' or '-'")
    return settings


# ---------------------------------------------------------------- the plan


@dataclass
class PlannedRun:
    phase: str  # "grid" (train split, scored on val) or "final" (train + val, scored on test)
    setting: Setting
    seed: int
    recipe: Recipe
    run_dir: Path


@dataclass
class SweepPlan:
    recipe_path: Path
    overrides: tuple[str, ...]
    axes: list[GridAxis]
    seeds: list[int]
    settings: list[Setting]
    runs: list[PlannedRun]  # the grid runs; the final runs depend on their outcome
    sweep_dir: Path
    final: bool


def _run_recipe(recipe_path: Path, overrides: Sequence[str], setting: Setting, seed: int, run_dir: Path,
                phase_overrides: Sequence[str] = ()) -> Recipe:
    items = [*overrides, *setting.overrides, f"train.seed={seed}", f"data.seed={seed}",
             *phase_overrides, f"output.dir={json.dumps(str(run_dir))}"]
    return load_recipe(recipe_path, items)


def _reason(error: PaceError) -> str:
    """The part of a recipe error after its 'invalid recipe ...:' or 'bad --set ...:' prefix."""
    text = str(error)
    return text.split(": ", 1)[1] if text.startswith(("invalid recipe ", "bad --set ")) and ": " in text else text


def _validate_axes(recipe_path: Path, overrides: Sequence[str], axes: Sequence[GridAxis]) -> None:
    """Each grid value on its own, exactly as ``--set`` would take it: a typo names its --grid."""
    for axis in axes:
        for text in axis.texts:
            try:
                load_recipe(recipe_path, [*overrides, f"{axis.key}={text}"])
            except PaceError as error:
                raise PaceError(f"bad --grid {axis.key}={text}: {_reason(error)}") from None


def plan_sweep(recipe_path: str | Path, sweep_dir: str | Path, *, grid: Sequence[str] = (),
               seeds: Sequence[int] = (0,), overrides: Sequence[str] = (), final: bool = False) -> SweepPlan:
    """Parse the grid and validate every run's recipe up front, so a typo fails before any training."""
    recipe_path, sweep_dir = Path(recipe_path), Path(sweep_dir)
    overrides = tuple(overrides)
    axes = parse_grid(grid)
    if not seeds:
        raise PaceError("no seeds: give --seeds, e.g. --seeds 0,1,2")
    load_recipe(recipe_path, overrides)  # the recipe's own problems first, reported as `pace train` would
    _validate_axes(recipe_path, overrides, axes)
    settings = grid_settings(axes)
    runs = []
    for setting in settings:
        for seed in seeds:
            run_dir = sweep_dir / GRID_FOLDER / f"{setting.name}_seed-{seed}"
            runs.append(PlannedRun("grid", setting, seed, _run_recipe(recipe_path, overrides, setting, seed, run_dir),
                                   run_dir))
    data = runs[0].recipe.data
    if not data.val_split:
        raise PaceError(f"recipe '{recipe_path}' has no [data] val_split; a sweep ranks settings on validation, "
                        "set val_split (e.g. \"val\")")
    if final:
        if not data.trainval_split:
            raise PaceError(f"--final retrains on train + val but recipe '{recipe_path}' has no [data] trainval_split; "
                            "set it, e.g. trainval_split = \"trainval\" (digits, fashion-mnist) or \"train800val200\" (vtab1k)")
        if not data.test_split:
            raise PaceError(f"--final scores on the test split but recipe '{recipe_path}' has no [data] test_split; set it")
        # Validate a final recipe too: the phase overrides can fail (e.g. a bad split name).
        _final_recipe(recipe_path, overrides, settings[0], seeds[0], sweep_dir, runs[0].recipe)
    return SweepPlan(recipe_path, overrides, axes, list(seeds), settings, runs, sweep_dir, final)


def _final_recipe(recipe_path: Path, overrides: Sequence[str], setting: Setting, seed: int, sweep_dir: Path,
                  grid_recipe: Recipe) -> PlannedRun:
    run_dir = sweep_dir / FINAL_FOLDER / f"{setting.name}_seed-{seed}"
    data = grid_recipe.data
    phase = [f"data.train_split={json.dumps(data.trainval_split)}", 'data.val_split=""']
    return PlannedRun("final", setting, seed, _run_recipe(recipe_path, overrides, setting, seed, run_dir, phase), run_dir)


# ---------------------------------------------------------------- outcomes and ranking


@dataclass
class RunOutcome:
    phase: str
    setting: str
    values: dict[str, Any]
    seed: int
    run_dir: str
    status: str  # trained, resumed, skipped (already complete)
    val_top1: float | None = None
    val_loss: float | None = None
    test_top1: float | None = None
    test_loss: float | None = None
    seconds: float = 0.0


@dataclass
class SettingScore:
    setting: str
    values: dict[str, Any]
    index: int
    seeds: int
    val_top1_mean: float
    val_top1_std: float
    val_loss_mean: float
    rank: int = 0


def rank_settings(settings: Sequence[Setting], outcomes: Sequence[RunOutcome]) -> list[SettingScore]:
    """Best first: higher mean validation top-1 over seeds, then lower mean validation loss, then grid order.

    Top-1 on a few hundred images ties often; the loss says which setting is more confident in
    the right answers. Means are compared after rounding to 1e-9 so that float summation order
    cannot break a real tie. Settings without a finished grid run are left out.
    """
    scores = []
    for setting in settings:
        done = [o for o in outcomes if o.phase == "grid" and o.setting == setting.name and o.val_top1 is not None]
        if not done:
            continue
        top1 = [o.val_top1 for o in done]
        losses = [o.val_loss for o in done if o.val_loss is not None]
        mean = sum(top1) / len(top1)
        std = math.sqrt(sum((t - mean) ** 2 for t in top1) / (len(top1) - 1)) if len(top1) > 1 else 0.0
        scores.append(SettingScore(setting.name, dict(setting.values), setting.index, len(done), mean, std,
                                   sum(losses) / len(losses) if losses else math.inf))
    scores.sort(key=lambda s: (-round(s.val_top1_mean, 9), round(s.val_loss_mean, 9), s.index))
    for rank, score in enumerate(scores, start=1):
        score.rank = rank
    return scores


@dataclass
class SweepResult:
    sweep_dir: Path
    recipe: str
    axes: list[GridAxis]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    runs: list[RunOutcome] = field(default_factory=list)
    ranking: list[SettingScore] = field(default_factory=list)
    complete: bool = False

    @property
    def best(self) -> SettingScore | None:
        return self.ranking[0] if self.ranking else None

    @property
    def final_runs(self) -> list[RunOutcome]:
        return [o for o in self.runs if o.phase == "final"]

    def to_dict(self) -> dict[str, Any]:
        tests = [o.test_top1 for o in self.final_runs if o.test_top1 is not None]
        return {
            "sweep_dir": str(self.sweep_dir), "recipe": self.recipe, "complete": self.complete,
            "overrides": self.overrides, "grid": {axis.key: list(axis.values) for axis in self.axes},
            "seeds": self.seeds,
            "ranking": [asdict(score) for score in self.ranking],
            "best": asdict(self.best) if self.best else None,
            "final_test_top1_mean": sum(tests) / len(tests) if tests else None,
            "runs": [asdict(outcome) for outcome in self.runs],
        }


CSV_COLUMNS = ("phase", "setting", "seed", "status", "val_top1", "val_loss", "test_top1", "test_loss",
               "seconds", "run_dir")


def write_tables(result: SweepResult) -> None:
    """sweep.json (everything) and sweep.csv (one row per run, one column per grid key), atomically."""
    if not _is_writer():
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


# ---------------------------------------------------------------- running


class SweepLogger:
    """Receives progress; the CLI renders it. The default does nothing."""

    def start(self, *, runs: int, settings: int, seeds: int) -> None: ...

    def run_start(self, run: PlannedRun, number: int, total: int) -> None: ...

    def train_logger(self, run: PlannedRun):
        """The TrainLogger for one run (None: silent)."""
        return None

    def run_end(self, outcome: RunOutcome) -> None: ...


def _last_validation(metrics_path: Path) -> tuple[float | None, float | None]:
    top1 = loss = None
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # blank, or a record torn by a crash or a full disk
            if isinstance(record, dict):
                if record.get("type") == "epoch" and "val_top1" in record:
                    top1, loss = record["val_top1"], record.get("val_loss")
    return top1, loss


def _saved_recipe_differs(run: PlannedRun) -> list[str]:


    path = run.run_dir / RECIPE_FILE
    if not path.is_file():
        return ["no recipe.toml"]
    saved = recipe_to_dict(parse_recipe(path.read_text(), source=str(path)))
    now = recipe_to_dict(run.recipe)
    return [f"[{section}] {key}" for section in now for key in now[section]
            if (section, key) not in _RESULT_NEUTRAL_KEYS and saved.get(section, {}).get(key) != now[section][key]]


def _execute(run: PlannedRun, *, resume: bool, logger: SweepLogger, stop: threading.Event | None) -> RunOutcome:

    from pace_cli.training.loop import train

    adapter = run.run_dir / ADAPTER_FILE
    outcome = RunOutcome(run.phase, run.setting.name, dict(run.setting.values), run.seed, str(run.run_dir), "skipped")
    started = time.perf_counter()
    if adapter.is_file():
        differences = _saved_recipe_differs(run)
        if differences:
            raise PaceError(f"'{run.run_dir}' holds a finished run of another recipe ({', '.join(differences[:3])} "
                            "differ); sweep into a new folder, or delete that run to redo it")
    else:
        interrupted = (run.run_dir / CHECKPOINT_FILE).is_file()
        if interrupted and not resume:
            raise PaceError(f"run '{run.run_dir}' was interrupted; add --resume to continue it from its checkpoint "
                            "(or delete the folder to start it over)")
        # A folder left without a checkpoint (stopped before its first save) is simply started over.
        train(run.recipe, output_dir=run.run_dir, logger=logger.train_logger(run), resume=interrupted, stop=stop)
        outcome.status = "resumed" if interrupted else "trained"
    if run.phase == "grid":
        outcome.val_top1, outcome.val_loss = _last_validation(run.run_dir / METRICS_FILE)
    else:
        outcome.test_top1, outcome.test_loss = _test_score(run, adapter)
    outcome.seconds = time.perf_counter() - started
    return outcome


def _test_score(run: PlannedRun, adapter: Path) -> tuple[float, float]:
    """Test top-1 of a final run, kept in test.json beside the adapter so a rerun does not re-evaluate."""
    from pace_cli.evaluation import evaluate_recipe

    path = run.run_dir / TEST_FILE
    if path.is_file() and path.stat().st_mtime >= adapter.stat().st_mtime:
        saved = json.loads(path.read_text())
        return saved["top1"], saved["loss"]
    result = evaluate_recipe(run.recipe, adapter=adapter, split=run.recipe.data.test_split)
    if _is_writer():
        files.write_text_atomic(path, json.dumps({k: v for k, v in result.to_dict().items() if k != "per_class"},
                                              indent=2) + "\n")
    return result.top1, result.loss


def run_sweep(plan: SweepPlan, *, resume: bool = False, logger: SweepLogger | None = None,
              stop: threading.Event | None = None) -> SweepResult:
    """Train every grid run (skipping finished ones), rank the settings, then the final runs if asked.

    sweep.json and sweep.csv are rewritten after every run, so an interrupted sweep leaves a
    correct table of what finished. Ctrl-C stops the current run at its next step with its
    checkpoint saved; the sweep then ends with :class:`~pace_cli.training.loop.TrainingInterrupted`.
    The writer holds the sweep folder's lock throughout, so a second sweep into it is refused.
    """
    from pace_cli.files.lock import output_lock

    with output_lock(plan.sweep_dir) if _is_writer() else contextlib.nullcontext():
        return _run_sweep(plan, resume=resume, logger=logger, stop=stop)


def _run_sweep(plan: SweepPlan, *, resume: bool, logger: SweepLogger | None,
               stop: threading.Event | None) -> SweepResult:
    from pace_cli.training.stop import StopRequest, TrainingInterrupted

    logger = logger or SweepLogger()
    # One event for the whole sweep: a Ctrl-C that lands while a run evaluates its last epoch
    # lets that run finish, and must still stop the sweep before the next run starts.
    stop = StopRequest.of(stop)
    result = SweepResult(plan.sweep_dir, str(plan.recipe_path), plan.axes, plan.seeds, list(plan.overrides))
    total = len(plan.runs) + (len(plan.seeds) if plan.final else 0)
    logger.start(runs=total, settings=len(plan.settings), seeds=len(plan.seeds))

    def execute(run: PlannedRun, number: int) -> None:
        if stop.requested:
            raise TrainingInterrupted(
                f"sweep interrupted after {len(result.runs)} runs (before '{run.run_dir}'); "
                "continue with the same command plus --resume", exit_code=stop.exit_code())
        logger.run_start(run, number, total)
        try:
            outcome = _execute(run, resume=resume, logger=logger, stop=stop)
        except TrainingInterrupted as stopped:
            write_tables(result)
            raise TrainingInterrupted(
                f"sweep interrupted in run '{run.run_dir}' (its checkpoint is saved; {len(result.runs)} runs done); "
                "continue with the same command plus --resume", exit_code=stopped.exit_code) from None
        result.runs.append(outcome)
        result.ranking = rank_settings(plan.settings, result.runs)
        write_tables(result)
        logger.run_end(outcome)

    try:
        for number, run in enumerate(plan.runs, start=1):
            execute(run, number)
        if plan.final and result.best is not None:
            best = next(s for s in plan.settings if s.name == result.best.setting)
            for offset, seed in enumerate(plan.seeds, start=1):
                grid_recipe = next(r.recipe for r in plan.runs if r.setting is best and r.seed == seed)
                execute(_final_recipe(plan.recipe_path, plan.overrides, best, seed, plan.sweep_dir, grid_recipe),
                        len(plan.runs) + offset)
        result.complete = True
    finally:
        write_tables(result)
    return result
