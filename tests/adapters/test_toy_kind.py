"""A kind registered at run time is a kind like the built-in ones: recipe, check, train, eval, merge."""

import pytest
import torch
import toy_kind
from helpers import tiny_recipe_text, tiny_vit
from safetensors.torch import load_file
from typer.testing import CliRunner

from pace_cli import artifacts, files
from pace_cli.adapters.kinds import KINDS
from pace_cli.artifacts.base import export_base_weights
from pace_cli.check import check_recipe
from pace_cli.cli import app
from pace_cli.errors import PaceError
from pace_cli.evaluation import build_eval_model
from pace_cli.recipe import load_recipe
from pace_cli.training.loop import train

TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(KINDS, toy_kind.NAME, toy_kind.SPEC)


def write_recipe(tmp_path, kind=toy_kind.NAME):
    path = tmp_path / f"{kind}.toml"
    path.write_text(tiny_recipe_text(
        data={"batch_size": 16, "synthetic_classes": 4, "synthetic_size": 32},
        adapter={"kind": kind, "rank": 3}, pace={"variant": "pace", "sigma": 1.0, "lambda": 0.5},
        optim={"lr": 0.05, "warmup_epochs": 0}, train={"epochs": 1}, output={"dir": str(tmp_path / "run")}))
    return path


def test_recipe_validation_reads_the_registry_when_it_validates(tmp_path, toy):
    assert load_recipe(write_recipe(tmp_path)).adapter.kind == toy_kind.NAME
    with pytest.raises(PaceError, match="must be one of .*scaled_lora"):
        load_recipe(write_recipe(tmp_path, kind="no_such_kind"))


def test_unregistered_toy_kind_is_refused(tmp_path):
    with pytest.raises(PaceError, match=r"\[adapter\] kind = .scaled_lora.: must be one of"):
        load_recipe(write_recipe(tmp_path))


def test_pace_check_counts_the_toy_tensors(tmp_path, toy):
    recipe = write_recipe(tmp_path)
    result = CliRunner().invoke(app, ["check", str(recipe)])
    assert result.exit_code == 0, result.output
    report = check_recipe(recipe)
    assert report.ok and report.adapted_layers == 2 * len(TARGETS)
    d = 32  # embed_dim; fc1 is 32 -> 128 and fc2 128 -> 32, qkv 32 -> 96
    shapes = [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)]  # (d_in, d_out)
    adapter = 2 * sum(3 * d_in + d_out * 3 + d_out for d_in, d_out in shapes)
    head = d * 4 + 4
    assert report.trainable_parameters == adapter + head


def _dense_merge(base: dict, adapter: dict) -> dict:
    """W0 + SCALE · up @ down and b0 + shift, written out here independently of pace's merge."""
    merged = dict(base)
    for key in adapter:
        if key.endswith(".toy_down"):
            path = key.removesuffix(".toy_down")
            up, down = adapter[f"{path}.toy_up"].double(), adapter[key].double()
            merged[f"{path}.weight"] = (base[f"{path}.weight"].double() + toy_kind.SCALE * up @ down).float()
            merged[f"{path}.bias"] = (base[f"{path}.bias"].double() + adapter[f"{path}.toy_shift"].double()).float()
        elif not key.endswith((".toy_up", ".toy_shift")):
            merged[key] = adapter[key]  # the new head
    return merged


def test_toy_kind_trains_evaluates_and_merges(tmp_path, toy):
    recipe = load_recipe(write_recipe(tmp_path))
    result = train(recipe)
    adapter = artifacts.read_adapter(result.adapter_path)
    assert adapter.kind == toy_kind.NAME
    layer_tensors = {key.rpartition(".")[2] for key in adapter.tensors if key.startswith("blocks.")}
    assert layer_tensors == {"toy_down", "toy_up", "toy_shift"}
    ups = [t for key, t in adapter.tensors.items() if key.endswith(".toy_up")]
    assert len(ups) == 2 * len(TARGETS) and all(bool(t.any()) for t in ups)  # training moved every layer

    base = export_base_weights(recipe, tmp_path / "base.safetensors")
    merged_path = tmp_path / "merged.safetensors"
    report = artifacts.merge_files(base, result.adapter_path, merged_path)
    # the fingerprint left the toy tensors out, as it does the built-in ones
    assert report.fingerprint_ok and report.merged_layers == 2 * len(TARGETS)

    merged = load_file(str(merged_path))
    dense = _dense_merge(load_file(str(base)), adapter.tensors)
    assert set(merged) == set(dense)
    for key in dense:
        torch.testing.assert_close(merged[key], dense[key], rtol=1e-5, atol=1e-6)

    images = torch.randn(8, 3, 32, 32)
    plain = tiny_vit(depth=2, num_classes=4).eval()
    plain.load_state_dict(merged, strict=True)
    unmerged, _ = build_eval_model(recipe, adapter=result.adapter_path, unmerged=True)
    with torch.no_grad():
        merged_logits, unmerged_logits = plain(images), unmerged.eval()(images)
        plain.load_state_dict(dense, strict=True)
        dense_logits = plain(images)
    torch.testing.assert_close(merged_logits, unmerged_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(merged_logits, dense_logits, rtol=1e-4, atol=1e-4)


def test_toy_kind_is_refused_by_peft_export(tmp_path, toy):
    from pace_cli.adapters import AdapterConfig, adapter_state_dict, inject_adapters

    model = tiny_vit(depth=1, num_classes=3)
    report = inject_adapters(model, AdapterConfig(kind=toy_kind.NAME, rank=2), num_classes=3)
    meta = artifacts.AdapterMetadata(
        kind=toy_kind.NAME, rank=2, targets=list(AdapterConfig().targets), layers=report.adapted_layers,
        head="head", timm_model="vit_tiny_patch16_224", num_classes=3, base_fingerprint="sha256:0",
        trainable_parameters=report.trainable_parameters).to_metadata()
    path = tmp_path / "toy.safetensors"
    files.save_tensors(path, adapter_state_dict(model), meta)
    with pytest.raises(PaceError, match="PEFT has no exact equivalent"):
        artifacts.export_peft(path, tmp_path / "peft")
