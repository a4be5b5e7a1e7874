"""Interop: pace adapters out to Hugging Face PEFT, PEFT LoRAs back in, merged files through timm's own loader.

Everything runs on the shipped backbone (builtin:fmnist_vit, the quick start's timm model) with
adapter tensors set to random non-zero values, so every term (LoRA factors, bias shift, new head)
moves the logits. The PEFT tests use the real `peft` package and are skipped, with the reason
shown, only where it cannot be imported.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from pace_cli import artifacts
from pace_cli import io as pio
from pace_cli.adapters import AdapterConfig, adapter_state_dict, inject_adapters
from pace_cli.cli import app
from pace_cli.export import PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, export_peft, import_peft
from pace_cli.models import base_fingerprints, resolve_checkpoint
from pace_cli.recipe import load_recipe, recipe_to_toml
from pace_cli.session import build_eval_model

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
BASE = "builtin:fmnist_vit"
MODEL = "vit_tiny_patch16_224"
KWARGS = dict(img_size=28, in_chans=1, patch_size=7, embed_dim=128, depth=6, num_heads=4)
CLASSES = 10
TOLERANCE = 1e-5  # max abs logit difference allowed in float32 (the bar)


def peft_or_skip():
    return pytest.importorskip("peft", reason="peft is not installed (it is in the `test` extra: pip install -e '.[test]')")


def base_model(num_classes: int = CLASSES) -> torch.nn.Module:
    """The shipped backbone with its weights, as a user outside pace would build it."""
    model = timm.create_model(MODEL, num_classes=num_classes, **KWARGS)
    model.load_state_dict(load_file(str(resolve_checkpoint(BASE))), strict=True)
    return model.eval()


def images(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model: torch.nn.Module, x: torch.Tensor | None = None) -> torch.Tensor:
    return model.eval()(images() if x is None else x).float()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def make_recipe(tmp: Path, kind: str = "lora_add", rank: int = 4) -> Path:
    text = (ROOT / "recipes" / "quickstart.toml").read_text()
    text = text.replace('kind = "lora_mul+vpt_add"\nrank = 8', f'kind = "{kind}"\nrank = {rank}')
    assert f'kind = "{kind}"' in text
    path = tmp / f"{kind}.toml"
    path.write_text(text)
    return path


def make_adapter(tmp: Path, kind: str = "lora_add", rank: int = 4, bias_shift: bool = True, seed: int = 0) -> Path:
    """An adapter file on the shipped backbone, every trainable tensor random and non-zero (as if trained)."""
    recipe = load_recipe(make_recipe(tmp, kind, rank))
    model = base_model()
    report = inject_adapters(model, AdapterConfig(kind=kind, rank=rank), num_classes=CLASSES)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
                if name.endswith("delta_bias") and not bias_shift:
                    p.zero_()
    fingerprints = base_fingerprints(model)
    meta = artifacts.adapter_metadata(
        kind=kind, rank=rank, targets=list(recipe.adapter.targets), layers=report.adapted_layers, head="head",
        pace={"variant": "pace"}, timm_model=MODEL, timm_kwargs=KWARGS, num_classes=CLASSES,
        class_names=[str(i) for i in range(CLASSES)], base_fingerprint=fingerprints["float32"],
        base_checkpoint=BASE, recipe_toml=recipe_to_toml(recipe), trainable_parameters=report.trainable_parameters,
        extra={"base_fingerprints": fingerprints})
    path = tmp / f"{kind}-adapter.safetensors"
    pio.save_tensors(path, adapter_state_dict(model), meta)
    return path


def merged_model(tmp: Path, adapter: Path) -> tuple[torch.nn.Module, Path]:
    """pace's own result: `pace merge` to a file, loaded strictly into the plain timm model."""
    merged = tmp / f"{adapter.stem}-merged.safetensors"
    artifacts.merge_files(resolve_checkpoint(BASE), adapter, merged, overwrite=True)
    model = timm.create_model(MODEL, num_classes=CLASSES, **KWARGS)
    model.load_state_dict(load_file(str(merged)), strict=True)
    return model.eval(), merged


