"""`dora` and `ia3` through real PEFT, both ways, on the shipped backbone.

Export: PEFT's own `PeftModel.from_pretrained` (unmerged) and `merge_and_unload()` give the logits
of the model `pace eval --weights MERGED` scores, to 1e-5. Import: a folder PEFT made itself comes
in with PEFT's own logits. The IA3 adapters scale outputs (qkv, proj) and inputs (fc2) both, with
each vector random, so reading either rule the wrong way round moves the logits far past the bar.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from pace_cli import artifacts
from pace_cli.adapters import AdapterConfig, adapter_state_dict, inject_adapters
from pace_cli.artifacts import PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, export_peft
from pace_cli.cli import app
from pace_cli.evaluation import build_eval_model
from pace_cli.files import tensors as pio
from pace_cli.models import base_fingerprints, resolve_checkpoint
from pace_cli.recipe import load_recipe, recipe_to_toml

peft = pytest.importorskip("peft", reason="peft is not installed (it is in the `test` extra)")

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
BASE = "builtin:fmnist_vit"
MODEL = "vit_tiny_patch16_224"
KWARGS = dict(img_size=28, in_chans=1, patch_size=7, embed_dim=128, depth=6, num_heads=4)
CLASSES = 10
TOLERANCE = 1e-5
SMALL_DATA = ["data.source=synthetic", "data.synthetic_size=64", "data.synthetic_classes=10"]
# Both (IA)³ rules: qkv and proj scale their outputs, fc2 (the feed-forward layer) its input.
IA3 = dict(targets=("qkv", "proj", "fc2"), feedforward=("fc2",))
DORA = dict(targets=("qkv", "fc1"))


def base_model(num_classes: int = CLASSES) -> torch.nn.Module:
    model = timm.create_model(MODEL, num_classes=num_classes, **KWARGS)
    model.load_state_dict(load_file(str(resolve_checkpoint(BASE))), strict=True)
    return model.eval()


@torch.no_grad()
def logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    return model.eval()(x).float()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def make_recipe(tmp: Path, kind: str) -> Path:
    text = (ROOT / "recipes" / "quickstart.toml").read_text()
    text = text.replace('kind = "lora_mul+vpt_add"\nrank = 8', f'kind = "{kind}"\nrank = 4')
    path = tmp / f"{kind}.toml"
    path.write_text(text)
    return path


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Every trainable tensor moved away from its initial value, as training would (scales stay near 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith(("ia3_in", "ia3_out", "dora_magnitude", "ia3_l", "lora_magnitude_vector")):
                p.mul_(1 + 0.2 * noise)
            else:
                p.copy_(noise * 0.05)


def make_adapter(tmp: Path, kind: str, targets, feedforward=()) -> Path:
    recipe = load_recipe(make_recipe(tmp, kind))
    model = base_model()
    report = inject_adapters(model, AdapterConfig(kind=kind, rank=4, targets=targets, feedforward=feedforward),
                             num_classes=CLASSES)
    randomise(model)
    fingerprints = base_fingerprints(model)
    meta = artifacts.AdapterMetadata(
        kind=kind, rank=4, targets=list(targets), layers=report.adapted_layers, head="head",
        pace={"variant": "pace"}, timm_model=MODEL, timm_kwargs=KWARGS, num_classes=CLASSES,
        class_names=[str(i) for i in range(CLASSES)], base_fingerprint=fingerprints["float32"],
        base_checkpoint=BASE, recipe=recipe_to_toml(recipe), trainable_parameters=report.trainable_parameters,
        base_fingerprints=fingerprints).to_metadata()
    path = tmp / f"{kind}-adapter.safetensors"
    pio.save_tensors(path, adapter_state_dict(model), meta)
    return path


def eval_model(tmp: Path, kind: str, adapter: Path) -> torch.nn.Module:
    """The model `pace eval --weights MERGED` scores, MERGED written by `pace merge`."""
    merged = tmp / f"{adapter.stem}-merged.safetensors"
    result = runner.invoke(app, ["merge", BASE, str(adapter), "-o", str(merged), "--overwrite"])
    assert result.exit_code == 0, result.output
    recipe = load_recipe(make_recipe(tmp, kind), SMALL_DATA)
    return build_eval_model(recipe, weights=merged)[0]


@pytest.mark.parametrize("kind, layout", [("dora", DORA), ("ia3", IA3)], ids=["dora", "ia3"])
def test_peft_loads_the_export_with_the_merged_logits(tmp_path, kind, layout):
    adapter = make_adapter(tmp_path, kind, **layout)
    result = runner.invoke(app, ["export", str(adapter), "--format", "peft", "-o", str(tmp_path / "peft"), "--json"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "peft" / PEFT_CONFIG_FILE).read_text())
    expected = logits(eval_model(tmp_path, kind, adapter))

    unmerged = peft.PeftModel.from_pretrained(base_model(), str(tmp_path / "peft"))
    unloaded = peft.PeftModel.from_pretrained(base_model(), str(tmp_path / "peft")).merge_and_unload()
    assert max_diff(logits(unmerged), expected) <= TOLERANCE
    assert max_diff(logits(unloaded), expected) <= TOLERANCE
    assert max_diff(logits(base_model()), expected) > 100 * TOLERANCE
    if kind == "dora":
        assert config["peft_type"] == "LORA" and config["use_dora"] is True and config["lora_alpha"] == config["r"]
    else:
        assert config["peft_type"] == "IA3"
        assert config["feedforward_modules"] == [f"blocks.{i}.mlp.fc2" for i in range(6)]
        assert json.loads(result.output)["method"] == "IA3"


def test_a_wrong_ia3_rule_would_not_pass(tmp_path):
    """The bar can fail: the same IA3 vectors read with the rules swapped on fc2 give other logits."""
    adapter = make_adapter(tmp_path, "ia3", **IA3)
    export_peft(adapter, tmp_path / "peft")
    config_path = tmp_path / "peft" / PEFT_CONFIG_FILE
    config = json.loads(config_path.read_text())
    weights = load_file(str(tmp_path / "peft" / PEFT_WEIGHTS_FILE))
    # fc2 taken as output-scaled: its [1, d_in] vector becomes a [d_out, 1] one of the same values' mean
    swapped = {k: (v.mean().expand(128, 1).clone() if k.endswith("fc2.ia3_l") else v) for k, v in weights.items()}
    pio.save_tensors(tmp_path / "peft" / PEFT_WEIGHTS_FILE, swapped, {"format": "pt"})
    config_path.write_text(json.dumps({**config, "feedforward_modules": []}))
    wrong = peft.PeftModel.from_pretrained(base_model(), str(tmp_path / "peft"))
    assert max_diff(logits(wrong), logits(eval_model(tmp_path, "ia3", adapter))) > 100 * TOLERANCE


def peft_made(tmp: Path, config) -> tuple[torch.nn.Module, Path]:
    model = peft.get_peft_model(base_model(), config)
    randomise(model, seed=3)
    folder = tmp / "from-peft"
    model.save_pretrained(str(folder))
    return model.eval(), folder


@pytest.mark.parametrize("method", ["dora", "ia3"])
def test_import_of_a_peft_made_folder_matches_peft(tmp_path, method):
    if method == "dora":
        config = peft.LoraConfig(r=3, lora_alpha=12, target_modules=["qkv", "fc2"], use_dora=True,
                                 modules_to_save=["head"])
    else:
        config = peft.IA3Config(target_modules=["qkv", "attn.proj", "fc1", "fc2"], feedforward_modules=["fc1", "fc2"],
                                modules_to_save=["head"])
    peft_model, folder = peft_made(tmp_path, config)
    out = tmp_path / "imported.safetensors"
    result = runner.invoke(app, ["import-peft", str(folder), "--recipe", str(make_recipe(tmp_path, method)), "-o",
                                 str(out)])
    assert result.exit_code == 0, result.output
    assert artifacts.read_adapter(out).kind == method
    expected = logits(peft_model)
    assert max_diff(logits(eval_model(tmp_path, method, out)), expected) <= TOLERANCE
    unmerged = runner.invoke(app, ["eval", str(make_recipe(tmp_path, method)), "--adapter", str(out), "--unmerged",
                                   "--json", *[a for s in SMALL_DATA for a in ("--set", s)]])
    merged = runner.invoke(app, ["eval", str(make_recipe(tmp_path, method)), "--adapter", str(out), "--json",
                                 *[a for s in SMALL_DATA for a in ("--set", s)]])
    assert unmerged.exit_code == 0 and merged.exit_code == 0, unmerged.output + merged.output
    assert json.loads(unmerged.output)["top1"] == json.loads(merged.output)["top1"]
    assert max_diff(expected, logits(base_model())) > 100 * TOLERANCE


def test_import_refuses_dora_with_a_trained_bias(tmp_path):
    _, folder = peft_made(tmp_path, peft.LoraConfig(r=2, target_modules=["qkv"], use_dora=True, bias="lora_only",
                                                    modules_to_save=["head"]))
    result = runner.invoke(app, ["import-peft", str(folder), "--recipe", str(make_recipe(tmp_path, "dora")), "-o",
                                 str(tmp_path / "out.safetensors")])
    assert result.exit_code == 2 and "use_dora = true with a trained bias" in result.output, result.output
    assert not (tmp_path / "out.safetensors").exists()
