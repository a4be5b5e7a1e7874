"""`ia3` and `dora` train like every kind: two processes give what one does (keyed noise), an
interrupted run resumes bit for bit, and the unmerged adapter scores what the merged one does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import stop_after, tiny_recipe_text

from pace_cli.evaluation import evaluate_targets
from pace_cli.files.tensors import load_tensors
from pace_cli.recipe import parse_recipe
from pace_cli.training import StopRequest, TrainingInterrupted, train

RECIPE = tiny_recipe_text(
    model={"drop_path_rate": 0.2},
    data={"batch_size": 8, "synthetic_classes": 4, "synthetic_size": 24},
    pace={"sigma": 1.0},
    optim={"lr": 0.01, "warmup_epochs": 1},
    train={"epochs": 2, "log_every": 1, "device": "cpu"},
)
KINDS = ("ia3", "dora")
REPO = Path(__file__).resolve().parents[2]


def overrides(kind: str) -> list[str]:
    return ["pace.variant=pace", f"adapter.kind={kind}", "adapter.rank=3"]


def moved_from_init(state: dict[str, torch.Tensor]) -> bool:
    ones = [v for k, v in state.items() if k.endswith(("ia3_in", "ia3_out"))]
    zeros = [v for k, v in state.items() if k.endswith("lora_B")]
    return any((v != 1).any() for v in ones) or any(v.abs().sum() > 0 for v in zeros)


@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_run_resumes_bit_for_bit(tmp_path, kind):
    straight = train(parse_recipe(RECIPE, overrides(kind)), output_dir=tmp_path / "straight")
    stop = StopRequest()
    with pytest.raises(TrainingInterrupted):
        train(parse_recipe(RECIPE, overrides(kind)), output_dir=tmp_path / "cut", stop=stop, logger=stop_after(3, stop))
    resumed = train(parse_recipe(RECIPE, overrides(kind)), output_dir=tmp_path / "cut", resume=True)
    a, b = load_tensors(straight.adapter_path), load_tensors(resumed.adapter_path)
    assert a.keys() == b.keys() and moved_from_init(a)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_two_processes_train_what_one_does(tmp_path):
    for kind in KINDS:
        train(parse_recipe(RECIPE, overrides(kind)), output_dir=tmp_path / f"one-{kind}")
    jobs = [{"recipe": RECIPE, "overrides": overrides(kind), "out": str(tmp_path / f"two-{kind}")} for kind in KINDS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               str(REPO / "tests" / "training" / "distributed_jobs.py"), json.dumps(jobs)],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    for kind in KINDS:
        one = load_tensors(tmp_path / f"one-{kind}" / "adapter.safetensors")
        two = load_tensors(tmp_path / f"two-{kind}" / "adapter.safetensors")
        assert one.keys() == two.keys() and moved_from_init(one)
        diff = max((one[k] - two[k]).abs().max().item() for k in one)
        assert diff <= 1e-5, (kind, diff)


@pytest.mark.parametrize("kind", KINDS)
def test_unmerged_adapter_scores_what_the_merged_one_does(tmp_path, kind):
    result = train(parse_recipe(RECIPE, overrides(kind)), output_dir=tmp_path / "run")
    recipe = parse_recipe(RECIPE, overrides(kind))
    merged = evaluate_targets(recipe, adapter=result.adapter_path, targets=[])
    unmerged = evaluate_targets(recipe, adapter=result.adapter_path, unmerged=True, targets=[])
    assert merged.sets[0].result.top1 == unmerged.sets[0].result.top1
    assert merged.sets[0].result.loss == pytest.approx(unmerged.sets[0].result.loss, abs=1e-5)


def test_inspect_shows_each_layers_mode_and_check_lists_the_tensors(tmp_path):
    from pace_cli.artifacts import describe_file
    from pace_cli.check import check_recipe

    path = tmp_path / "ia3.toml"
    path.write_text(RECIPE)
    result = train(parse_recipe(RECIPE, overrides("ia3")), output_dir=tmp_path / "run")
    assert describe_file(result.adapter_path)["modes"] == {
        "output": ["blocks.0.attn.qkv", "blocks.1.attn.qkv"], "input": ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"]}
    report = check_recipe(path, overrides("ia3"))
    # tiny ViT: qkv scales its 96 outputs, fc2 its 128 inputs, in each of 2 blocks
    assert report.adapter_tensors == {"ia3_out": {"layers": 2, "parameters": 192},
                                      "ia3_in": {"layers": 2, "parameters": 256}}
    dora = check_recipe(path, overrides("dora")).adapter_tensors
    assert set(dora) == {"lora_A", "lora_B", "dora_magnitude"} and dora["dora_magnitude"]["layers"] == 8