def check_one_line_error(result, expected: str, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert expected in errors[0], errors[0]
    return errors[0]


# ---------------------------------------------------------------- export: pace → PEFT


def test_export_writes_peft_format(tmp_path):
    adapter = make_adapter(tmp_path)
    out = tmp_path / "peft"
    result = runner.invoke(app, ["export", str(adapter), "--format", "peft", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["bias"] == "lora_only" and summary["rank"] == 4 and summary["fingerprint_ok"] is True

    config = json.loads((out / PEFT_CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 4  # scaling 1
    assert config["bias"] == "lora_only" and config["modules_to_save"] == ["head"]
    assert "blocks.0.attn.qkv" in config["target_modules"] and "proj" not in config["target_modules"]
    tensors = load_file(str(out / PEFT_WEIGHTS_FILE))
    own = pio.load_tensors(adapter)
    assert torch.equal(tensors["base_model.model.blocks.3.mlp.fc2.lora_A.weight"], own["blocks.3.mlp.fc2.lora_A"])
    assert torch.equal(tensors["base_model.model.head.weight"], own["head.weight"])
    # bias = "lora_only" holds the whole new bias b0 + Δb of each adapted layer, exactly as `pace merge` writes it
    _, merged = merged_model(tmp_path, adapter)
    assert torch.equal(tensors["base_model.model.blocks.2.attn.qkv.base_layer.bias"],
                       load_file(str(merged))["blocks.2.attn.qkv.bias"])
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name) == []


def test_peft_loads_export_with_merged_logits(tmp_path):
    peft = peft_or_skip()
    adapter = make_adapter(tmp_path)
    out = tmp_path / "peft"
    export_peft(adapter, out)
    merged, _ = merged_model(tmp_path, adapter)
    expected = logits(merged)

    loaded = peft.PeftModel.from_pretrained(base_model(), str(out))
    via_peft = logits(loaded)
    unloaded = logits(peft.PeftModel.from_pretrained(base_model(), str(out)).merge_and_unload())

    assert max_diff(via_peft, expected) <= TOLERANCE
    assert max_diff(unloaded, expected) <= TOLERANCE
    # The bar means something: the adapter moves the logits by far more than the tolerance,
    # and so does the bias shift alone.
    assert max_diff(logits(base_model()), expected) > 100 * TOLERANCE
    no_shift = {k: (torch.zeros_like(v) if k.endswith("delta_bias") else v) for k, v in pio.load_tensors(adapter).items()}
    shifted = artifacts.read_adapter(adapter)
    pio.save_tensors(tmp_path / "no-shift.safetensors", no_shift, pio.read_metadata(adapter))
    assert max_diff(logits(merged_model(tmp_path, tmp_path / "no-shift.safetensors")[0]), expected) > 100 * TOLERANCE
    assert shifted.kind == "lora_add"


def test_export_without_bias_shift_needs_no_base(tmp_path):
    peft = peft_or_skip()
    adapter = make_adapter(tmp_path, bias_shift=False)
    meta = pio.read_metadata(adapter)
    meta["base_checkpoint"] = ""  # nothing says where the base is, and nothing needs it
    pio.save_tensors(adapter, pio.load_tensors(adapter), meta)
    report = export_peft(adapter, tmp_path / "peft")
    assert report.bias == "none" and report.base is None
    assert not any(k.endswith("base_layer.bias") for k in load_file(str(tmp_path / "peft" / PEFT_WEIGHTS_FILE)))
    loaded = peft.PeftModel.from_pretrained(base_model(), str(tmp_path / "peft"))
    assert max_diff(logits(loaded), logits(merged_model(tmp_path, adapter)[0])) <= TOLERANCE


@pytest.mark.parametrize("kind", ["lora_mul", "vpt_add", "lora_mul+vpt_add"])
def test_export_refuses_kinds_peft_cannot_express(tmp_path, kind):
    adapter = make_adapter(tmp_path, kind=kind)
    out = tmp_path / "peft"
    result = runner.invoke(app, ["export", str(adapter), "--format", "peft", "-o", str(out)])
    line = check_one_line_error(result, "pace merge")
    assert kind in line and "exactly" in line
    assert not out.exists() and [p for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_export_refuses_the_wrong_base_and_keeps_the_old_folder(tmp_path):
    adapter = make_adapter(tmp_path)
    out = tmp_path / "peft"
    export_peft(adapter, out)
    before = (out / PEFT_WEIGHTS_FILE).read_bytes()
    other = {k: v + 1e-3 for k, v in load_file(str(resolve_checkpoint(BASE))).items()}
    save_file(other, str(tmp_path / "other.safetensors"))
    result = runner.invoke(app, ["export", str(adapter), "-o", str(out), "--base", str(tmp_path / "other.safetensors"),
                                 "--overwrite"])
    check_one_line_error(result, "fingerprint")
    assert (out / PEFT_WEIGHTS_FILE).read_bytes() == before
    check_one_line_error(runner.invoke(app, ["export", str(adapter), "-o", str(out)]), "--overwrite")
    assert runner.invoke(app, ["export", str(adapter), "-o", str(out), "--overwrite"]).exit_code == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    check_one_line_error(runner.invoke(app, ["export", str(adapter), "-o", str(tmp_path / "mine"), "--overwrite"]),
                         "other files")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    check_one_line_error(runner.invoke(app, ["export", str(adapter), "-o", str(out), "--format", "onnx"]), "onnx")
