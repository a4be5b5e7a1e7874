import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pace_cli.check import check_recipe, saved_activation_bytes
from pace_cli.cli import app
from pace_cli.files.tensors import save_tensors

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.toml"
runner = CliRunner()


def test_quickstart_passes_with_its_plan():
    report = check_recipe(QUICKSTART)
    assert report.ok, report.problems
    splits = {s.role: s for s in report.splits}
    assert splits["train"].samples == 80 and set(splits["train"].per_class.values()) == {8}  # 8 shots x 10
    assert splits["val"].samples == 359 and splits["test"].samples == 898 and "trainval" in splits
    assert report.num_classes == 10 and report.adapted_layers == 24  # qkv, proj, fc1, fc2 in 6 blocks
    assert report.trainable_parameters == 149706
    assert report.sigma_per_block["blocks.0"] == 1.0 and report.sigma_per_block["head"] == pytest.approx(1 / 7, abs=1e-6)
    assert report.steps_per_epoch == 5 and report.total_steps == 150
    memory = report.memory
    assert memory.images_per_step == 32  # pace runs each of the 16 images twice
    assert memory.activation_bytes == memory.activation_bytes_fixed + 32 * memory.activation_bytes_per_image
    assert 100_000 < memory.activation_bytes_per_image < 10_000_000


def test_broken_recipe_lists_every_problem_at_once(tmp_path):
    wrong_width = tmp_path / "wrong.safetensors"
    import timm
    base = timm.create_model("vit_tiny_patch16_224", img_size=28, in_chans=1, patch_size=7, embed_dim=64, depth=6,
                             num_heads=4, num_classes=10)
    save_tensors(wrong_width, {k: v.contiguous() for k, v in base.state_dict().items()})
    overrides = ["data.source=imagefolder", f"data.root={json.dumps(str(tmp_path / 'no-such-folder'))}",
                 "adapter.targets=['qkv', 'nope']", f"model.checkpoint={json.dumps(str(wrong_width))}"]
    report = check_recipe(QUICKSTART, overrides)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "no-such-folder does not exist" in text and text.count("does not exist") == 1  # once, not per split
    assert "targets pattern 'nope'" in text
    assert "wrong shape" in text and "cls_token" in text
    assert len(report.problems) == 3

    result = runner.invoke(app, ["check", str(QUICKSTART), *[a for o in overrides for a in ("--set", o)], "--json"])
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload["ok"] is False and len(payload["problems"]) == 3


def test_invalid_recipe_is_one_problem_and_missing_tensors_are_named(tmp_path):
    report = check_recipe(QUICKSTART, ["pace.sigma=-1", "optim.lr=0"])
    assert len(report.problems) == 1
    assert "[pace] sigma" in report.problems[0] and "[optim] lr" in report.problems[0]

    partial = tmp_path / "partial.safetensors"
    import torch
    save_tensors(partial, {"cls_token": torch.zeros(1, 1, 128), "extra.weight": torch.zeros(2)})
    report = check_recipe(QUICKSTART, [f"model.checkpoint={json.dumps(str(partial))}"])
    assert any("missing from the file" in p and "unknown to the model (e.g. extra.weight)" in p for p in report.problems)


def test_memory_estimate_counts_activations_not_weights():
    import timm
    import torch
    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32,
                                  num_heads=2, num_classes=5)
    one = saved_activation_bytes(model, (3, 32, 32), 1)
    four = saved_activation_bytes(model, (3, 32, 32), 4)
    # Linear in its own words: per image, at least each block's input (17 tokens x 32 floats) is saved
    assert four - one >= 3 * 2 * 17 * 32 * 4
    assert four - one == pytest.approx(3 * (saved_activation_bytes(model, (3, 32, 32), 2) - one), rel=0.05)


def test_check_command_prints_the_plan():
    result = runner.invoke(app, ["check", str(QUICKSTART), "--set", "pace.variant=off"])
    assert result.exit_code == 0, result.output
    assert "ready to train" in result.stdout and "150 in all" in result.stdout and "variant = 'off'" in result.stdout
