"""`pace sweep` with [log] trackers: every trial logs, named by its run folder, grouped by the sweep, one MLflow
experiment created by the driver before any trial; the Ray backend's trials carry the same recipe."""

import json
import os
from pathlib import Path

import pytest
from helpers import tiny_recipe_text

from pace_cli.sweep import plan_sweep, run_sweep
from pace_cli.sweep.backends.sequential import SequentialBackend

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
from mlflow import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

RECIPE = tiny_recipe_text(
    data={"batch_size": 16, "synthetic_classes": 4, "synthetic_size": 32},
    adapter={"rank": 2},
    optim={"lr": 0.01, "warmup_epochs": 0},
    train={"epochs": 1, "log_every": 1},
    log={"trackers": ["tensorboard", "mlflow"]},
)
RUN_NAMES = ["runs/lambda-0.5_seed-0", "runs/lambda-1_seed-0"]


@pytest.fixture(autouse=True)
def _own_environment(monkeypatch):
    saved = dict(os.environ)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _plan(tmp_path, text=RECIPE):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    return plan_sweep(recipe, tmp_path / "lambdas", grid=["pace.lambda=0.5,1"])


def _experiment_runs(sweep: Path):
    client = MlflowClient(tracking_uri=(sweep / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("pace/lambdas")
    return experiment, client.search_runs([experiment.experiment_id]) if experiment else []


def test_every_trial_is_named_by_its_folder_and_filed_with_its_sweep(tmp_path):
    plan = _plan(tmp_path)
    logs = [run.recipe.log for run in plan.runs]
    assert [log.run_name for log in logs] == RUN_NAMES
    assert {log.group for log in logs} == {"lambdas"} and {log.dir for log in logs} == {str(tmp_path / "lambdas")}


def test_a_sweep_logs_every_trial_into_one_experiment_the_driver_made_first(tmp_path):
    made_before_trials = []

    class Watching(SequentialBackend):
        def run(self, runs, context):
            made_before_trials.append(_experiment_runs(tmp_path / "lambdas")[0] is not None)
            yield from super().run(runs, context)

    result = run_sweep(_plan(tmp_path), backend=Watching())
    assert result.complete and made_before_trials == [True]
    experiment, runs = _experiment_runs(tmp_path / "lambdas")
    assert sorted(run.info.run_name for run in runs) == RUN_NAMES
    assert {run.data.params["pace.lambda"] for run in runs} == {"0.5", "1.0"}
    for name in RUN_NAMES:  # one TensorBoard folder over the sweep: each run a row of its hparams table
        accumulator = EventAccumulator(str(tmp_path / "lambdas" / "tensorboard" / name))
        accumulator.Reload()
        val = json.loads((tmp_path / "lambdas" / name / "metrics.jsonl").read_text().splitlines()[-1])["val_top1"]
        assert accumulator.Scalars("epoch/val_top1")[-1].value == pytest.approx(val)


def test_the_ray_backend_trials_log_like_the_sequential_ones(tmp_path):
    ray = pytest.importorskip("ray")
    from pace_cli.sweep.backends.ray import RayBackend

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        result = run_sweep(_plan(tmp_path), backend=RayBackend(cpus_per_trial=1))
    finally:
        ray.shutdown()
    assert result.complete
    _, runs = _experiment_runs(tmp_path / "lambdas")
    assert sorted(run.info.run_name for run in runs) == RUN_NAMES
    assert all(run.info.status == "FINISHED" and "epoch/val_top1" in run.data.metrics for run in runs)
