"""What `pace sweep --final` does per recipe: score the grid's k-shot adapters on test, or retrain on train + val."""

import csv
import json
import zlib
from pathlib import Path

import pytest
from fake_data import write_png
from helpers import tiny_recipe_text
from typer.testing import CliRunner

from pace_cli.cli import app
from pace_cli.errors import PaceError
from pace_cli.sweep import SweepLogger, plan_sweep, run_sweep
from pace_cli.training import StopRequest, TrainingInterrupted

COMMON = dict(adapter={"rank": 2}, pace={"sigma": 1.0}, optim={"lr": 0.01, "warmup_epochs": 0},
              train={"epochs": 1, "log_every": 1})
# k-shot training images drawn from the synthetic train split; no train + val split to retrain on.
SHOTS = tiny_recipe_text(data={"batch_size": 8, "synthetic_classes": 4, "synthetic_size": 32, "shots": 4}, **COMMON)
TRAINVAL = tiny_recipe_text(data={"batch_size": 16, "synthetic_classes": 4, "synthetic_size": 32,
                                  "trainval_split": "trainval"}, **COMMON)
NEITHER = tiny_recipe_text(data={"batch_size": 16, "synthetic_classes": 4, "synthetic_size": 32}, **COMMON)

runner = CliRunner()


def write(tmp_path: Path, text: str, name="recipe.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def fewshot_recipe(tmp_path: Path) -> Path:
    """NOAH's few-shot lists (2 shots, list seeds 0 and 1) over tiny images: no trainval split exists."""
    root = tmp_path / "fewshot"
    ids = [5, 2, 9]
    lists = {f"train_meta.list.num_shot_2.seed_{s}": [(f"tr/{c}_{s}_{k}.png", c) for c in ids for k in range(2)]
             for s in (0, 1)}
    lists["val_meta.list"] = [(f"va/{c}_{k}.png", c) for c in ids for k in range(2)]
    lists["test_meta.list"] = [(f"te/{c}_{k}.png", c) for c in ids for k in range(3)]
    (root / "annotations").mkdir(parents=True)
    for name, entries in lists.items():
        for i, (rel, _) in enumerate(entries):
            write_png(root / "images" / rel, seed=zlib.crc32(f"{name}:{i}".encode()), size=(40, 36))
        (root / "annotations" / name).write_text("".join(f"{rel} {label}\n" for rel, label in entries))
    text = tiny_recipe_text(model={"num_classes": 3},
                            data={"source": "fewshot", "root": str(root), "shots": 2, "batch_size": 3}, **COMMON)
    return write(tmp_path, text, "fewshot.toml")


def pace_eval_top1(run_dir: Path) -> float:
    """The test top-1 `pace eval` gives the adapter in ``run_dir``, with the recipe saved beside it."""
    result = runner.invoke(app, ["eval", str(run_dir / "recipe.toml"), "--adapter", str(run_dir / "adapter.safetensors"),
                                 "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["top1"]


def folders(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_dir())


@pytest.mark.parametrize("make", [lambda tmp: write(tmp, SHOTS), fewshot_recipe], ids=["shots", "fewshot-lists"])
def test_final_under_shots_scores_the_grid_adapters_on_test(tmp_path, make):
    recipe, sweep_dir = make(tmp_path), tmp_path / "sweep"
    grid = dict(grid=["pace.lambda=0.1,1"], seeds=[0, 1])
    run_sweep(plan_sweep(recipe, sweep_dir, **grid))  # the grid alone first, to compare its adapters after
    adapters = {p: p.read_bytes() for p in sorted(sweep_dir.glob("runs/*/adapter.safetensors"))}
    plan = plan_sweep(recipe, sweep_dir, **grid, final=True)
    assert plan.final_job == "score"
    result = run_sweep(plan)
    assert [o.status for o in result.runs[:4]] == ["skipped"] * 4
    assert not (sweep_dir / "final").exists()  # no new training run, and the grid's adapters are as they were
    assert folders(sweep_dir) == ["runs", "runs/lambda-0.1_seed-0", "runs/lambda-0.1_seed-1",
                                  "runs/lambda-1_seed-0", "runs/lambda-1_seed-1"]
    assert {p: p.read_bytes() for p in sorted(sweep_dir.glob("runs/*/adapter.safetensors"))} == adapters
    finals = result.final_runs
    best = result.best.setting
    assert [(o.setting, o.seed, o.status) for o in finals] == [(best, 0, "scored"), (best, 1, "scored")]
    for outcome in finals:
        run_dir = Path(outcome.run_dir)
        assert run_dir == sweep_dir / "runs" / f"{best}_seed-{outcome.seed}"
        assert outcome.test_top1 == pytest.approx(pace_eval_top1(run_dir), abs=1e-12)
        assert "not retrained" in outcome.protocol

    table = json.loads((sweep_dir / "sweep.json").read_text())
    assert table["final_protocol"] == "scored on test, not retrained (the grid run's adapter)"
    assert table["final_test_top1_mean"] == pytest.approx(sum(o.test_top1 for o in finals) / 2)
    rows = list(csv.DictReader((sweep_dir / "sweep.csv").open()))
    assert [r["protocol"] for r in rows] == ["trained on train, scored on val"] * 4 + [table["final_protocol"]] * 2
    assert [r["status"] for r in rows[-2:]] == ["scored", "scored"]


def test_printed_table_says_the_final_runs_were_not_retrained(tmp_path):
    recipe = write(tmp_path, SHOTS)
    args = ["sweep", str(recipe), "--grid", "pace.lambda=0.1,1", "--seeds", "0", "--final", "-o", str(tmp_path / "s")]
    shown = runner.invoke(app, args, terminal_width=250)
    assert shown.exit_code == 0, shown.output
    assert "scored on test, not retrained" in shown.stdout and "retrained on" not in shown.stdout
    assert "scored" in shown.stdout.split("final:")[0]  # the per-run line of the scoring job
    payload = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert payload["final_protocol"].startswith("scored on test") and len(payload["runs"]) == 3


def test_final_with_a_trainval_split_and_no_shots_retrains(tmp_path):
    sweep_dir = tmp_path / "sweep"
    plan = plan_sweep(write(tmp_path, TRAINVAL), sweep_dir, grid=["pace.lambda=0.1,1"], seeds=[0], final=True)
    assert plan.final_job == "train"
    result = run_sweep(plan)
    (final,) = result.final_runs
    assert final.status == "trained" and Path(final.run_dir) == sweep_dir / "final" / f"{result.best.setting}_seed-0"
    assert (Path(final.run_dir) / "adapter.safetensors").is_file()
    assert 'train_split = "trainval"' in (Path(final.run_dir) / "recipe.toml").read_text()
    assert result.final_protocol == final.protocol == "retrained on trainval, scored on test"
    assert json.loads((sweep_dir / "sweep.json").read_text())["final_protocol"] == "retrained on trainval, scored on test"
    shown = runner.invoke(app, ["sweep", str(tmp_path / "recipe.toml"), "--grid", "pace.lambda=0.1,1", "--seeds", "0",
                                "--final", "-o", str(sweep_dir)], terminal_width=250)
    assert shown.exit_code == 0 and "retrained on trainval, scored on test" in shown.stdout


def test_final_without_trainval_split_or_shots_is_one_line_naming_the_keys(tmp_path):
    recipe = write(tmp_path, NEITHER)
    with pytest.raises(PaceError) as info:
        plan_sweep(recipe, tmp_path / "sweep", final=True)
    message = str(info.value)
    assert "\n" not in message and "[data] trainval_split" in message and "shots = k" in message
    result = runner.invoke(app, ["sweep", str(recipe), "--final", "-o", str(tmp_path / "sweep")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "set trainval_split" in result.output
    assert not (tmp_path / "sweep").exists()
    # without --final the same recipe sweeps
    assert plan_sweep(recipe, tmp_path / "sweep").final_job is None


class StopAfterFirstScore(SweepLogger):
    def __init__(self, stop):
        self.stop = stop

    def run_end(self, outcome):
        if outcome.phase == "final":
            self.stop.request()


def test_a_resumed_sweep_skips_finished_scoring(tmp_path, monkeypatch):
    import pace_cli.evaluation as evaluation

    plan = plan_sweep(write(tmp_path, SHOTS), tmp_path / "sweep", grid=["pace.lambda=0.1,1"], seeds=[0, 1], final=True)
    stop = StopRequest()
    with pytest.raises(TrainingInterrupted, match="after 5 runs") as info:
        run_sweep(plan, logger=StopAfterFirstScore(stop), stop=stop)
    assert info.value.exit_code == 130
    partial = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert not partial["complete"] and [r["status"] for r in partial["runs"]][-1] == "scored"

    scored = []
    real = evaluation.evaluate_recipe
    monkeypatch.setattr(evaluation, "evaluate_recipe", lambda recipe, **kw: scored.append(kw["adapter"]) or real(recipe, **kw))
    resumed = run_sweep(plan, resume=True)
    assert [o.status for o in resumed.runs] == ["skipped"] * 5 + ["scored"]
    assert scored == [Path(resumed.runs[-1].run_dir) / "adapter.safetensors"]  # only the missing score ran
    first = partial["runs"][-1]
    assert resumed.runs[4].test_top1 == first["test_top1"] and resumed.complete

    again = run_sweep(plan)
    assert [o.status for o in again.runs] == ["skipped"] * 6 and len(scored) == 1
    assert [o.test_top1 for o in again.runs] == [o.test_top1 for o in resumed.runs]


def test_ctrl_c_while_scoring_stops_the_sweep_in_one_line_and_loses_nothing(tmp_path, monkeypatch):
    import pace_cli.evaluation as evaluation

    plan = plan_sweep(write(tmp_path, SHOTS), tmp_path / "sweep", grid=["pace.lambda=0.1"], seeds=[0], final=True)

    def interrupted(recipe, **kw):
        raise KeyboardInterrupt
    real = evaluation.evaluate_recipe
    monkeypatch.setattr(evaluation, "evaluate_recipe", interrupted)
    with pytest.raises(TrainingInterrupted, match="interrupted in run .*lambda-0.1_seed-0.*--resume") as info:
        run_sweep(plan)
    assert info.value.exit_code == 130
    run_dir = tmp_path / "sweep" / "runs" / "lambda-0.1_seed-0"
    assert (run_dir / "adapter.safetensors").is_file() and not (run_dir / "test.json").exists()
    assert len(json.loads((tmp_path / "sweep" / "sweep.json").read_text())["runs"]) == 1
    monkeypatch.setattr(evaluation, "evaluate_recipe", real)
    assert [o.status for o in run_sweep(plan).runs] == ["skipped", "scored"]


def test_a_trainval_split_under_shots_is_a_warning_not_a_retrain(tmp_path):
    both = SHOTS.replace("shots = 4", 'shots = 4\ntrainval_split = "trainval"')
    recipe = write(tmp_path, both)
    plan = plan_sweep(recipe, tmp_path / "s", final=True)
    assert plan.final_job == "score"
    assert plan.notes == ["[data] trainval_split = 'trainval' set but not used: under shots, --final scores the grid "
                          "runs' adapters on test instead of retraining (it is read only when shots is unset)"]
    assert plan_sweep(recipe, tmp_path / "s").notes == []  # without --final nothing reads it anyway
    result = runner.invoke(app, ["sweep", str(recipe), "--final", "-o", str(tmp_path / "s"), "--json"],
                           terminal_width=400)
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("warning:")] == [f"warning: {plan.notes[0]}"]
    assert not (tmp_path / "s" / "final").exists()
