import os
import signal

import pytest
import torch
from helpers import tiny_recipe_text

from pace_cli.errors import PaceError
from pace_cli.files.tensors import load_tensors
from pace_cli.recipe import parse_recipe
from pace_cli.training import StopRequest, TrainingInterrupted, TrainLogger, train

RECIPE = tiny_recipe_text(
    model={"drop_path_rate": 0.2},
    data={"batch_size": 16, "synthetic_classes": 4, "synthetic_size": 48},
    adapter={"rank": 3},
    pace={"variant": "fast", "sigma": 1.0},
    optim={"lr": 0.01, "warmup_epochs": 1},
    train={"epochs": 3, "log_every": 1},
)


class StopAt(TrainLogger):
    """Interrupts the run after a given step, either through its stop request (or event) or a real SIGINT."""

    def __init__(self, at_step, use_signal=False):
        self.at_step, self.use_signal, self.stop = at_step, use_signal, None

    def step(self, record):
        if record["step"] == self.at_step:
            if self.use_signal:
                os.kill(os.getpid(), signal.SIGINT)
            elif isinstance(self.stop, StopRequest):
                self.stop.request()
            else:
                self.stop.set()


def run(tmp_path, name, overrides=(), **kwargs):
    return train(parse_recipe(RECIPE, list(overrides)), output_dir=tmp_path / name, **kwargs)


@pytest.mark.parametrize("variant", ["fast", "pace"])
@pytest.mark.parametrize("at_step,checkpoint_every", [(5, 0), (3, 0), (4, 2)])
def test_interrupted_and_resumed_run_is_bitwise_identical(tmp_path, variant, at_step, checkpoint_every):
    overrides = [f"pace.variant={variant}", f"train.checkpoint_every={checkpoint_every}"]
    straight = run(tmp_path, "straight", overrides)
    logger = StopAt(at_step)
    logger.stop = StopRequest()
    with pytest.raises(TrainingInterrupted) as interrupted:
        run(tmp_path, "interrupted", overrides, logger=logger, stop=logger.stop)
    assert interrupted.value.exit_code == 130 and "--resume" in str(interrupted.value)
    assert not (tmp_path / "interrupted" / "adapter.safetensors").exists()
    resumed = run(tmp_path, "interrupted", overrides, resume=True)
    a, b = load_tensors(straight.adapter_path), load_tensors(resumed.adapter_path)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [line for line in (tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    straight_steps = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert len(steps) == len(straight_steps)


def test_real_sigint_saves_and_exits_130(tmp_path):
    # Not always Python's default handler: a shell's background job (or nohup) starts with SIGINT ignored.
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingInterrupted) as interrupted:
        run(tmp_path, "sig", logger=StopAt(2, use_signal=True))
    assert interrupted.value.exit_code == 130
    assert (tmp_path / "sig" / "checkpoint.safetensors").is_file()
    assert {sig: signal.getsignal(sig) for sig in before} == before  # the handlers found are put back


def test_resume_refuses_a_recipe_that_matters_and_allows_more_epochs(tmp_path):
    import threading
    logger = StopAt(2)
    logger.stop = threading.Event()  # a plain event is accepted as a stop request too
    with pytest.raises(TrainingInterrupted):
        run(tmp_path, "r", logger=logger, stop=logger.stop)
    with pytest.raises(PaceError, match=r"\[adapter\] rank"):
        run(tmp_path, "r", ["adapter.rank=4"], resume=True)
    with pytest.raises(PaceError, match="--resume"):
        run(tmp_path, "r")
    result = run(tmp_path, "r", ["train.epochs=4"], resume=True)
    assert result.steps == 12


def test_resume_hint_names_the_recipe_label(tmp_path):
    stop = StopRequest()
    stop.request()  # before the first step: the run stops at once
    with pytest.raises(TrainingInterrupted) as interrupted:
        run(tmp_path, "hint", stop=stop, recipe_label="recipes/mine.toml")
    assert str(interrupted.value).endswith(f"continue with: pace train recipes/mine.toml --resume --output-dir "
                                           f"{tmp_path / 'hint'}")
    assert interrupted.value.remedy.startswith("continue with:")


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(PaceError, match="nothing to resume"):
        run(tmp_path, "none", resume=True)


def test_sigterm_to_the_cli_saves_and_resume_finishes(tmp_path):
    import subprocess
    import sys
    import time

    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.replace("epochs = 3", "epochs = 40"))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pace_cli.cli", "train", str(recipe), "-o", str(out), "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").is_file()
                                          and (out / "metrics.jsonl").read_text().strip()):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--resume" in lines[0] and str(recipe) in lines[0]
    assert (out / "checkpoint.safetensors").is_file() and not (out / "adapter.safetensors").exists()
    resumed = subprocess.run(command[:-1] + ["--resume", "--json", "--set", "train.epochs=2"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "adapter.safetensors").is_file()


def test_a_checkpoint_from_before_a_key_existed_resumes_at_that_keys_default():
    from pace_cli.recipe import recipe_to_dict
    from pace_cli.training import recipe_differences

    saved = recipe_to_dict(parse_recipe(RECIPE))
    del saved["optim"]["schedule"]  # written by a pace that had no [optim] schedule
    assert recipe_differences(saved, parse_recipe(RECIPE)) == []
    changed = recipe_differences(saved, parse_recipe(RECIPE, ["optim.schedule=epoch"]))
    assert changed == ["[optim] schedule: 'per_step' -> 'epoch'"]
