"""Every kind of bad input gets one line on stderr, a non-zero exit code, no traceback, no output file.

The cases double as the catalogue in docs/errors.md (`python scripts/error_catalogue.py` regenerates it).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from pathlib import Path

import pytest
import torch
from helpers import tiny_recipe_text
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from pace_cli.cli import app

runner = CliRunner()

BASE_RECIPE = tiny_recipe_text(data={"batch_size": 8, "synthetic_classes": 3, "synthetic_size": 24},
                               adapter={"rank": 2}, train={"epochs": 1})


def recipe(tmp: Path, text: str = BASE_RECIPE, **replace: str) -> Path:
    for old, new in replace.items():
        assert old.replace("_", " ") in text or old in text
        text = text.replace(old, new)
    path = tmp / "recipe.toml"
    path.write_text(text)
    return path


def recipe_with(tmp: Path, old: str, new: str) -> Path:
    assert old in BASE_RECIPE
    text = BASE_RECIPE.replace(old, new)
    if 'source = "synthetic"' not in text:  # another source: the synthetic set's keys would be refused
        text = text.replace("synthetic_classes = 3\nsynthetic_size = 24\n", "")
    path = tmp / "recipe.toml"
    path.write_text(text)
    return path


def train_args(tmp: Path, path: Path) -> list[str]:
    return ["train", str(path), "--output-dir", str(tmp / "run")]


def trained_adapter(tmp: Path, text: str = BASE_RECIPE) -> tuple[Path, Path]:
    path = tmp / "ok.toml"
    path.write_text(text)
    result = runner.invoke(app, ["train", str(path), "--output-dir", str(tmp / "ok"), "--json"])
    assert result.exit_code == 0, result.output
    base = tmp / "base.safetensors"
    assert runner.invoke(app, ["export-base", str(path), "-o", str(base)]).exit_code == 0
    return tmp / "ok" / "adapter.safetensors", base


def imagefolder(tmp: Path, bad_image: bool = False, per_class: int = 2) -> Path:
    for split in ("train", "val", "test"):
        for cls in ("a", "b"):
            folder = tmp / "images" / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
    if bad_image:
        (tmp / "images" / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return tmp / "images"


def imagefolder_recipe(tmp: Path, extra: str = "") -> Path:
    root = tmp / "images"
    return recipe_with(tmp, 'source = "synthetic"', f'source = "imagefolder"\nroot = "{root}"{extra}')


def vtab(tmp: Path, lines: str) -> Path:
    root = tmp / "vtab"
    (root / "images").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8)).save(root / "images" / f"{i}.jpg")
    for name in ("train800", "val200", "test"):
        (root / f"{name}.txt").write_text(lines)
    return recipe_with(tmp, 'source = "synthetic"',
                       f'source = "vtab1k"\nroot = "{root}"\ntrain_split = "train800"\nval_split = "val200"')


def case_malformed_toml(tmp):
    return train_args(tmp, recipe_with(tmp, "rank = 2", "rank = = 2")), "recipe.toml"


def case_unknown_key(tmp):
    return train_args(tmp, recipe_with(tmp, "rank = 2", "rnak = 2")), "rnak"


def case_wrong_type(tmp):
    return train_args(tmp, recipe_with(tmp, "epochs = 1", 'epochs = "one"')), "epochs"


@pytest.fixture(params=[("[adapter]\nrank = 2", "[adapter]\nrank = 0", "rank"),
                        ("[train]", "[pace]\nsigma = -1\n[train]", "sigma"),
                        ("[train]", "[pace]\nlambda = -0.5\n[train]", "lambda"),
                        ("[train]", "[optim]\nlr = 0\n[train]", "lr"),
                        ("epochs = 1", "epochs = 0", "epochs"),
                        ("batch_size = 8", "batch_size = 8\nshots = 0", "shots")],
                ids=["rank", "sigma", "lambda", "lr", "epochs", "shots"])
def out_of_range(request):
    return request.param


def case_unknown_kind(tmp):
    return train_args(tmp, recipe_with(tmp, "rank = 2", 'rank = 2\nkind = "lora_typo"')), "kind"


def case_unknown_variant(tmp):
    return train_args(tmp, recipe_with(tmp, "[train]", '[pace]\nvariant = "paec"\n[train]')), "variant"


def case_unknown_noise(tmp):
    return train_args(tmp, recipe_with(tmp, "[train]", '[pace]\nnoise = "pink"\n[train]')), "noise"


def case_one_pace_copy(tmp):
    return train_args(tmp, recipe_with(tmp, "[train]", "[pace]\ncopies = 1\n[train]")), "copies"


def case_negative_fpa_weight(tmp):
    return train_args(tmp, recipe_with(tmp, "[train]", "[regularizer]\nfpa = -0.5\n[train]")), "fpa"


def case_gradient_penalty_with_sam(tmp):
    return train_args(tmp, recipe_with(tmp, "[train]", "[regularizer]\ngp = 0.1\nsam_rho = 0.05\n[train]")), \
        "sam_rho"


def case_gradient_penalty_with_fast_pace(tmp):
    return train_args(tmp, recipe_with(tmp, "[train]", '[pace]\nvariant = "fast"\n[regularizer]\ngp = 0.1\n[train]')), \
        "[regularizer] gp"


def case_unknown_model(tmp):
    return train_args(tmp, recipe_with(tmp, 'name = "vit_tiny_patch16_224"', 'name = "vit_tinyy"')), "vit_tinyy"


def case_missing_checkpoint(tmp):
    return train_args(tmp, recipe_with(tmp, "img_size = 32", 'img_size = 32\ncheckpoint = "nope.safetensors"')), \
        "nope.safetensors"


def case_missing_data_folder(tmp):
    return train_args(tmp, recipe_with(tmp, 'source = "synthetic"',
                                       'source = "imagefolder"\nroot = "/no/such/folder"')), "/no/such/folder"


def case_empty_split(tmp):
    imagefolder(tmp)
    for png in (tmp / "images" / "val").rglob("*.png"):
        png.unlink()
    return train_args(tmp, imagefolder_recipe(tmp)), "val"


def case_too_few_shots(tmp):
    imagefolder(tmp, per_class=2)
    return train_args(tmp, imagefolder_recipe(tmp, "\nshots = 5")), "shots"


def case_label_out_of_range(tmp):
    path = vtab(tmp, "images/0.jpg 0\nimages/1.jpg 1\nimages/2.jpg 7\nimages/3.jpg 0\n")
    path.write_text(path.read_text().replace("img_size = 32", "img_size = 32\nnum_classes = 2"))
    return train_args(tmp, path), "num_classes"


def case_negative_label(tmp):
    return train_args(tmp, vtab(tmp, "images/0.jpg 0\nimages/1.jpg -1\n")), "line 2"


def case_undecodable_image(tmp):
    imagefolder(tmp, bad_image=True)
    return train_args(tmp, imagefolder_recipe(tmp)), "broken.png"


def case_truncated_safetensors(tmp):
    good = tmp / "good.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(good))
    cut = tmp / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    return ["inspect", str(cut)], "cut.safetensors"


def case_not_safetensors(tmp):
    path = tmp / "notes.safetensors"
    path.write_text("hello, I am a text file")
    return ["inspect", str(path)], "notes.safetensors"


def case_adapter_for_another_base(tmp):
    adapter, _ = trained_adapter(tmp)
    other = recipe_with(tmp, "embed_dim = 32", "embed_dim = 48")
    other_base = tmp / "other_base.safetensors"
    assert runner.invoke(app, ["export-base", str(other), "-o", str(other_base)]).exit_code == 0
    return ["merge", str(other_base), str(adapter), "-o", str(tmp / "merged.safetensors"), "--force"], "shape"


def case_base_passed_as_adapter(tmp):
    _, base = trained_adapter(tmp)
    return ["merge", str(base), str(base), "-o", str(tmp / "merged.safetensors")], "not a pace adapter"


def case_fingerprint_mismatch(tmp):
    adapter, _ = trained_adapter(tmp)
    other = recipe_with(tmp, "[train]\nepochs = 1", "[train]\nepochs = 1\nseed = 5")
    other_base = tmp / "other_base.safetensors"
    assert runner.invoke(app, ["export-base", str(other), "-o", str(other_base)]).exit_code == 0
    return ["merge", str(other_base), str(adapter), "-o", str(tmp / "merged.safetensors")], "--force"


def case_output_exists(tmp):
    adapter, base = trained_adapter(tmp)
    target = tmp / "merged.safetensors"
    target.write_bytes(b"precious")
    return ["merge", str(base), str(adapter), "-o", str(target)], "--overwrite"


def case_diverging_loss(tmp):
    path = recipe_with(tmp, "[train]", "[optim]\nlr = 1e30\nwarmup_epochs = 0\n[train]")
    return train_args(tmp, path), "diverged"


# ---- keys that the chosen source would ignore (issue 11): refused, never silently dropped


def case_root_for_a_source_without_files(tmp):
    return train_args(tmp, recipe_with(tmp, 'source = "synthetic"', 'source = "synthetic"\nroot = "data/x"')), "root"


def case_synthetic_key_for_another_source(tmp):
    path = recipe(tmp, BASE_RECIPE.replace('source = "synthetic"', 'source = "digits"'))
    return train_args(tmp, path), "synthetic_classes is only read by source = 'synthetic'"


def case_target_root_for_a_source_without_files(tmp):
    text = BASE_RECIPE + '[[eval.targets]]\nname = "d"\nsource = "digits"\nroot = "x"\nrestrict_logits = false\n'
    return train_args(tmp, recipe(tmp, text)), "target 'd': root is only read"


# ---- never lose work (issue 11): damaged checkpoints, busy folders, full disks, no network


def case_damaged_checkpoint_on_resume(tmp):
    path = recipe(tmp)
    assert runner.invoke(app, train_args(tmp, path)).exit_code == 0
    (tmp / "run" / "adapter.safetensors").unlink()  # as if stopped before the end
    checkpoint = tmp / "run" / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-64])
    return train_args(tmp, path) + ["--resume"], "--overwrite"


def case_output_folder_in_use(tmp):
    (tmp / "run").mkdir()
    # a live owner on this host: the test process itself
    (tmp / "run" / ".pace-lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                         "since": "2026-01-01 00:00:00 UTC"}))
    return train_args(tmp, recipe(tmp)), "in use by another pace run"


def case_disk_full_writing_the_adapter(tmp):
    return train_args(tmp, recipe(tmp)), "no space left on device"


def case_disk_full_merging(tmp):
    adapter, base = trained_adapter(tmp)
    return ["merge", str(base), str(adapter), "-o", str(tmp / "merged.safetensors")], "no space left on device"


def case_pretrained_weights_offline(tmp):
    path = recipe_with(tmp, "img_size = 32", "img_size = 32\npretrained = true")
    return train_args(tmp, path), "HF_HUB_OFFLINE is set"


def case_disk_full_writing_sweep_tables(tmp):
    return ["sweep", str(recipe(tmp)), "--grid", "pace.sigma=0.5", "-o", str(tmp / "sweep")], "no space left on device"


def case_sweep_folder_in_use(tmp):
    (tmp / "sweep").mkdir()
    (tmp / "sweep" / ".pace-lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                           "since": "2026-01-01 00:00:00 UTC"}))
    return ["sweep", str(recipe(tmp)), "--grid", "pace.sigma=0.5", "-o", str(tmp / "sweep")], "in use"


def asha_sweep(tmp, *flags: str) -> list[str]:
    """`pace sweep --scheduler asha` of the base recipe (one epoch, evaluated every epoch) with ``flags``."""
    pytest.importorskip("ray")  # the flags are checked by the Ray backend, before Ray starts
    return ["sweep", str(recipe(tmp)), "--grid", "pace.sigma=0.5,1", "-o", str(tmp / "sweep"), *flags]


def case_sweep_asha_with_the_sequential_backend(tmp):
    return (["sweep", str(recipe(tmp)), "--grid", "pace.sigma=0.5", "-o", str(tmp / "sweep"), "--scheduler", "asha"],
            "--scheduler is a --backend ray option; add --backend ray")


def case_sweep_asha_grace_epochs_below_one(tmp):
    return (asha_sweep(tmp, "--backend", "ray", "--scheduler", "asha", "--grace-epochs", "0", "--set", "train.epochs=4"),
            "--grace-epochs 0 must be >= 1")


def case_sweep_asha_reduction_factor_below_two(tmp):
    return (asha_sweep(tmp, "--backend", "ray", "--scheduler", "asha", "--reduction-factor", "1"),
            "--reduction-factor 1 must be >= 2")


def case_sweep_asha_grace_epochs_beyond_the_recipe(tmp):
    return (asha_sweep(tmp, "--backend", "ray", "--scheduler", "asha", "--grace-epochs", "4", "--set", "train.epochs=4"),
            "--grace-epochs 4 is not below [train] epochs = 4")


def case_sweep_asha_rung_not_evaluated(tmp):
    return (asha_sweep(tmp, "--backend", "ray", "--scheduler", "asha", "--grace-epochs", "3", "--set", "train.epochs=8",
                       "--set", "train.eval_every=2"),
            "--grace-epochs 3 is not an evaluated epoch: [train] eval_every = 2")


def case_sweep_asha_setting_without_validation(tmp):
    flags = ["--backend", "ray", "--scheduler", "asha", "--set", "train.epochs=4"]
    return (["sweep", str(recipe(tmp)), "--grid", 'data.val_split="val",""', "-o", str(tmp / "sweep"), *flags],
            "--scheduler asha judges settings on validation top-1, but setting val_split-_ has no [data] val_split")


def case_sweep_asha_option_without_asha(tmp):
    return (asha_sweep(tmp, "--backend", "ray", "--reduction-factor", "2"),
            "--reduction-factor is a --scheduler asha option")


def case_sweep_unknown_scheduler(tmp):
    return asha_sweep(tmp, "--backend", "ray", "--scheduler", "hyperband"), "unknown --scheduler 'hyperband'"


def case_disk_full_drawing_a_report(tmp):
    pytest.importorskip("matplotlib")
    assert runner.invoke(app, train_args(tmp, recipe(tmp))).exit_code == 0
    return ["report", str(tmp / "run"), "-o", str(tmp / "report.png")], "no space left on device"


def case_disk_full_exporting_peft(tmp):
    adapter, base = trained_adapter(tmp, BASE_RECIPE.replace("rank = 2", 'rank = 2\nkind = "lora_add"'))
    return ["export", str(adapter), "--base", str(base), "-o", str(tmp / "peft")], "no space left on device"


@contextlib.contextmanager
def _full_disk(name: str):
    """safetensors' writer and the streaming writer's files find the disk full for outputs called ``name``."""
    import pace_cli.files.tensors as pio

    def full(path):
        if Path(str(path)).name.startswith(f".{name}.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_save, real_open, real_replace = pio.save_file, open, os.replace
    pio.save_file = lambda tensors, path, **kw: (full(path), real_save(tensors, path, **kw))[1]
    pio.open = lambda path, *a, **kw: (full(path), real_open(path, *a, **kw))[1]
    os.replace = lambda src, dst: (full(src), real_replace(src, dst))[1]  # text files and PNGs
    try:
        yield
    finally:
        pio.save_file, os.replace = real_save, real_replace
        del pio.open


@contextlib.contextmanager
def _env(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# Conditions a case's command runs under (the catalogue script uses them too).
FAULTS = {
    "disk_full_writing_the_adapter": lambda: _full_disk("adapter.safetensors"),
    "disk_full_merging": lambda: _full_disk("merged.safetensors"),
    "disk_full_exporting_peft": lambda: _full_disk("adapter_model.safetensors"),
    "pretrained_weights_offline": lambda: _env(HF_HUB_OFFLINE="1"),
    "disk_full_writing_sweep_tables": lambda: _full_disk("sweep.csv"),
    "disk_full_drawing_a_report": lambda: _full_disk("report.png"),
}


# ---- interop (pace export / import-peft)


def peft_folder(tmp: Path, config: dict, layer: str = "blocks.0.attn.qkv") -> Path:
    """A PEFT LoRA folder for the tiny ViT of BASE_RECIPE (width 32, 3 classes)."""
    folder = tmp / "peft"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2,
                                                            "target_modules": ["qkv"], "modules_to_save": ["head"],
                                                            **config}))
    save_file({f"base_model.model.{layer}.lora_A.weight": torch.zeros(2, 32),
               f"base_model.model.{layer}.lora_B.weight": torch.zeros(96, 2),
               "base_model.model.head.weight": torch.zeros(3, 32), "base_model.model.head.bias": torch.zeros(3)},
              str(folder / "adapter_model.safetensors"))
    return folder


def import_args(tmp: Path, folder: Path) -> list[str]:
    return ["import-peft", str(folder), "--recipe", str(recipe(tmp)), "-o", str(tmp / "imported.safetensors")]


def case_export_kind_peft_cannot_express(tmp):
    adapter, _ = trained_adapter(tmp)  # lora_mul+vpt_add, the default kind
    return ["export", str(adapter), "--format", "peft", "-o", str(tmp / "peft")], "pace merge"


def case_export_ssf_to_peft(tmp):
    adapter, _ = trained_adapter(tmp, BASE_RECIPE.replace("rank = 2", 'kind = "ssf"'))
    return ["export", str(adapter), "--format", "peft", "-o", str(tmp / "peft")], "pace merge"


def case_bitfit_on_a_layer_without_bias(tmp):
    text = BASE_RECIPE.replace("rank = 2", 'kind = "bitfit"').replace("num_heads = 2", "num_heads = 2, qkv_bias = false")
    assert "qkv_bias" in text
    path = recipe(tmp, text)
    return train_args(tmp, path), "[adapter] targets: layer blocks.0.attn.qkv has no bias"


def case_import_peft_missing_folder(tmp):
    return import_args(tmp, tmp / "no_such_peft"), "does not exist"


def case_import_peft_not_lora(tmp):
    return import_args(tmp, peft_folder(tmp, {"peft_type": "IA3"})), "peft_type"


def case_import_peft_dora_without_its_magnitude(tmp):
    return import_args(tmp, peft_folder(tmp, {"use_dora": True})), "lora_magnitude_vector"


def case_import_peft_target_not_in_model(tmp):
    return import_args(tmp, peft_folder(tmp, {}, layer="blocks.5.attn.qkv")), "blocks.5.attn.qkv"


def case_import_peft_dora_with_a_trained_bias(tmp):
    return import_args(tmp, peft_folder(tmp, {"use_dora": True, "bias": "lora_only"})), "trained bias"


def case_import_peft_ia3_vector_against_its_feedforward_rule(tmp):
    folder = tmp / "peft"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "target_modules": ["qkv"],
                                                            "feedforward_modules": ["qkv"], "modules_to_save": ["head"]}))
    save_file({"base_model.model.blocks.0.attn.qkv.ia3_l": torch.ones(96, 1),  # output-scaled shape, feed-forward layer
               "base_model.model.head.weight": torch.zeros(3, 32), "base_model.model.head.bias": torch.zeros(3)},
              str(folder / "adapter_model.safetensors"))
    return import_args(tmp, folder), "feedforward_modules"


def case_feedforward_matches_no_targeted_layer(tmp):
    path = recipe_with(tmp, "[adapter]\nrank = 2", '[adapter]\nkind = "ia3"\nfeedforward = ["fc1"]')
    return train_args(tmp, path), "[adapter] feedforward pattern 'fc1'"


def case_batch_not_divisible_by_processes(tmp):
    # refused before any process is started, so the test needs no launcher
    return train_args(tmp, recipe_with(tmp, "batch_size = 8", "batch_size = 9")) + ["--nproc", "2"], "batch_size = 9"



def case_accumulate_not_dividing_the_batch(tmp):
    return train_args(tmp, recipe_with(tmp, "epochs = 1", "epochs = 1\naccumulate = 3")), "accumulate = 3"


def _augment_args(tmp, policy: str) -> list[str]:
    section = f'[augment]\ntransform = "timm"\nauto_augment = "{policy}"\n[train]'
    return train_args(tmp, recipe_with(tmp, "[train]", section))


def case_randaugment_string_timm_rejects(tmp):
    return _augment_args(tmp, "rand-m9-nope2"), "[augment] auto_augment"


def case_randaugment_section_timm_would_ignore(tmp):
    return _augment_args(tmp, "rand-m9-bogus"), "[augment] auto_augment"


def case_onnx_export_of_an_adapter(tmp):
    adapter, _ = trained_adapter(tmp)
    return ["export", str(adapter), "--format", "onnx", "-o", str(tmp / "model.onnx")], "pace merge"


def case_predict_without_images(tmp):
    adapter, _ = trained_adapter(tmp)
    (tmp / "photos").mkdir()
    (tmp / "photos" / "notes.txt").write_text("not an image")
    return ["predict", "--adapter", str(adapter), str(tmp / "photos")], "no images found"

def _tracked(tmp, trackers: str) -> Path:
    return recipe_with(tmp, "epochs = 1", f"epochs = 1\n\n[log]\ntrackers = {trackers}")


def case_unknown_tracker(tmp):
    return train_args(tmp, _tracked(tmp, '["tensorbord"]')), "[log] trackers"


def case_tracker_listed_twice(tmp):
    return train_args(tmp, _tracked(tmp, '["wandb", "wandb"]')), "listed twice"


def case_tracker_package_missing(tmp):
    return train_args(tmp, _tracked(tmp, '["wandb"]')), "pip install 'pace-cli[wandb]'"


def case_tracker_package_missing_in_a_sweep(tmp):
    return ["sweep", str(_tracked(tmp, '["mlflow"]')), "--grid", "pace.lambda=0.5,1", "-o", str(tmp / "sweep")], \
        "pip install 'pace-cli[mlflow]'"


@contextlib.contextmanager
def _hidden_module(name: str):
    """``import name`` fails, as where the package is not installed."""
    import sys

    saved = sys.modules.get(name)
    sys.modules[name] = None
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved


FAULTS.update({"tracker_package_missing": lambda: _hidden_module("wandb"),
               "tracker_package_missing_in_a_sweep": lambda: _hidden_module("mlflow")})

CASES = {name[len("case_"):]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}
EXIT_CODES = {"diverging_loss": 3}
# Failures late in a run keep its last checkpoint, on purpose: --resume continues from it.
KEEP_CHECKPOINT = {"diverging_loss", "disk_full_writing_the_adapter"}
# A sweep whose table cannot be written keeps the runs it finished (the same command again skips them).
KEEP_FINISHED_RUNS = {"disk_full_writing_sweep_tables"}


def check_clean_failure(result, expected: str, code: int = 2):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    assert expected in errors[0], errors[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clean_line(tmp_path, name):
    argv, expected = CASES[name](tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    with FAULTS.get(name, contextlib.nullcontext)():
        result = runner.invoke(app, argv)
    check_clean_failure(result, expected, EXIT_CODES.get(name, 2))
    created = {p for p in tmp_path.rglob("*")} - before
    assert not any(".tmp-" in p.name for p in created), created
    if name in KEEP_CHECKPOINT:
        assert not (tmp_path / "run" / "adapter.safetensors").exists()
    elif name not in KEEP_FINISHED_RUNS:
        assert not any(p.suffix == ".safetensors" for p in created), created
    if name == "output_exists":
        assert (tmp_path / "merged.safetensors").read_bytes() == b"precious"


def test_out_of_range_values(tmp_path, out_of_range):
    old, new, key = out_of_range
    result = runner.invoke(app, train_args(tmp_path, recipe_with(tmp_path, old, new)))
    check_clean_failure(result, key)
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "inspect", str(tmp_path / "missing.safetensors")])
    assert result.exit_code != 0 and result.exception is not None


def test_our_own_bugs_are_one_line_with_exit_1(tmp_path, monkeypatch):
    import pace_cli.artifacts.inspect as inspect_module

    def broken(path):
        raise ZeroDivisionError("division by zero\n  somewhere deep")
    monkeypatch.setattr(inspect_module, "describe_file", broken)
    result = runner.invoke(app, ["inspect", str(tmp_path / "any.safetensors")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("error: unexpected ZeroDivisionError: division by zero somewhere deep")
    assert "pace --debug" in lines[0]


def test_ctrl_c_outside_training_exits_130(tmp_path, monkeypatch):
    import pace_cli.artifacts.inspect as inspect_module

    def interrupted(path):
        raise KeyboardInterrupt
    monkeypatch.setattr(inspect_module, "describe_file", interrupted)
    result = runner.invoke(app, ["inspect", str(tmp_path / "any.safetensors")])
    assert result.exit_code == 130 and "interrupted" in result.output


def test_error_parts_render_as_one_line_and_copy_with_their_type():
    from pace_cli.errors import PaceError

    error = PaceError("bad\n  value", where="invalid recipe 'r.toml'", remedy="fix it", exit_code=3)
    assert str(error) == error.one_line() == "invalid recipe 'r.toml': bad value; fix it"
    assert str(PaceError("just a message")) == "just a message"

    class Special(PaceError):
        pass
    copy = Special("x", where="here").with_parts(remedy="do this")
    assert type(copy) is Special and str(copy) == "here: x; do this"
    again = error.with_parts(what="other")
    assert again.exit_code == 3 and str(again) == "invalid recipe 'r.toml': other; fix it" and error.what == "bad\n  value"
    with pytest.raises(TypeError, match="exit_code"):
        error.with_parts(exit_code=1)
