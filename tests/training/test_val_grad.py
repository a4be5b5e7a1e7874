"""``val_grad_norm``: the validation loss's gradient norm, against a dense full-batch gradient computed here."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_recipe_text
from torch import nn

from pace_cli.adapters import load_adapter_state_dict
from pace_cli.builders import build_adapted_model, build_dataset, pace_config
from pace_cli.data import make_loader
from pace_cli.errors import PaceError
from pace_cli.files.tensors import load_tensors
from pace_cli.recipe import parse_recipe, recipe_to_dict
from pace_cli.regularizer import PaceRegularizer
from pace_cli.training import recipe_differences, train
from pace_cli.training.val_grad import validation_gradient_norm

REPO = Path(__file__).resolve().parents[2]
RECIPE = tiny_recipe_text(
    model={"drop_path_rate": 0.3},
    data={"batch_size": 8, "eval_batch_size": 3, "synthetic_classes": 4, "synthetic_size": 20},
    adapter={"kind": "lora_mul+vpt_add", "rank": 3},
    pace={"variant": "pace", "sigma": 1.0},
    optim={"lr": 0.01, "warmup_epochs": 1},
    train={"epochs": 2, "log_every": 1, "device": "cpu"},
)


def dense_reference(model: nn.Module, dataset, params) -> float:
    """||∂/∂θ mean CE|| over the whole split in one batch, the model in eval mode."""
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    was_training = model.training
    model.eval()
    loss = nn.functional.cross_entropy(model(images), labels)
    grads = torch.autograd.grad(loss, params)
    model.train(was_training)
    return torch.cat([g.reshape(-1) for g in grads]).norm().item()


def noisy_model(recipe):
    """The run's model with PACE installed, in training mode, and adapters moved off their zero start."""
    torch.manual_seed(0)
    model, _ = build_adapted_model(recipe, num_classes=4)
    PaceRegularizer(model, pace_config(recipe), num_train_samples=20, num_classes=4, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn_like(p))
    return model.train(), params


class DrawingDataset(torch.utils.data.Dataset):
    """A split whose reads draw from torch's, Python's and NumPy's global generators, as timm's transforms do."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        torch.rand(1), random.random(), np.random.rand()
        return self.dataset[i]


def test_equals_the_dense_full_batch_gradient_and_touches_nothing():
    recipe = parse_recipe(RECIPE)
    model, params = noisy_model(recipe)
    val = build_dataset(recipe, "val")
    loader = make_loader(DrawingDataset(val), 3, shuffle=False)  # 20 samples: six batches of 3 and one of 2
    for p in params:
        p.grad = torch.randn_like(p)
    grads_before = [p.grad.clone() for p in params]
    random.seed(5)
    np.random.seed(5)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy(), loader.generator.get_state())

    measured = validation_gradient_norm(model, loader, params, device=torch.device("cpu"))

    after = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1], loader.generator.get_state())
    assert torch.equal(states[0], after[0]) and states[1] == after[1] and np.array_equal(states[2], after[2])
    assert torch.equal(states[3], after[3])
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads_before))  # the optimiser's gradients
    assert model.training  # put back in the mode it was found in
    reference = dense_reference(model, val, params)
    assert reference > 1e-3
    assert measured == pytest.approx(reference, rel=1e-5)
    # the control: one pass over the loader does advance every generator, so the checks above can fail
    list(loader)
    assert not torch.equal(torch.get_rng_state(), states[0]) and random.getstate() != states[1]
    assert not np.array_equal(np.random.get_state()[1], states[2])
    assert not torch.equal(loader.generator.get_state(), states[3])


def test_bf16_autocast_is_close_to_fp32():
    recipe = parse_recipe(RECIPE)
    model, params = noisy_model(recipe)
    loader = make_loader(build_dataset(recipe, "val"), 8, shuffle=False)
    fp32 = validation_gradient_norm(model, loader, params, device=torch.device("cpu"))
    bf16 = validation_gradient_norm(model, loader, params, device=torch.device("cpu"), autocast_dtype=torch.bfloat16)
    assert bf16 == pytest.approx(fp32, rel=0.05)


def epoch_records(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("type") == "epoch"]


def test_a_run_logging_it_trains_bit_for_bit_as_one_that_does_not(tmp_path):
    on = train(parse_recipe(RECIPE, ["train.val_grad_norm=true"]), output_dir=tmp_path / "on")
    off = train(parse_recipe(RECIPE), output_dir=tmp_path / "off")
    a, b = load_tensors(on.adapter_path), load_tensors(off.adapter_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records_on, records_off = epoch_records(tmp_path / "on"), epoch_records(tmp_path / "off")
    timing = {"seconds", "images_per_s", "val_grad_norm"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in records_on] == \
           [{k: v for k, v in r.items() if k not in timing} for r in records_off]
    assert all("val_grad_norm" not in r for r in records_off)
    # the last epoch's figure is the gradient of the final adapters, computed densely here
    recipe = parse_recipe(RECIPE)
    model, _ = build_adapted_model(recipe, num_classes=4)
    load_adapter_state_dict(model, a)
    params = [p for p in model.parameters() if p.requires_grad]
    reference = dense_reference(model, build_dataset(recipe, "val"), params)
    assert [r["epoch"] for r in records_on if "val_grad_norm" in r] == [1, 2]
    assert records_on[-1]["val_grad_norm"] == pytest.approx(reference, rel=1e-5)


def test_it_needs_a_validation_split_and_may_change_on_resume():
    with pytest.raises(PaceError, match=r"\[train\] val_grad_norm = true .* \[data\] val_split is empty"):
        parse_recipe(RECIPE, ["train.val_grad_norm=true", 'data.val_split=""'])
    saved = recipe_to_dict(parse_recipe(RECIPE))
    assert recipe_differences(saved, parse_recipe(RECIPE, ["train.val_grad_norm=true"])) == []


def test_sweep_final_runs_drop_it(tmp_path):
    from pace_cli.sweep.plan import final_runs, plan_sweep

    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE.replace("[train]", "[train]\nval_grad_norm = true").replace(
        "[data]", '[data]\ntrainval_split = "trainval"'))
    plan = plan_sweep(path, tmp_path / "sweep", grid=["pace.sigma=0.5,1"], seeds=[0], final=True)
    assert all(r.recipe.train.val_grad_norm for r in plan.runs)  # the grid runs measure it on val
    assert not any(r.recipe.train.val_grad_norm for r in final_runs(plan, plan.settings[0].name))


def test_two_processes_measure_what_one_does(tmp_path):
    one = tmp_path / "one"
    train(parse_recipe(RECIPE, ["train.val_grad_norm=true", "train.epochs=1"]), output_dir=one)
    jobs = [{"recipe": RECIPE, "overrides": ["train.val_grad_norm=true", "train.epochs=1"], "out": str(tmp_path / "two")}]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               str(REPO / "tests" / "training" / "distributed_jobs.py"), json.dumps(jobs)],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert launched.returncode == 0, launched.stderr[-3000:]
    single, double = epoch_records(one)[-1]["val_grad_norm"], epoch_records(tmp_path / "two")[-1]["val_grad_norm"]
    # the adapters of 1 and 2 processes agree up to summation order, so the norms do too
    assert double == pytest.approx(single, rel=1e-4)
