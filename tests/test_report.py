import builtins
import json
import struct

import pytest
from helpers import tiny_recipe_text
from typer.testing import CliRunner

from pace_cli.cli import app
from pace_cli.errors import PaceError
from pace_cli.recipe import parse_recipe
from pace_cli.report import read_run, write_report
from pace_cli.sweep import plan_sweep, run_sweep
from pace_cli.training.loop import train

RECIPE = tiny_recipe_text(
    data={"batch_size": 16, "synthetic_classes": 4, "synthetic_size": 32},
    adapter={"rank": 2},
    pace={"variant": "pace"},
    optim={"lr": 0.01, "warmup_epochs": 1},
    train={"epochs": 3},
)
runner = CliRunner()


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    return width, height, len(data)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for variant in ("off", "pace"):
        train(parse_recipe(RECIPE, [f"pace.variant={variant}"]), output_dir=root / variant)
    return root


def test_report_draws_overlaid_runs(runs, tmp_path):
    curves = read_run(runs / "pace", "pace")
    assert [e for e, _ in curves.epochs["val_top1"]] == [1, 2, 3]
    assert set(curves.epochs) >= {"train_loss", "train_ce", "train_consistency", "lr", "grad_norm", "fp_distance"}
    out = tmp_path / "report.png"
    result = write_report([runs / "off", runs / "pace"], out, labels=["off", "pace"])
    width, height, size = png_size(out)
    assert (width, height) == (result.width_px, result.height_px) and width > 1000 and height > 500
    assert size > 30_000  # eight panels of curves, not an empty canvas
    assert [p.name for p in tmp_path.iterdir()] == ["report.png"]  # no temporary left behind
    with pytest.raises(PaceError, match="exists"):
        write_report([runs / "off"], out)
    with pytest.raises(PaceError, match="one label per folder"):
        write_report([runs / "off"], tmp_path / "b.png", labels=["a", "b"])
    with pytest.raises(PaceError, match="neither a run folder"):
        write_report([tmp_path], tmp_path / "c.png")


def test_report_draws_a_sweep_heat_map(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.replace("epochs = 3", "epochs = 1"))
    plan = plan_sweep(recipe, tmp_path / "sweep", grid=["pace.lambda=0.1,1", "pace.sigma=0.5,1.5"], seeds=[0])
    run_sweep(plan)
    result = runner.invoke(app, ["report", str(tmp_path / "sweep"), "-o", str(tmp_path / "heat.png"), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["sweeps"] == [str(tmp_path / "sweep")] and payload["runs"] == []
    width, height, size = png_size(tmp_path / "heat.png")
    assert (width, height) == (payload["width_px"], payload["height_px"]) and size > 5_000


def test_missing_matplotlib_is_one_clear_line(runs, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = runner.invoke(app, ["report", str(runs / "pace"), "-o", str(tmp_path / "r.png")])
    assert result.exit_code == 2
    assert "pip install 'pace-cli[plot]'" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r.png").exists()


def test_report_reads_folders_without_the_training_code():
    import subprocess
    import sys

    code = ("import sys, pace_cli.report; "
            "print(sorted(m for m in sys.modules if m.startswith(('pace_cli.training', 'pace_cli.sweep'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
