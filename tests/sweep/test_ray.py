"""`pace sweep --backend ray` on a real local Ray cluster with logical GPUs (issue 19).

One cluster for the module (Ray's start-up costs seconds): 4 logical CPUs and 2 logical GPUs,
so four one-core trials at --gpus-per-trial 0.5 run at once, two on each GPU. The reference
is the sequential backend's sweep of the same grid at one torch thread, as each trial runs.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_recipe_text
from safetensors.torch import load_file

from pace_cli.errors import PaceError
from pace_cli.sweep import plan_sweep, run_sweep
from pace_cli.training.stop import TrainingInterrupted

ray = pytest.importorskip("ray")

from pace_cli.sweep.backends.ray import RayBackend, refuse_unshared_folder  # noqa: E402 - needs ray

# Under shots, --final scores the grid runs' adapters on test: score trials follow the grid trials.
# 16 training images at batch 16: one step an epoch, a checkpoint at each epoch's end.
RECIPE = tiny_recipe_text(
    data={"batch_size": 16, "synthetic_classes": 4, "synthetic_size": 32, "shots": 4},
    adapter={"rank": 2}, optim={"lr": 0.01, "warmup_epochs": 0}, train={"epochs": 3, "log_every": 1},
)
GRID = ["pace.lambda=0.1,1"]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def cluster():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hooks below run in the workers
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sequential backend's sweep (one torch thread, as in a one-core trial)."""
    folder = tmp_path_factory.mktemp("sequential")
    recipe = folder / "recipe.toml"
    recipe.write_text(RECIPE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_sweep(plan_sweep(recipe, folder / "sweep", grid=GRID, seeds=SEEDS, final=True))
    finally:
        torch.set_num_threads(threads)
    return folder / "sweep", result


def _plan(tmp_path, name="sweep", **options):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    return plan_sweep(recipe, tmp_path / name, grid=GRID, seeds=SEEDS, **options)


def _adapters(sweep: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {run.name: load_file(run / "adapter.safetensors") for run in sorted((sweep / "runs").iterdir())}


def _same_adapters(ours: Path, theirs: Path) -> None:
    mine, reference = _adapters(ours), _adapters(theirs)
    assert mine.keys() == reference.keys()
    for run, tensors in reference.items():
        for name, tensor in tensors.items():
            assert torch.equal(mine[run][name], tensor), f"{run}: {name} differs"


def _table(sweep: Path) -> dict:
    """sweep.json without what differs by backend: where the sweep folder is, timings, finishing order."""
    table = json.loads((sweep / "sweep.json").read_text())
    for run in table["runs"]:
        run["run_dir"] = Path(run["run_dir"]).name
        del run["seconds"]
    table["runs"].sort(key=lambda run: (run["phase"], run["run_dir"]))
    del table["sweep_dir"], table["recipe"]
    return table


def test_four_trials_two_per_logical_gpu_give_the_sequential_sweep(cluster, reference, tmp_path):
    backend = RayBackend(gpus_per_trial=0.5, cpus_per_trial=1)
    result = run_sweep(_plan(tmp_path, final=True), backend=backend)
    ref_dir, ref = reference
    _same_adapters(tmp_path / "sweep", ref_dir)
    assert _table(tmp_path / "sweep") == _table(ref_dir)
    assert [s.setting for s in result.ranking] == [s.setting for s in ref.ranking]
    assert [o.status for o in result.final_runs] == ["scored", "scored"]
    grid = [t for t in backend.trials if "/runs/" in t["run_dir"]][:4]
    assert all(len(t["gpu_ids"]) == 1 and t["cuda_visible_devices"] == t["gpu_ids"][0] for t in grid)
    assert all(t["torch_threads"] == 1 for t in backend.trials)
    by_gpu = {}
    for trial in grid:
        by_gpu.setdefault(trial["gpu_ids"][0], []).append(trial)
    assert sorted(by_gpu) == ["0", "1"] and all(len(trials) == 2 for trials in by_gpu.values())
    for first, second in by_gpu.values():  # the two trials on a GPU ran at the same time
        assert first["started"] < second["ended"] and second["started"] < first["ended"]
    assert (tmp_path / "sweep" / "ray").is_dir()
    # a rerun reuses every finished run in the driver: no trial
    again = RayBackend(gpus_per_trial=0.5)
    rerun = run_sweep(_plan(tmp_path, final=True), backend=again)
    assert {o.status for o in rerun.runs} == {"skipped"} and again.trials == []


def _kill_once_then_fail(run, step):
    """lambda-0.1 seed 0: its worker dies after step 2 once, leaving a lock as if from another host;
    lambda-1 seed 1 raises at every attempt."""
    marker = run.run_dir / "killed-once"
    if run.run_dir.name == "lambda-0.1_seed-0" and step == 2 and not marker.exists():
        marker.write_text("")
        lock = run.run_dir / ".pace-lock"
        record = json.loads(lock.read_text())
        lock.write_text(json.dumps({**record, "host": "another-host"}))
        os._exit(1)
    if run.run_dir.name == "lambda-1_seed-1":
        raise PaceError("injected fault", where="test hook")


def test_a_dead_worker_is_retried_from_its_checkpoint_and_a_second_failure_is_recorded(cluster, reference, tmp_path):
    backend = RayBackend(trial_hook=_kill_once_then_fail)
    result = run_sweep(_plan(tmp_path), backend=backend)
    status = {Path(o.run_dir).name: (o.status, o.reason) for o in result.runs}
    assert status["lambda-0.1_seed-0"] == ("resumed", "")
    assert status["lambda-1_seed-1"] == ("failed", "test hook: injected fault")
    assert status["lambda-0.1_seed-1"][0] == status["lambda-1_seed-0"][0] == "trained"
    resumed = tmp_path / "sweep" / "runs" / "lambda-0.1_seed-0"
    ref_dir, _ = reference
    expected = load_file(ref_dir / "runs" / resumed.name / "adapter.safetensors")
    got = load_file(resumed / "adapter.safetensors")
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    table = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    failed = next(r for r in table["runs"] if r["status"] == "failed")
    assert failed["reason"] == "test hook: injected fault" and failed["val_top1"] is None
    assert next(s for s in result.ranking if s.setting == "lambda-1").seeds == 1  # ranked on what finished


def _slow(run, step):
    sweep = run.run_dir.parents[1]
    (sweep / f"{run.run_dir.name}.stepped").write_text("")
    # A barrier at the first step: on a loaded machine the last worker can start after the first
    # trials have finished, and the stop must find all four mid-run (the cluster runs four at once).
    deadline = time.monotonic() + 120
    while len(list(sweep.glob("*.stepped"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)


def test_a_stop_request_saves_every_trial_and_the_rerun_completes_it(cluster, reference, tmp_path):
    stop = threading.Event()
    runs = tmp_path / "sweep" / "runs"

    def stop_when_all_stepped():
        while not stop.is_set():
            if len(list((tmp_path / "sweep").glob("*.stepped"))) == 4:
                stop.set()
            time.sleep(0.05)

    threading.Thread(target=stop_when_all_stepped, daemon=True).start()
    with pytest.raises(TrainingInterrupted) as stopped:
        run_sweep(_plan(tmp_path), backend=RayBackend(trial_hook=_slow), stop=stop)
    assert stopped.value.exit_code == 130
    folders = [p for p in runs.iterdir() if p.is_dir()]
    assert len(folders) == 4 and all((p / "checkpoint.safetensors").is_file() for p in folders)
    assert not any((p / "adapter.safetensors").exists() for p in folders)
    with pytest.raises(PaceError, match="add --resume"):
        run_sweep(_plan(tmp_path), backend=RayBackend())
    result = run_sweep(_plan(tmp_path), backend=RayBackend(), resume=True)
    assert {o.status for o in result.runs} == {"resumed"}
    _same_adapters(tmp_path / "sweep", reference[0])


@pytest.mark.parametrize("options, message", [
    ({"gpus_per_trial": 3}, "a trial asks for 1 CPU and 3 GPU but no node of the Ray cluster has that much"),
    ({"cpus_per_trial": 64}, "a trial asks for 64 CPU and 0 GPU"),
    ({"address": "127.0.0.1:1"}, "cannot reach the Ray cluster at --address 127.0.0.1:1"),
    ({"address": "nowhere"}, "bad --address 'nowhere'"),
    ({"gpus_per_trial": 1.5}, "--gpus-per-trial 1.5 must be >= 0, and whole when above 1"),
    ({"max_concurrent": 0}, "--max-concurrent 0 must be >= 1"),
])
def test_what_cannot_run_is_refused_before_any_trial(cluster, tmp_path, options, message):
    with pytest.raises(PaceError, match=message.replace("(", r"\(")):
        run_sweep(_plan(tmp_path), backend=RayBackend(**options))
    assert not (tmp_path / "sweep").exists()


def test_under_torchrun_the_ray_backend_is_refused(cluster, tmp_path, monkeypatch):
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(PaceError, match="--backend ray under torchrun"):
        run_sweep(_plan(tmp_path), backend=RayBackend())
    assert not (tmp_path / "sweep").exists()


def test_a_sweep_folder_a_node_cannot_see_is_one_line(cluster, tmp_path):
    refuse_unshared_folder(ray, tmp_path, every_node=True)  # this machine's own node sees it
    with pytest.raises(PaceError, match="the sweep folder '.*elsewhere' is not visible on .*; put the sweep folder"):
        refuse_unshared_folder(ray, tmp_path / "elsewhere", every_node=True)



# --scheduler asha on a grid whose settings differ clearly at the rung: the quick start at 4 epochs,
# evaluated every 2, with a working learning rate and one too small to move (8-shot digits: about
# 53% against 12.5% validation top-1 at epoch 2). Rungs: [2]. Every run trains to epoch 2 and stops
# there; the kept setting's runs then resume from their checkpoints.
QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.toml"
ASHA_OVERRIDES = ["train.epochs=4", "train.eval_every=2", "optim.warmup_epochs=0"]
ASHA_GRID = ["optim.lr=5e-3,1e-7"]


def _asha_plan(folder: Path):
    return plan_sweep(QUICKSTART, folder, grid=ASHA_GRID, seeds=SEEDS, overrides=ASHA_OVERRIDES)


def test_asha_stops_the_setting_that_is_worst_at_the_rung_whole_and_a_rerun_keeps_it_stopped(cluster, tmp_path):
    backend = RayBackend(scheduler="asha")
    result = run_sweep(_asha_plan(tmp_path / "sweep"), backend=backend)
    good, bad = (setting.name for setting in _asha_plan(tmp_path / "sweep").settings)
    runs = {(o.setting, o.seed): o for o in result.runs}
    for seed in SEEDS:
        stopped, kept = runs[(bad, seed)], runs[(good, seed)]
        assert stopped.status == "stopped" and stopped.reason.startswith("stopped by asha at epoch 2")
        folder = Path(stopped.run_dir)
        assert (folder / "stopped.json").is_file() and not (folder / "adapter.safetensors").exists()
        epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line)["type"] == "epoch"]
        assert epochs == [1, 2]  # not one epoch past the rung
        assert stopped.val_top1 is not None and stopped.val_top1 < kept.val_top1 - 0.2
        assert kept.status == "resumed" and (Path(kept.run_dir) / "adapter.safetensors").is_file()
    assert [s.setting for s in result.ranking] == [good] and result.best.setting == good
    table = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert sorted(r["status"] for r in table["runs"] if r["setting"] == bad) == ["stopped", "stopped"]
    assert table["best"]["setting"] == good
    csv_rows = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    assert sum(",stopped," in row for row in csv_rows) == 2
    # the kept setting's first seed, stopped at the rung and resumed: the same adapter as one run straight
    straight = tmp_path / "straight"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_sweep(plan_sweep(QUICKSTART, straight, grid=["optim.lr=5e-3"], seeds=[SEEDS[0]],
                             overrides=ASHA_OVERRIDES))
    finally:
        torch.set_num_threads(threads)
    name = Path(runs[(good, SEEDS[0])].run_dir).name
    paused = load_file(tmp_path / "sweep" / "runs" / name / "adapter.safetensors")
    assert all(torch.equal(paused[k], v) for k, v in load_file(straight / "runs" / name / "adapter.safetensors").items())
    # a rerun, with either backend, --resume or not, trains nothing: the stopped runs stay stopped
    again = RayBackend(scheduler="asha")
    rerun = run_sweep(_asha_plan(tmp_path / "sweep"), backend=again, resume=True)
    assert again.trials == [] and {o.status for o in rerun.runs if o.setting == bad} == {"stopped"}
    sequential = run_sweep(_asha_plan(tmp_path / "sweep"))
    assert {(o.setting, o.status) for o in sequential.runs} == {(good, "skipped"), (bad, "stopped")}
    assert sequential.best.setting == good
