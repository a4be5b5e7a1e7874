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
from pace_cli.adapters import AdapterConfig, adapter_state_dict, inject_adapters
from pace_cli.artifacts import PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, export_peft, import_peft
from pace_cli.cli import app
from pace_cli.evaluation import build_eval_model
from pace_cli.files import atomic, header
from pace_cli.files import tensors as pio
from pace_cli.models import base_fingerprints, resolve_checkpoint
from pace_cli.recipe import load_recipe, recipe_to_toml

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
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


# 64 random 1x28x28 images over 10 classes instead of the 899 test digits: evaluation here compares
# models with each other, so any data will do, and this keeps the tests at seconds.
SMALL_DATA = ["--set", "data.source=synthetic", "--set", "data.synthetic_size=64", "--set",
              "data.synthetic_classes=10"]


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
    meta = artifacts.AdapterMetadata(
        kind=kind, rank=rank, targets=list(recipe.adapter.targets), layers=report.adapted_layers, head="head",
        pace={"variant": "pace"}, timm_model=MODEL, timm_kwargs=KWARGS, num_classes=CLASSES,
        class_names=[str(i) for i in range(CLASSES)], base_fingerprint=fingerprints["float32"],
        base_checkpoint=BASE, recipe=recipe_to_toml(recipe), trainable_parameters=report.trainable_parameters,
        base_fingerprints=fingerprints).to_metadata()
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


# bitfit goes out as zero rank-1 LoRA factors with its biases as PEFT's lora_only bias; PEFT's
# merge_and_unload keeps that loaded bias, so the merged timm model is pace's merged file.
@pytest.mark.parametrize("kind", ["lora_add", "lora_add+vpt_add", "bitfit"])
def test_peft_loads_export_with_merged_logits(tmp_path, kind):
    peft = peft_or_skip()
    adapter = make_adapter(tmp_path, kind=kind)
    out = tmp_path / "peft"
    report = export_peft(adapter, out)
    assert report.bias == "lora_only"
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
    pio.save_tensors(tmp_path / "no-shift.safetensors", no_shift, header.read_metadata(adapter))
    assert max_diff(logits(merged_model(tmp_path, tmp_path / "no-shift.safetensors")[0]), expected) > 100 * TOLERANCE


def test_peft_loads_export_of_a_swin_adapter(tmp_path):
    """Swin's classifier sits at head.fc and its attention runs per window: the mapping is not ViT-specific."""
    peft = peft_or_skip()
    from helpers import tiny_swin

    from pace_cli.adapters import merge_state_dict

    base_state = tiny_swin(num_classes=4).state_dict()
    save_file(base_state, str(tmp_path / "swin.safetensors"))
    model = tiny_swin(num_classes=4)
    model.load_state_dict(base_state)
    report = inject_adapters(model, AdapterConfig(kind="lora_add", rank=2), num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.1)
    assert report.head_name == "head.fc"
    meta = artifacts.AdapterMetadata(
        kind="lora_add", rank=2, targets=["qkv", "proj", "fc1", "fc2"], layers=report.adapted_layers,
        head="head.fc", timm_model="swin_tiny_patch4_window7_224", num_classes=3,
        base_fingerprint=artifacts.base_fingerprint(base_state, "head.fc"),
        base_checkpoint=str(tmp_path / "swin.safetensors"),
        trainable_parameters=report.trainable_parameters).to_metadata()
    adapter = tmp_path / "swin-adapter.safetensors"
    pio.save_tensors(adapter, adapter_state_dict(model), meta)
    export_peft(adapter, tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / PEFT_CONFIG_FILE).read_text())["modules_to_save"] == ["head.fc"]

    merged = tiny_swin(num_classes=3)
    merged.load_state_dict(merge_state_dict(base_state, pio.load_tensors(adapter), "lora_add"), strict=True)
    fresh = tiny_swin(num_classes=3)
    fresh.load_state_dict({k: v for k, v in base_state.items() if not k.startswith("head.")}, strict=False)
    x = torch.randn(4, 3, 32, 32)
    assert max_diff(logits(peft.PeftModel.from_pretrained(fresh, str(tmp_path / "peft")), x), logits(merged, x)) \
        <= TOLERANCE


