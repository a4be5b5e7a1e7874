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
