"""Planning a sweep: the grid from ``--grid``, its settings, and every run's recipe, validated up front.

What ``--final`` does depends on the recipe's data (:func:`final_job`): with ``[data] shots``
(every ``fewshot`` recipe has them) the few-shot protocol keeps the k training images and uses
validation only to choose, so the chosen setting's grid runs are the final ones and are scored on
test; otherwise the setting is retrained on ``[data] trainval_split`` (VTAB-1K's protocol).

A seed sets both ``train.seed`` (initialisation, noise, shuffling) and ``data.seed`` (which k
images a few-shot recipe draws): every setting then sees the same images for the same seed, so
settings are compared on paired data, and the spread over seeds includes the choice of images,
as in the few-shot protocol.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pace_cli.errors import PaceError
from pace_cli.files.layout import FINAL_FOLDER, GRID_FOLDER
from pace_cli.recipe import DataSection, Recipe, load_recipe
from pace_cli.recipe.log import sweep_log_overrides

SEED_KEYS = ("train.seed", "data.seed")


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
    from pace_cli.recipe import parse_override_value

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
        values = tuple(parse_override_value(t) for t in texts)
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


# A planned run's job: "train" trains run_dir (or reuses it when finished) and scores it;
# "score" scores the finished adapter in run_dir on the test split and trains nothing.
JOBS = ("train", "score")


@dataclass
class PlannedRun:
    phase: str  # "grid" (train split, scored on val) or "final" (scored on test)
    setting: Setting
    seed: int
    recipe: Recipe
    run_dir: Path
    job: str = "train"  # one of JOBS

    @property
    def protocol(self) -> str:
        """What the run does to get its score, as the sweep's tables say it."""
        data = self.recipe.data
        if self.phase == "grid":
            return f"trained on {data.train_split}, scored on {data.val_split}"
        if self.job == "score":
            return f"scored on {data.test_split}, not retrained (the grid run's adapter)"
        return f"retrained on {data.train_split}, scored on {data.test_split}"


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
    final_job: str | None = None  # with final: "train" (retrain on trainval_split) or "score" (see final_job)
    final_protocol: str | None = None  # with final: what the final runs do, as the tables say it
    notes: list[str] = field(default_factory=list)  # settings of the recipe this sweep does not use (warnings)


def _run_recipe(recipe_path: Path, overrides: Sequence[str], setting: Setting, seed: int, run_dir: Path,
                phase_overrides: Sequence[str] = ()) -> Recipe:
    items = [*overrides, *setting.overrides, f"train.seed={seed}", f"data.seed={seed}",
             *phase_overrides, f"output.dir={json.dumps(str(run_dir))}"]
    recipe = load_recipe(recipe_path, items)
    tracked = sweep_log_overrides(recipe.log, run_dir.parent.parent, run_dir)  # the trackers' names for a sweep
    return load_recipe(recipe_path, [*items, *tracked]) if tracked else recipe


def _validate_axes(recipe_path: Path, overrides: Sequence[str], axes: Sequence[GridAxis]) -> None:
    """Each grid value on its own, exactly as ``--set`` would take it: a typo names its --grid."""
    for axis in axes:
        for text in axis.texts:
            try:
                load_recipe(recipe_path, [*overrides, f"{axis.key}={text}"])
            except PaceError as error:
                raise _grid_error(error, f"bad --grid {axis.key}={text}") from None


def _grid_error(error: PaceError, where: str) -> PaceError:
    """A recipe error about one grid value, told as that --grid's: its details under ``where``, which
    replaces the 'invalid recipe ...' or 'bad --set ...' the recipe loader put there."""
    return error.with_parts(where=where)


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
    job = protocol = None
    notes = []
    if final:
        if not data.test_split:
            raise PaceError(f"--final scores on the test split but recipe '{recipe_path}' has no [data] test_split; set it")
        job = final_job(data, recipe_path)
        # Plan one final run now: its recipe can fail (e.g. a bad trainval_split name), and it says the protocol.
        example = _final_run(recipe_path, overrides, settings[0], seeds[0], sweep_dir, runs[0], job)
        protocol = example.protocol
        if job == "score" and data.trainval_split:
            notes.append(f"[data] trainval_split = {data.trainval_split!r} set but not used: under shots, --final "
                         "scores the grid runs' adapters on test instead of retraining (it is read only when shots "
                         "is unset)")
    return SweepPlan(recipe_path, overrides, axes, list(seeds), settings, runs, sweep_dir, final, job, protocol, notes)


def final_job(data: DataSection, recipe_path: Path | str = "the recipe") -> str:
    """How ``--final`` gets the chosen setting's test scores from this ``[data]``: one of :data:`JOBS`.

    ``"score"`` under ``shots`` (every ``fewshot`` recipe sets them): the few-shot protocol trains on
    the k images and uses validation only to choose, so the grid runs' adapters are the final ones.
    Retraining on train + val would draw k other images from the larger pool (or, for NOAH's lists,
    has no such split). ``"train"`` with a ``trainval_split`` and no shots: retrain on it.
    """
    if data.shots is not None:
        return "score"
    if data.trainval_split:
        return "train"
    raise PaceError(f"--final needs [data] trainval_split to retrain on and recipe '{recipe_path}' has none; set "
                    "trainval_split (e.g. \"train800val200\" for vtab1k, \"trainval\" for digits or fashion-mnist), "
                    "or shots = k to score the chosen setting's k-shot grid runs on test instead")


def _final_run(recipe_path: Path, overrides: Sequence[str], setting: Setting, seed: int, sweep_dir: Path,
               grid_run: PlannedRun, job: str) -> PlannedRun:
    if job == "score":  # the grid run's own folder: its adapter is scored, nothing new is trained
        return PlannedRun("final", setting, seed, grid_run.recipe, grid_run.run_dir, job="score")
    run_dir = sweep_dir / FINAL_FOLDER / f"{setting.name}_seed-{seed}"
    data = grid_run.recipe.data
    phase = [f"data.train_split={json.dumps(data.trainval_split)}", 'data.val_split=""']
    if grid_run.recipe.train.val_grad_norm:  # it measures on val, which a final run does not have
        phase.append("train.val_grad_norm=false")
    return PlannedRun("final", setting, seed, _run_recipe(recipe_path, overrides, setting, seed, run_dir, phase), run_dir)


def final_runs(plan: SweepPlan, setting_name: str) -> list[PlannedRun]:
    """The best setting's final runs, once per seed, in seed order: retrained on train + val, or its
    grid runs to score on test (see :func:`final_job`)."""
    best = next(s for s in plan.settings if s.name == setting_name)
    runs = []
    for seed in plan.seeds:
        grid_run = next(r for r in plan.runs if r.setting is best and r.seed == seed)
        runs.append(_final_run(plan.recipe_path, plan.overrides, best, seed, plan.sweep_dir, grid_run, plan.final_job))
    return runs