def test_export_without_bias_shift_needs_no_base(tmp_path):
    peft = peft_or_skip()
    adapter = make_adapter(tmp_path, bias_shift=False)
    meta = header.read_metadata(adapter)
    meta["base_checkpoint"] = ""  # nothing says where the base is, and nothing needs it
    pio.save_tensors(adapter, pio.load_tensors(adapter), meta)
    report = export_peft(adapter, tmp_path / "peft")
    assert report.bias == "none" and report.base is None
    assert not any(k.endswith("base_layer.bias") for k in load_file(str(tmp_path / "peft" / PEFT_WEIGHTS_FILE)))
    loaded = peft.PeftModel.from_pretrained(base_model(), str(tmp_path / "peft"))
    assert max_diff(logits(loaded), logits(merged_model(tmp_path, adapter)[0])) <= TOLERANCE


@pytest.mark.parametrize("kind", ["lora_mul", "vpt_add", "lora_mul+vpt_add", "ssf", "head"])
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
    check_one_line_error(runner.invoke(app, ["export", str(adapter), "-o", str(out), "--format", "tflite"]), "tflite")


# ---------------------------------------------------------------- import: PEFT → pace


def test_round_trip_pace_peft_pace(tmp_path):
    adapter = make_adapter(tmp_path)
    recipe = make_recipe(tmp_path)
    export_peft(adapter, tmp_path / "peft")
    back = tmp_path / "back.safetensors"
    result = runner.invoke(app, ["import-peft", str(tmp_path / "peft"), "--recipe", str(recipe), "-o", str(back),
                                 "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["scaling"] == 1.0 and summary["head_from"] == "peft" and summary["layers"] == 24

    original, returned = pio.load_tensors(adapter), pio.load_tensors(back)
    assert set(returned) == set(original)
    for key, tensor in original.items():
        if key.endswith("delta_bias"):
            # travelled as b0 + Δb and came back as (b0 + Δb) − b0: equal up to float32 rounding of the bias
            assert torch.allclose(returned[key], tensor, rtol=0, atol=1e-6), key
        else:
            assert torch.equal(returned[key], tensor), key
    meta = artifacts.read_adapter(back).metadata
    assert meta.kind == "lora_add" and meta.rank == 4
    assert meta.base_fingerprint == artifacts.read_adapter(adapter).metadata.base_fingerprint
    assert meta.class_names == [str(i) for i in range(CLASSES)]  # carried in the export's metadata
    assert max_diff(logits(merged_model(tmp_path, back)[0]), logits(merged_model(tmp_path, adapter)[0])) <= TOLERANCE


def test_imported_adapter_works_with_merge_eval_inspect(tmp_path):
    adapter = make_adapter(tmp_path)
    recipe = make_recipe(tmp_path)
    export_peft(adapter, tmp_path / "peft")
    back = tmp_path / "back.safetensors"
    import_peft(tmp_path / "peft", back, load_recipe(recipe))

    inspected = runner.invoke(app, ["inspect", str(back), "--json"])
    assert inspected.exit_code == 0 and json.loads(inspected.output)["kind"] == "lora_add", inspected.output
    merged = tmp_path / "m.safetensors"
    merge = runner.invoke(app, ["merge", BASE, str(back), "-o", str(merged), "--json"])
    assert merge.exit_code == 0 and json.loads(merge.output)["fingerprint_ok"] is True, merge.output
    scores = {}
    for flag, path in [("--adapter", adapter), ("--adapter", back), ("--weights", merged)]:
        out = runner.invoke(app, ["eval", str(recipe), flag, str(path), "--json", *SMALL_DATA])
        assert out.exit_code == 0, out.output
        scores[(flag, path.name)] = json.loads(out.output)["top1"]
    assert len(set(scores.values())) == 1, scores
    unmerged = runner.invoke(app, ["eval", str(recipe), "--adapter", str(back), "--unmerged", "--json", *SMALL_DATA])
    assert unmerged.exit_code == 0 and json.loads(unmerged.output)["top1"] == scores[("--adapter", back.name)]


def peft_trained_lora(tmp: Path, **config) -> tuple[torch.nn.Module, Path]:
    """A LoRA made by PEFT itself on the shipped backbone, weights random (as if trained), saved by PEFT."""
    peft = peft_or_skip()
    options = dict(r=3, lora_alpha=12, target_modules=["qkv", "fc1", "fc2"], modules_to_save=["head"])
    options.update(config)
    model = peft.get_peft_model(base_model(), peft.LoraConfig(**options))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name or (options.get("bias", "none") != "none" and "base_layer.bias" in name):
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    folder = tmp / "from-peft"
    model.save_pretrained(str(folder))
    return model.eval(), folder


@pytest.mark.filterwarnings("ignore:.*LoRA tensor.*invalid shape")  # PEFT's ZeRO-3 check misreads lora_B.bias
@pytest.mark.parametrize("config", [
    dict(),                                            # scaling alpha / r = 4 folded into lora_B
    dict(use_rslora=True, bias="lora_only"),           # alpha / sqrt(r), trained biases of the LoRA layers
    dict(lora_bias=True),                              # a bias on lora_B, scaled like the product
    dict(bias="all", modules_to_save=None, target_modules=["blocks.1.attn.qkv"]),  # keeps the base's own head
], ids=["alpha", "rslora+lora_only", "lora_bias", "base_head"])
def test_import_of_a_peft_made_lora_matches_peft(tmp_path, config):
    peft_model, folder = peft_trained_lora(tmp_path, **config)
    extra = ["--set", f"model.num_classes={CLASSES}"] if config.get("modules_to_save", ["head"]) is None else []
    result = runner.invoke(app, ["import-peft", str(folder), "--recipe", str(make_recipe(tmp_path)),
                                 "-o", str(tmp_path / "imported.safetensors"), *extra])
    assert result.exit_code == 0, result.output
    merged, _ = merged_model(tmp_path, tmp_path / "imported.safetensors")
    assert max_diff(logits(merged), logits(peft_model)) <= TOLERANCE
    assert max_diff(logits(merged), logits(base_model())) > 100 * TOLERANCE


def write_peft_folder(tmp: Path, config: dict, tensors: dict | None = None) -> Path:
    folder = tmp / "peft"
    folder.mkdir(exist_ok=True)
    (folder / PEFT_CONFIG_FILE).write_text(json.dumps(config))
    if tensors is not None:
        save_file(tensors, str(folder / PEFT_WEIGHTS_FILE))
    return folder


LORA = {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["qkv"], "modules_to_save": ["head"]}
HEAD = {"base_model.model.head.weight": torch.zeros(CLASSES, 128), "base_model.model.head.bias": torch.zeros(CLASSES)}


def qkv_factors(path: str = "blocks.0.attn.qkv", d_in: int = 128, d_out: int = 384) -> dict:
    return {f"base_model.model.{path}.lora_A.weight": torch.randn(2, d_in),
            f"base_model.model.{path}.lora_B.weight": torch.randn(d_out, 2), **HEAD}


def case_no_folder(tmp):
    return tmp / "nope", "does not exist"


def case_no_config(tmp):
    (tmp / "peft").mkdir()
    return tmp / "peft", PEFT_CONFIG_FILE


def case_corrupt_config(tmp):
    folder = write_peft_folder(tmp, LORA, qkv_factors())
    (folder / PEFT_CONFIG_FILE).write_text('{"peft_type": "LORA", "r": ')
    return folder, "not valid JSON"


def case_no_weights(tmp):
    return write_peft_folder(tmp, LORA), "no adapter_model.safetensors"


def case_truncated_weights(tmp):
    folder = write_peft_folder(tmp, LORA, qkv_factors())
    data = (folder / PEFT_WEIGHTS_FILE).read_bytes()
    (folder / PEFT_WEIGHTS_FILE).write_bytes(data[:-64])
    return folder, "truncated"


def case_not_lora(tmp):
    return write_peft_folder(tmp, {"peft_type": "IA3", "target_modules": ["qkv"]}, qkv_factors()), "IA3"


@pytest.fixture(params=[("use_dora", True), ("fan_in_fan_out", True), ("rank_pattern", {"qkv": 4}),
                        ("alpha_pattern", {"qkv": 4}), ("init_lora_weights", "pissa")],
                ids=["use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "pissa"])
def unsupported_option(request):
    return request.param


def case_unknown_target(tmp):
    return write_peft_folder(tmp, LORA, qkv_factors("blocks.9.attn.qkv")), "blocks.9.attn.qkv"


def case_target_of_another_shape(tmp):
    return write_peft_folder(tmp, LORA, qkv_factors(d_in=768, d_out=2304)), "another model"


def case_conv_target(tmp):
    tensors = {"base_model.model.patch_embed.proj.lora_A.weight": torch.randn(2, 1, 7, 7),
               "base_model.model.patch_embed.proj.lora_B.weight": torch.randn(128, 2, 1, 1), **HEAD}
    return write_peft_folder(tmp, {**LORA, "target_modules": ["proj"]}, tensors), "Conv2d"


IMPORT_CASES = {name[len("case_"):]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(IMPORT_CASES))
def test_import_refuses_bad_folders_in_one_line(tmp_path, name):
    folder, expected = IMPORT_CASES[name](tmp_path)
    out = tmp_path / "out.safetensors"
    result = runner.invoke(app, ["import-peft", str(folder), "--recipe", str(make_recipe(tmp_path)), "-o", str(out)])
    check_one_line_error(result, expected)
    assert not out.exists()


def test_import_refuses_unsupported_options(tmp_path, unsupported_option):
    option, value = unsupported_option
    folder = write_peft_folder(tmp_path, {**LORA, option: value}, qkv_factors())
    out = tmp_path / "out.safetensors"
    result = runner.invoke(app, ["import-peft", str(folder), "--recipe", str(make_recipe(tmp_path)), "-o", str(out)])
    check_one_line_error(result, option)
    assert not out.exists()


# ---------------------------------------------------------------- timm's own loading path


def test_merged_file_loads_through_timm_pretrained_cfg_overlay(tmp_path):
    adapter = make_adapter(tmp_path)
    _, merged = merged_model(tmp_path, adapter)
    # What the README documents: num_classes goes in the overlay too, or timm drops the head
    # because it differs from the 1000 classes of the model's default pretrained config.
    model = timm.create_model(MODEL, pretrained=True, num_classes=CLASSES, **KWARGS,
                              pretrained_cfg_overlay=dict(file=str(merged), num_classes=CLASSES))
    recipe = load_recipe(make_recipe(tmp_path), SMALL_DATA[1::2])
    pace_model, _ = build_eval_model(recipe, weights=merged)  # what `pace eval --weights` runs
    digits = torch.cat([images(16, seed) for seed in range(2)])
    assert max_diff(logits(model, digits), logits(pace_model, digits)) == 0.0

    from pace_cli.builders import build_dataset
    from pace_cli.data import make_loader
    from pace_cli.evaluation import evaluate

    test_set = build_dataset(recipe, "test")
    result = evaluate(model, make_loader(test_set, 256, shuffle=False), class_names=test_set.classes, split="test")
    cli = runner.invoke(app, ["eval", str(make_recipe(tmp_path)), "--weights", str(merged), "--json", *SMALL_DATA])
    assert cli.exit_code == 0 and json.loads(cli.output)["top1"] == result.top1


def test_imported_adapter_records_what_it_holds(tmp_path):
    adapter = make_adapter(tmp_path, rank=3)
    export_peft(adapter, tmp_path / "peft")
    quickstart = load_recipe(ROOT / "recipes" / "quickstart.toml")  # [adapter] says lora_mul+vpt_add, rank 8
    import_peft(tmp_path / "peft", tmp_path / "back.safetensors", quickstart)
    meta = artifacts.read_adapter(tmp_path / "back.safetensors").metadata
    recorded = load_recipe_text(tmp_path, meta.recipe)
    assert (recorded.adapter.kind, recorded.adapter.rank) == ("lora_add", 3)
    assert meta.layers == list(recorded.adapter.targets) and len(meta.layers) == 24
    assert meta.imported_from["format"] == "peft" and meta.imported_from["scaling"] == 1.0


def load_recipe_text(tmp: Path, text: str):
    path = tmp / "recorded.toml"
    path.write_text(text)
    return load_recipe(path)


def test_atomic_dir_is_all_or_nothing(tmp_path):
    final = tmp_path / "out"
    with atomic.atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (final / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("interrupted while writing")
    assert (final / "a.txt").read_text() == "first"  # the old folder is untouched
    with atomic.atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # replaced whole, not mixed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or set-aside folders left


def test_import_reads_a_pickled_peft_folder_without_running_code(tmp_path):
    adapter = make_adapter(tmp_path)
    export_peft(adapter, tmp_path / "peft")
    recipe = load_recipe(make_recipe(tmp_path))
    import_peft(tmp_path / "peft", tmp_path / "from-safetensors.safetensors", recipe)
    weights = tmp_path / "peft" / PEFT_WEIGHTS_FILE
    torch.save(load_file(str(weights)), tmp_path / "peft" / "adapter_model.bin")  # older PEFT's format
    weights.unlink()
    import_peft(tmp_path / "peft", tmp_path / "from-bin.safetensors", recipe)
    a, b = pio.load_tensors(tmp_path / "from-safetensors.safetensors"), pio.load_tensors(tmp_path / "from-bin.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

    torch.save({"weights": load_file(str(tmp_path / "from-bin.safetensors")), "hook": print},
               tmp_path / "peft" / "adapter_model.bin")  # a pickle that references a callable is refused
    result = runner.invoke(app, ["import-peft", str(tmp_path / "peft"), "--recipe", str(make_recipe(tmp_path)),
                                 "-o", str(tmp_path / "x.safetensors")])
    check_one_line_error(result, "pickled code")
