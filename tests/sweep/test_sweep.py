import csv
import json
from pathlib import Path

import pytest
from helpers import tiny_recipe_text
from typer.testing import CliRunner

from pace_cli.cli import app
from pace_cli.errors import PaceError
from pace_cli.sweep import (
    RunOutcome, SweepLogger, grid_settings, parse_grid, parse_seeds, plan_sweep, rank_settings, run_sweep,
)
from pace_cli.training import StopRequest, TrainingInterrupted, TrainLogger

RECIPE = tiny_recipe_text(
    data={"batch_size": 16, "synthetic_classes": 4, "synthetic_size": 32, "trainval_split": "trainval"},
    adapter={"rank": 2},
    pace={"sigma": 1.0},
    optim={"lr": 0.01, "warmup_epochs": 0},
    train={"epochs": 2, "log_every": 1},
)


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    return path


def statuses(result):
    return [(o.phase, o.setting, o.seed, o.status) for o in result.runs]


def test_grid_is_every_combination_with_readable_names():
    axes = parse_grid(["pace.lambda=0.1,1", "pace.sigma=0.5,1.5", "adapter.targets=[\"qkv\", \"fc1\"],[\"proj\"]"])
    settings = grid_settings(axes)
    assert len(settings) == 8
    assert settings[0].name == "lambda-0.1_sigma-0.5_targets-qkv_fc1"
    assert settings[0].values == {"pace.lambda": 0.1, "pace.sigma": 0.5, "adapter.targets": ["qkv", "fc1"]}
    assert [s.index for s in settings] == list(range(8))
    assert grid_settings([])[0].name == "base"
    # keys whose last part collides keep their section in the name
    names = grid_settings(parse_grid(["optim.lr=0.1", "model.lr=2"]))[0].name
    assert names == "optim-lr-0.1_model-lr-2"


@pytest.mark.parametrize("spec,needle", [
    ("pace.lambda", "expected section.key=v1,v2"),
    ("pace.lambda=", "empty value"),
    ("pace.lambda=0.1,,1", "empty value"),
    ("train.seed=1,2", "--seeds"),
    ("pace.sigma=1,1.0", "listed twice"),
])
def test_bad_grid_specs_are_one_line(spec, needle):
    with pytest.raises(PaceError, match=needle) as info:
        parse_grid([spec])
    assert "\n" not in str(info.value)


def test_grid_keys_are_validated_like_set(recipe, tmp_path):
    with pytest.raises(PaceError) as info:
        plan_sweep(recipe, tmp_path / "sweep", grid=["pace.lamda=0.1,1"])
    message = str(info.value)
    assert message.startswith("bad --grid pace.lamda=0.1: unknown key [pace] lamda") and "\n" not in message
    with pytest.raises(PaceError, match=r"bad --grid pace.sigma=-1: \[pace\] sigma = -1: must be >= 0"):
        plan_sweep(recipe, tmp_path / "sweep", grid=["pace.sigma=1,-1"])
    with pytest.raises(PaceError, match="unknown section"):
        plan_sweep(recipe, tmp_path / "sweep", grid=["pase.sigma=1"])
    assert not (tmp_path / "sweep").exists()  # nothing trained, nothing written


def test_a_grid_values_recipe_error_keeps_its_details_and_advice(recipe, tmp_path, monkeypatch):
    import pace_cli.sweep.plan as plan

    real = plan.load_recipe

    def strict(path, items):  # a recipe error in parts: where it was found, what, and the advice
        if "pace.sigma=9" in items:
            raise PaceError("[pace] sigma = 9: too large", where="bad --set pace.sigma=9", remedy="try 0.1 to 2")
        return real(path, items)
    monkeypatch.setattr(plan, "load_recipe", strict)
    with pytest.raises(PaceError) as info:
        plan_sweep(recipe, tmp_path / "sweep", grid=["pace.sigma=1,9"])
    assert str(info.value) == "bad --grid pace.sigma=9: [pace] sigma = 9: too large; try 0.1 to 2"
    assert info.value.what == "[pace] sigma = 9: too large"


