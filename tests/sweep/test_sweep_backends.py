"""A sweep backend is one module plus one registry row; ranking and tables do not depend on which one ran."""

import json

import pytest
import reversed_backend
from helpers import tiny_recipe_text

from pace_cli.errors import PaceError
from pace_cli.sweep import plan_sweep, run_sweep
from pace_cli.sweep.backends import BACKENDS

RECIPE = tiny_recipe_text(
    data={"batch_size": 16, "synthetic_classes": 4, "synthetic_size": 32},
    adapter={"rank": 2}, optim={"lr": 0.01, "warmup_epochs": 0}, train={"epochs": 1, "log_every": 1},
)


def _sweep(tmp_path, name, backend):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    plan = plan_sweep(recipe, tmp_path / name, grid=["pace.lambda=0.1,1"], seeds=[0])
    return run_sweep(plan, backend=backend)


def test_a_registered_backend_runs_the_sweep_with_the_same_ranking(tmp_path, monkeypatch):
    monkeypatch.setitem(BACKENDS, "reversed", "reversed_backend:ReversedBackend")
    plain = _sweep(tmp_path, "plain", "sequential")
    toy = _sweep(tmp_path, "toy", "reversed")
    assert [o.setting for o in toy.runs] == ["lambda-1", "lambda-0.1"]  # finished in its own order
    assert [o.setting for o in plain.runs] == ["lambda-0.1", "lambda-1"]
    assert [s.setting for s in toy.ranking] == [s.setting for s in plain.ranking]
    assert [s.val_top1_mean for s in toy.ranking] == [s.val_top1_mean for s in plain.ranking]
    table = json.loads((tmp_path / "toy" / "sweep.json").read_text())
    assert table["best"] == json.loads((tmp_path / "plain" / "sweep.json").read_text())["best"]


def test_a_backend_object_is_taken_as_it_is(tmp_path):
    backend = reversed_backend.ReversedBackend()
    _sweep(tmp_path, "obj", backend)
    assert backend.seen == ["lambda-0.1_seed-0", "lambda-1_seed-0"]


def test_an_unknown_backend_is_one_line_before_anything_runs(tmp_path):
    with pytest.raises(PaceError, match="unknown sweep backend 'dask'; use one of: sequential, ray"):
        _sweep(tmp_path, "none", "dask")
    assert not (tmp_path / "none" / "sweep.json").exists()


def test_the_final_scoring_reaches_the_backend_as_planned_runs(tmp_path):
    """Under shots, --final hands the backend one "score" run per seed (the grid runs' folders), as it hands training runs."""

    class Recording:
        def __init__(self):
            self.batches = []

        def run(self, runs, context):
            self.batches.append([(run.phase, run.job, run.run_dir.name) for run in runs])
            yield from reversed_backend.SequentialBackend().run(runs, context)

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.replace("synthetic_size = 32", "synthetic_size = 32\nshots = 4"))
    backend = Recording()
    result = run_sweep(plan_sweep(recipe, tmp_path / "s", grid=["pace.lambda=0.1,1"], seeds=[0, 1], final=True),
                       backend=backend)
    best = result.best.setting
    assert backend.batches[1] == [("final", "score", f"{best}_seed-0"), ("final", "score", f"{best}_seed-1")]
    assert {job for _, job, _ in backend.batches[0]} == {"train"}
    assert [o.status for o in result.final_runs] == ["scored", "scored"]
