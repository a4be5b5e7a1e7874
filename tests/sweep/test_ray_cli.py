"""`pace sweep`'s Ray flags without a cluster: the missing extra, and Ray flags given to another backend."""

from __future__ import annotations

import sys

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
    for flag in ("--backend", "--address", "--gpus-per-trial", "--cpus-per-trial", "--max-concurrent"):
        assert flag in text
