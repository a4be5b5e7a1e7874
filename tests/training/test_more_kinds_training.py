"""The kinds lora_add+vpt_add, bitfit, ssf and head in whole runs: resumed bit for bit, two
processes train what one does (keyed noise), `pace check` counts their parameters."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from helpers import stop_after, tiny_recipe_text
from typer.testing import CliRunner

from pace_cli.cli import app
from pace_cli.files.tensors import load_tensors
from pace_cli.recipe import parse_recipe
from pace_cli.training import StopRequest, TrainingInterrupted, train

KINDS = ("lora_add+vpt_add", "bitfit", "ssf", "head")
RECIPE = tiny_recipe_text(
    model={"drop_path_rate": 0.2},
    data={"batch_size": 8, "synthetic_classes": 4, "synthetic_size": 24},
    adapter={"rank": 3},
    pace={"variant": "pace", "sigma": 1.0},
    optim={"lr": 0.01, "warmup_epochs": 1},
    train={"epochs": 2, "log_every": 1, "device": "cpu"},
)
REPO = Path(__file__).resolve().parents[2]


def adapters(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path / "adapter.safetensors")


@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_and_resumed_run_is_bitwise_identical(tmp_path, kind):
    recipe = parse_recipe(RECIPE, [f"adapter.kind={kind}"])
    train(recipe, output_dir=tmp_path / "straight")
    stop = StopRequest()
    with pytest.raises(TrainingInterrupted):
        train(recipe, output_dir=tmp_path / "resumed", stop=stop, logger=stop_after(3, stop))
    train(recipe, output_dir=tmp_path / "resumed", resume=True)
    a, b = adapters(tmp_path / "straight"), adapters(tmp_path / "resumed")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    trained_from_zero = [k for k in a if not k.startswith("head.") and not k.endswith(("lora_A", "prompt_A"))]
    assert all(a[k].abs().max() > 0 for k in trained_from_zero)  # every zero-initialised tensor moved


def test_two_processes_train_what_one_does(tmp_path):
    for kind in KINDS:
        train(parse_recipe(RECIPE, [f"adapter.kind={kind}"]), output_dir=tmp_path / f"one-{kind}")
    jobs = [{"recipe": RECIPE, "overrides": [f"adapter.kind={kind}"], "out": str(tmp_path / f"two-{kind}")}
            for kind in KINDS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(REPO / "tests" / "training" / "distributed_jobs.py"), json.dumps(jobs)]
    launched = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    for kind in KINDS:
        one, two = adapters(tmp_path / f"one-{kind}"), adapters(tmp_path / f"two-{kind}")
        assert one.keys() == two.keys()
        # The key third of a qkv bias shift (delta_bias, ssf_shift) gets only rounding as gradient
        # (softmax ignores a constant added to every key; see test_distributed.without_key_bias_shift).
        diffs = {}
        for key in one:
            a, b = one[key], two[key]
            if key.endswith(("attn.qkv.delta_bias", "attn.qkv.ssf_shift")):
                third = a.numel() // 3
                a, b = torch.cat([a[:third], a[2 * third:]]), torch.cat([b[:third], b[2 * third:]])
            diffs[key] = (a - b).abs().max().item()
        assert max(diffs.values()) <= 1e-5, (kind, max(diffs.items(), key=lambda kv: kv[1]))


def test_pace_check_counts_each_kinds_parameters(tmp_path):
    """Trainable parameters of `pace check`, against counts read off the plain timm model."""
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2,
                              num_classes=4)
    linears = [m for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in ("qkv", "proj", "fc1", "fc2")
               and name.startswith("blocks.")]
    head = sum(p.numel() for p in model.head.parameters())
    rank = 3
    expected = {
        "lora_add+vpt_add": sum(rank * m.in_features + m.out_features * rank + m.out_features
                                + m.in_features * rank + rank for m in linears) + head,
        "bitfit": sum(m.out_features for m in linears) + head,
        "ssf": sum(2 * m.out_features for m in linears) + head,
        "head": head,
    }
    runner = CliRunner()
    for kind, count in expected.items():
        result = runner.invoke(app, ["check", str(path), "--set", f"adapter.kind={kind}", "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output[result.output.index("{"):])
        assert report["trainable_parameters"] == count, kind


def test_l1_on_a_linear_probe_trains_like_no_l1(tmp_path):
    """l1 penalises adapter tensors; kind head has none, so the run equals one without it (and does not fail)."""
    overrides = ["adapter.kind=head", "train.epochs=1"]
    train(parse_recipe(RECIPE, overrides), output_dir=tmp_path / "plain")
    train(parse_recipe(RECIPE, overrides + ["regularizer.l1=0.01"]), output_dir=tmp_path / "l1")
    plain, with_l1 = adapters(tmp_path / "plain"), adapters(tmp_path / "l1")
    assert plain.keys() == with_l1.keys() and all(torch.equal(plain[k], with_l1[k]) for k in plain)
