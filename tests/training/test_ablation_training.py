"""The ablation keys in whole training runs: two processes train what one does, and a run
interrupted and resumed ends bit for bit where an uninterrupted one does.

Each case sets several keys at once (they are independent code paths) so that one torchrun
launch covers them all.
"""

import json

import pytest
import torch
from helpers import stop_after, tiny_recipe_text
from test_distributed import REPO, adapters, max_diff, torchrun, without_key_bias_shift

from pace_cli.files.tensors import load_tensors
from pace_cli.recipe import parse_recipe
from pace_cli.training import StopRequest, TrainingInterrupted, train

RECIPE = tiny_recipe_text(
    model={"drop_path_rate": 0.2, "drop_rate": 0.1},
    data={"batch_size": 8, "synthetic_classes": 4, "synthetic_size": 24},
    adapter={"kind": "lora_mul+vpt_add", "rank": 3},
    pace={"sigma": 1.0},
    optim={"lr": 0.01, "warmup_epochs": 1},
    train={"epochs": 2, "log_every": 1, "device": "cpu"},
)
CASES = {
    # σ = 1 of additive noise on every layer's whole output (not on the small Δh) is a storm in
    # which float rounding grows past 1e-5 within a few steps; 0.1 is the scale PACE_add is tuned to.
    "additive-fpa": ["pace.noise=additive", "pace.sigma=0.1", "regularizer.fpa=0.5"],
    "dropout-output-copies": ["pace.noise=dropout", "pace.perturb=output", "pace.copies=3"],
    "noise-only-increasing-l1": ["pace.variant=noise_only", "pace.sigma_profile=increasing", "regularizer.l1=0.001"],
    "lazy-copies-gp": ["pace.variant=lazy", "pace.copies=3", "regularizer.gp=0.1", "adapter.kind=lora_add"],
    "off-fpa-sam": ["pace.variant=off", "regularizer.fpa=0.5", "regularizer.sam_rho=0.05"],
}


def test_two_processes_train_what_one_does(tmp_path):
    for name, overrides in CASES.items():
        train(parse_recipe(RECIPE, overrides), output_dir=tmp_path / f"one-{name}")
    jobs = [{"recipe": RECIPE, "overrides": overrides, "out": str(tmp_path / f"two-{name}")}
            for name, overrides in CASES.items()]
    launched = torchrun(2, str(REPO / "tests" / "training" / "distributed_jobs.py"), json.dumps(jobs))
    assert launched.returncode == 0, launched.stderr[-3000:]
    diffs = {name: max_diff(without_key_bias_shift(adapters(tmp_path / f"one-{name}")),
                            without_key_bias_shift(adapters(tmp_path / f"two-{name}"))) for name in CASES}
    print("max |adapter(1 process) - adapter(2 processes)|:", diffs)
    assert all(d <= 1e-5 for d in diffs.values()), diffs


@pytest.mark.parametrize("name", ["dropout-output-copies", "lazy-copies-gp", "off-fpa-sam"])
def test_an_interrupted_run_resumes_bit_for_bit(tmp_path, name):
    recipe = parse_recipe(RECIPE, CASES[name])
    straight = train(recipe, output_dir=tmp_path / "straight")
    stop = StopRequest()
    with pytest.raises(TrainingInterrupted):
        train(recipe, output_dir=tmp_path / "interrupted", stop=stop, logger=stop_after(3, stop))
    resumed = train(recipe, output_dir=tmp_path / "interrupted", resume=True)
    a, b = load_tensors(straight.adapter_path), load_tensors(resumed.adapter_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
