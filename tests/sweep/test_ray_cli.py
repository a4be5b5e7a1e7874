"""`pace sweep`'s Ray flags without a cluster: the missing extra, and Ray flags given to another backend."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import tiny_recipe_text
from typer.testing import CliRunner

from pace_cli.cli import app

RECIPE = tiny_recipe_text(data={"batch_size": 16, "synthetic_classes": 4, "synthetic_size": 32},
                          train={"epochs": 1})


def _sweep(tmp_path, *flags):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    return CliRunner().invoke(app, ["sweep", str(recipe), "--grid", "pace.lambda=0.1,1", "-o", str(tmp_path / "s"),
                                    *flags])


def test_without_ray_installed_one_line_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    result = _sweep(tmp_path, "--backend", "ray")
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'pace-cli[ray]'" in lines[0], result.output
    assert not (tmp_path / "s").exists()


def test_a_ray_flag_without_the_ray_backend_is_refused(tmp_path):
    result = _sweep(tmp_path, "--gpus-per-trial", "0.5")
    assert result.exit_code != 0
    assert "--gpus-per-trial is a --backend ray option; add --backend ray or drop --gpus-per-trial" in result.output
    assert not (tmp_path / "s").exists()


def test_the_help_names_the_backend_flags():
    text = CliRunner().invoke(app, ["sweep", "--help"], terminal_width=200).output
    for flag in ("--backend", "--address", "--gpus-per-trial", "--cpus-per-trial", "--max-concurrent", "--scheduler",
                 "--grace-epochs", "--reduction-factor"):
        assert flag in text
    assert "no longer the paper's protocol" in " ".join(text.replace("│", " ").split())


def test_ctrl_c_stops_a_ray_sweep_with_130_and_the_rerun_completes_it(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: the driver, Ray and its workers."""
    pytest.importorskip("ray")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(tiny_recipe_text(data={"batch_size": 16, "synthetic_classes": 4, "synthetic_size": 256},
                                       adapter={"rank": 2}, train={"epochs": 12, "log_every": 1}))
    command = [sys.executable, "-m", "pace_cli.cli", "sweep", str(recipe), "--grid", "pace.lambda=0.1,1",
               "--backend", "ray", "-o", str(tmp_path / "s")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    sweep = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    runs = tmp_path / "s" / "runs"
    deadline = time.time() + 120
    while not list(runs.glob("*/checkpoint.safetensors")) and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.2)
    os.killpg(sweep.pid, signal.SIGINT)
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, output
    assert "continue with the same command plus --resume" in output
    assert any(not (run / "adapter.safetensors").exists() for run in runs.iterdir())
    again = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert all((run / "adapter.safetensors").is_file() for run in runs.iterdir())
