"""--scheduler asha's decision between stages, on run folders written here (no Ray, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import tiny_recipe_text

from pace_cli.errors import PaceError
from pace_cli.sweep import plan_sweep
from pace_cli.sweep.backends.asha import Halving, halve, stages

RECIPE = tiny_recipe_text(data={"batch_size": 16, "synthetic_classes": 4, "synthetic_size": 32},
                          train={"epochs": 12, "eval_every": 2})


def _plan(tmp_path: Path, grid=("pace.lambda=0.1,0.2,0.5,1",)):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    return plan_sweep(recipe, tmp_path / "sweep", grid=list(grid), seeds=[0, 1])


def _write(run, figures: dict[int, tuple[float, float]], finished: bool = False) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"type": "epoch", "epoch": e, "step": e, "val_top1": t, "val_loss": l})
             for e, (t, l) in figures.items()]
    (run.run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if finished:
        (run.run_dir / "adapter.safetensors").write_bytes(b"")


def test_rungs_are_grace_times_powers_of_r_below_the_last_epoch(tmp_path):
    recipe = _plan(tmp_path).runs[0].recipe
    assert Halving(2, 2).rungs(recipe) == [2, 4, 8]
    assert Halving(None, 3).rungs(recipe) == [2, 6]  # grace: eval_every
    assert stages(Halving(4, 3), _plan(tmp_path).runs) == [4]
    with pytest.raises(PaceError, match="--reduction-factor 1 must be >= 2"):
        Halving(2, 1)


def test_halving_keeps_the_top_half_by_seed_mean_then_loss_and_never_stops_a_complete_setting(tmp_path):
    plan = _plan(tmp_path)
    top1 = {  # setting -> (seed 0, seed 1) top-1 at epoch 2; means 0.5, 0.6, 0.5, 0.3
        "lambda-0.1": (0.4, 0.6), "lambda-0.2": (0.7, 0.5), "lambda-0.5": (0.5, 0.5), "lambda-1": (0.2, 0.4)}
    loss = {"lambda-0.1": 1.0, "lambda-0.2": 2.0, "lambda-0.5": 0.9, "lambda-1": 3.0}
    for run in plan.runs:
        _write(run, {2: (top1[run.setting.name][run.seed], loss[run.setting.name])})
    live = {s.name for s in plan.settings}
    # R = 2 keeps 2 of 4: lambda-0.2 (0.6), then of the two at 0.5 the lower loss, lambda-0.5
    stopped = halve(2, plan.runs, Halving(2, 2), live)
    assert sorted(stopped) == ["lambda-0.1", "lambda-1"]
    assert stopped["lambda-1"] == (pytest.approx(0.3), pytest.approx(0.5))
    # a setting whose runs all finished earlier is ranked but not stopped
    for run in plan.runs:
        if run.setting.name == "lambda-1":
            _write(run, {2: (top1["lambda-1"][run.seed], 3.0)}, finished=True)
    assert sorted(halve(2, plan.runs, Halving(2, 2), live)) == ["lambda-0.1"]
    # R = 3 keeps max(1, 4 // 3) = 1; a setting already out (not live) takes no place
    assert sorted(halve(2, plan.runs, Halving(2, 3), live - {"lambda-0.2"})) == ["lambda-0.1"]
    assert halve(4, plan.runs, Halving(2, 2), live) == {}  # no figures at epoch 4: nothing judged


# The Ray backend's stages, with the Tune runs replaced by a fake that "trains" a run by writing its
# metrics (each setting's top-1 is fixed: lambda's index / 10 + epoch / 100), so the stage logic is
# tested without Ray's start-up: which runs each stage trains, and that a rerun after an interruption
# takes the decisions of an uninterrupted sweep.
LAMBDAS = "0.01,0.02,0.05,0.1,0.2,0.5,1,2,5"


class FakeStages:
    def __init__(self, interrupt_at=-1):
        self.stages, self.interrupt_at = [], interrupt_at

    def __call__(self, ray, runs, context, stop_at=None):
        from pace_cli.sweep.rank import RunOutcome
        from pace_cli.training.stop import TrainingInterrupted

        self.stages.append((stop_at, sorted(run.setting.name for run in runs)))
        if stop_at == self.interrupt_at:
            raise TrainingInterrupted("interrupted", exit_code=130)
        for run in runs:
            last = stop_at or run.recipe.train.epochs
            _write(run, {e: (run.setting.index / 10 + e / 100, 1.0) for e in range(2, last + 1, 2)},
                   finished=stop_at is None)
            if stop_at is None:
                yield RunOutcome.of(run, "trained")


def _stage_sweep(tmp_path, fake):
    pytest.importorskip("ray")
    from pace_cli.sweep.backends.base import RunContext, SweepLogger
    from pace_cli.sweep.backends.ray import RayBackend
    from pace_cli.training.stop import StopRequest

    plan = plan_sweep(_recipe(tmp_path), tmp_path / "sweep", grid=[f"pace.lambda={LAMBDAS}"], seeds=[0])
    backend = RayBackend(scheduler="asha", grace_epochs=2, reduction_factor=3)
    backend._trials = fake
    todo = [run for run in plan.runs if not (run.run_dir / "stopped.json").exists()
            and not (run.run_dir / "adapter.safetensors").exists()]
    context = RunContext(resume=True, logger=SweepLogger(), stop=StopRequest(), total=len(plan.runs), finished=[])
    return plan, list(backend._halving(None, plan.runs, todo, context))


def _recipe(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    return recipe


def test_stages_train_survivors_only_and_a_rerun_after_an_interruption_decides_the_same(tmp_path):
    names = [f"lambda-{v}" for v in LAMBDAS.split(",")]  # rungs 2 and 6 of 12 epochs; R = 3
    fake = FakeStages()
    plan, outcomes = _stage_sweep(tmp_path / "whole", fake)
    assert fake.stages == [(2, sorted(names)), (6, sorted(names[-3:])), (None, [names[-1]])]
    stopped = {o.setting for o in outcomes if o.status == "stopped"}
    assert stopped == set(names[:-1]) and [o.setting for o in outcomes if o.status == "trained"] == [names[-1]]
    epochs = {o.setting: json.loads((Path(o.run_dir) / "stopped.json").read_text())["epoch"]
              for o in outcomes if o.status == "stopped"}
    assert epochs == {**{n: 2 for n in names[:-3]}, **{n: 6 for n in names[-3:-1]}}

    with pytest.raises(Exception, match="interrupted"):  # Ctrl-C in the second stage
        _stage_sweep(tmp_path / "again", FakeStages(interrupt_at=6))
    fake = FakeStages()
    _, rerun = _stage_sweep(tmp_path / "again", fake)
    assert fake.stages == [(6, sorted(names[-3:])), (None, [names[-1]])]  # nothing trained twice
    assert {o.setting for o in rerun if o.status == "stopped"} == set(names[-3:-1])  # not one more
    assert [o.setting for o in rerun if o.status == "trained"] == [names[-1]]