def test_final_needs_a_trainval_split(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(RECIPE.replace('trainval_split = "trainval"\n', ""))
    with pytest.raises(PaceError, match="trainval_split"):
        plan_sweep(path, tmp_path / "sweep", final=True)
    path.write_text(RECIPE.replace('trainval_split = "trainval"', 'trainval_split = "test"'))
    with pytest.raises(PaceError, match="train on the test images"):
        plan_sweep(path, tmp_path / "sweep")


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    with pytest.raises(PaceError, match="whole numbers"):
        parse_seeds("0,x")
    with pytest.raises(PaceError, match="twice"):
        parse_seeds("1,1")


def outcome(setting, seed, top1, loss):
    return RunOutcome("grid", setting, {}, seed, "", "trained", val_top1=top1, val_loss=loss)


def test_ranking_mean_over_seeds_then_loss_then_grid_order():
    settings = grid_settings(parse_grid(["pace.lambda=0.1,0.5,1,2"]))
    a, b, c, d = (s.name for s in settings)
    runs = [
        outcome(a, 0, 0.50, 1.0), outcome(a, 1, 0.70, 1.0),   # mean 0.60, loss 1.0
        outcome(b, 0, 0.80, 0.5), outcome(b, 1, 0.30, 0.5),   # mean 0.55: lower despite its best seed
        outcome(c, 0, 0.61, 0.9), outcome(c, 1, 0.59, 0.9),   # mean 0.60 (float sum differs), loss 0.9: beats a
        outcome(d, 0, 0.60, 0.9), outcome(d, 1, 0.60, 0.9),   # exact tie with c on both: grid order, c first
    ]
    ranking = rank_settings(settings, runs)
    assert [s.setting for s in ranking] == [c, d, a, b]
    assert [s.rank for s in ranking] == [1, 2, 3, 4]
    assert ranking[2].val_top1_mean == pytest.approx(0.60)
    assert ranking[2].val_top1_std == pytest.approx(0.1414, abs=1e-4)
    assert rank_settings(settings, runs[:2])[0].seeds == 2 and len(rank_settings(settings, runs[:2])) == 1


def test_sweep_trains_ranks_skips_and_finals(recipe, tmp_path):
    sweep_dir = tmp_path / "sweep"
    plan = plan_sweep(recipe, sweep_dir, grid=["pace.lambda=0.1,1"], seeds=[0, 1], final=True)
    result = run_sweep(plan)
    assert result.complete
    assert [(p, s, seed) for p, s, seed, _ in statuses(result)] == [
        ("grid", "lambda-0.1", 0), ("grid", "lambda-0.1", 1), ("grid", "lambda-1", 0), ("grid", "lambda-1", 1),
        ("final", result.best.setting, 0), ("final", result.best.setting, 1)]
    assert all(status == "trained" for *_, status in statuses(result))
    for name in ("lambda-0.1_seed-0", "lambda-1_seed-1"):
        run = sweep_dir / "runs" / name
        assert {"adapter.safetensors", "metrics.jsonl", "recipe.toml"} <= {p.name for p in run.iterdir()}
    seeded = (sweep_dir / "runs" / "lambda-1_seed-1" / "recipe.toml").read_text()
    assert "lambda = 1" in seeded and seeded.count("seed = 1") == 2  # train.seed and data.seed
    final_recipe = (sweep_dir / "final" / f"{result.best.setting}_seed-0" / "recipe.toml").read_text()
    assert 'train_split = "trainval"' in final_recipe and 'val_split = ""' in final_recipe
    assert all(0.0 <= o.test_top1 <= 1.0 for o in result.final_runs)

    table = json.loads((sweep_dir / "sweep.json").read_text())
    assert table["complete"] and table["best"]["setting"] == result.best.setting
    assert table["final_test_top1_mean"] == pytest.approx(sum(o.test_top1 for o in result.final_runs) / 2)
    rows = list(csv.DictReader((sweep_dir / "sweep.csv").open()))
    assert len(rows) == 6 and rows[0]["pace.lambda"] == "0.1" and rows[-1]["phase"] == "final"

    again = run_sweep(plan)  # everything finished: nothing trains, same numbers
    assert all(status == "skipped" for *_, status in statuses(again))
    assert [o.val_top1 for o in again.runs] == [o.val_top1 for o in result.runs]
    assert [o.test_top1 for o in again.runs] == [o.test_top1 for o in result.runs]

    bigger = plan_sweep(recipe, sweep_dir, grid=["pace.lambda=0.1,1,2"], seeds=[0, 1])  # extending the grid
    extended = run_sweep(bigger)
    assert [status for *_, status in statuses(extended)] == ["skipped"] * 4 + ["trained"] * 2

    other = plan_sweep(recipe, sweep_dir, grid=["pace.lambda=0.1"], seeds=[0], overrides=["optim.lr=0.02"])
    with pytest.raises(PaceError, match="another recipe.*optim.*lr"):
        run_sweep(other)


class StopInSecondRun(SweepLogger):
    """Requests a stop (what Ctrl-C does) at step 2 of the second run."""

    def __init__(self, stop):
        self.stop, self.runs = stop, 0

    def run_start(self, run, number, total):
        self.runs = number

    def train_logger(self, run):
        sweep_logger = self

        class Stopper(TrainLogger):
            def step(self, record):
                if sweep_logger.runs == 2 and record["step"] == 2:
                    sweep_logger.stop.request()

        return Stopper()


def test_interrupted_sweep_resumes(recipe, tmp_path):
    sweep_dir = tmp_path / "sweep"
    plan = plan_sweep(recipe, sweep_dir, grid=["pace.lambda=0.1,1"], seeds=[0])
    stop = StopRequest()
    with pytest.raises(TrainingInterrupted, match="--resume") as info:
        run_sweep(plan, logger=StopInSecondRun(stop), stop=stop)
    assert info.value.exit_code == 130
    interrupted = sweep_dir / "runs" / "lambda-1_seed-0"
    assert (interrupted / "checkpoint.safetensors").is_file() and not (interrupted / "adapter.safetensors").exists()
    partial = json.loads((sweep_dir / "sweep.json").read_text())
    assert not partial["complete"] and len(partial["runs"]) == 1

    with pytest.raises(PaceError, match="add --resume"):
        run_sweep(plan)
    resumed = run_sweep(plan, resume=True)
    assert [status for *_, status in statuses(resumed)] == ["skipped", "resumed"]
    assert resumed.complete and resumed.ranking[0].seeds == 1

    # the resumed run computes what an uninterrupted one does
    straight = run_sweep(plan_sweep(recipe, tmp_path / "straight", grid=["pace.lambda=0.1,1"], seeds=[0]))
    assert [o.val_top1 for o in straight.runs] == [o.val_top1 for o in resumed.runs]
    assert [o.val_loss for o in straight.runs] == pytest.approx([o.val_loss for o in resumed.runs], rel=1e-6)


def test_sweep_command(recipe, tmp_path):
    runner = CliRunner()
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", str(recipe), "--grid", "pace.sigma=0.5,1.5", "--seeds", "0", "--set",
                                 "train.epochs=1", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["complete"] and len(payload["ranking"]) == 2 and payload["grid"] == {"pace.sigma": [0.5, 1.5]}
    table = runner.invoke(app, ["sweep", str(recipe), "--grid", "pace.sigma=0.5,1.5", "--seeds", "0", "--set",
                                "train.epochs=1", "-o", str(out)])
    assert table.exit_code == 0 and "skipped" in table.stdout and "rank" in table.stdout
    typo = runner.invoke(app, ["sweep", str(recipe), "--grid", "pace.sigmaa=1", "-o", str(tmp_path / "x")])
    assert typo.exit_code == 2
    assert "bad --grid pace.sigmaa=1: unknown key [pace] sigmaa" in typo.output
    assert len(typo.output.strip().splitlines()) == 1


def test_stop_during_a_runs_last_evaluation_stops_the_sweep_before_the_next_run(recipe, tmp_path):
    stop = StopRequest()

    class StopAfterLastEpoch(SweepLogger):
        def train_logger(self, run):
            class Stopper(TrainLogger):
                def epoch(self, record):
                    if record["epoch"] == 2:  # the run's last epoch: no step boundary is left to notice it
                        stop.request()
            return Stopper()

    plan = plan_sweep(recipe, tmp_path / "sweep", grid=["pace.lambda=0.1,1"], seeds=[0])
    with pytest.raises(TrainingInterrupted, match="after 1 runs") as info:
        run_sweep(plan, logger=StopAfterLastEpoch(), stop=stop)
    assert info.value.exit_code == 130
    assert (tmp_path / "sweep" / "runs" / "lambda-0.1_seed-0" / "adapter.safetensors").is_file()
    assert not (tmp_path / "sweep" / "runs" / "lambda-1_seed-0").exists()
    assert [o.status for o in run_sweep(plan, resume=True).runs] == ["skipped", "trained"]


def test_settings_that_would_share_a_folder_are_refused():
    with pytest.raises(PaceError, match="share the run folder name"):
        grid_settings(parse_grid(['output.dir="a b","a_b"']))


def test_only_the_writer_writes_sweep_tables(recipe, tmp_path, monkeypatch):
    import pace_cli.sweep.tables as tables
    from pace_cli.sweep import SweepResult, write_tables

    assert tables.writes_files()  # one process, no process group: the writer
    monkeypatch.setattr(tables, "writes_files", lambda: False)  # what a rank other than 0 answers
    write_tables(SweepResult(tmp_path / "sweep", str(recipe), [], [0]))
    assert not (tmp_path / "sweep").exists()
