"""AdapterMetadata: the adapter file's metadata, written and read in one place, as pace always wrote it."""

import pytest
import torch

from pace_cli import __version__, artifacts, files
from pace_cli.artifacts import AdapterMetadata, TrainingRecord
from pace_cli.errors import PaceError

FINGERPRINTS = {"float32": "sha256:f32", "bfloat16": "sha256:bf16", "float16": "sha256:f16"}
RUN = TrainingRecord(val_top1=0.75, epochs=3, steps=12, recipe_json={"adapter": {"kind": "lora_add"}}, world_size=1)


def trained(**changes) -> AdapterMetadata:
    fields = dict(
        kind="lora_add", rank=4, targets=["qkv", "fc1"], layers=["blocks.0.attn.qkv", "blocks.0.mlp.fc1"],
        head="head", timm_model="vit_tiny_patch16_224", num_classes=3, base_fingerprint=FINGERPRINTS["float32"],
        trainable_parameters=123, pace={"variant": "pace", "lambda": 0.5}, timm_kwargs={"img_size": 32},
        class_names=["a", "b", "c"], base_checkpoint="base.safetensors", recipe='[adapter]\nkind = "lora_add"\n',
        base_fingerprints=FINGERPRINTS, training=RUN)
    fields.update(changes)
    return AdapterMetadata(**fields)


def written_before() -> dict:
    """What `pace train` wrote before AdapterMetadata existed: every key, in order, as literal values."""
    return {
        "format": "pace-adapter", "format_version": files.FORMAT_VERSION, "created_by": f"pace {__version__}",
        "adapter": {"kind": "lora_add", "rank": 4, "targets": ["qkv", "fc1"],
                    "layers": ["blocks.0.attn.qkv", "blocks.0.mlp.fc1"]},
        "head": "head", "pace": {"variant": "pace", "lambda": 0.5}, "timm_model": "vit_tiny_patch16_224",
        "timm_kwargs": {"img_size": 32}, "num_classes": 3, "class_names": ["a", "b", "c"],
        "base_fingerprint": "sha256:f32", "base_checkpoint": "base.safetensors", "trainable_parameters": 123,
        "recipe": '[adapter]\nkind = "lora_add"\n', "base_fingerprints": FINGERPRINTS, "val_top1": 0.75,
        "epochs": 3, "steps": 12, "recipe_json": {"adapter": {"kind": "lora_add"}}, "world_size": 1,
    }


def test_written_metadata_is_what_pace_wrote_before(tmp_path):
    assert list(trained().to_metadata().items()) == list(written_before().items())
    tensors = {"blocks.0.attn.qkv.lora_A": torch.ones(4, 8), "head.weight": torch.zeros(3, 8)}
    files.save_tensors(tmp_path / "before.safetensors", tensors, written_before())
    files.save_tensors(tmp_path / "now.safetensors", tensors, trained().to_metadata())
    # every stored string the same (safetensors itself writes the entries in no fixed order)
    assert files.read_metadata(tmp_path / "now.safetensors") == files.read_metadata(tmp_path / "before.safetensors")


def test_a_file_written_before_reads_back_as_the_same_record(tmp_path):
    path = tmp_path / "adapter.safetensors"
    files.save_tensors(path, {"head.weight": torch.zeros(3, 8)}, written_before())
    assert artifacts.read_adapter(path).metadata == trained()


def test_optional_parts_are_left_out_as_before():
    meta = trained(training=None, base_fingerprints={}, imported_from={"format": "peft"}).to_metadata()
    assert list(meta)[-2:] == ["recipe", "imported_from"] and "val_top1" not in meta
    # a run without validation records val_top1 = null, as it always did
    assert trained(training=RUN.__class__(None, 1, 2, {}, 1)).to_metadata()["val_top1"] is None


def test_the_base_matches_by_stored_precision_or_any_rounding():
    meta = trained()
    assert meta.matches_base("sha256:f32") and meta.matches_base("sha256:bf16")  # loaded into a model
    assert meta.matches_base("sha256:bf16", "bfloat16") and not meta.matches_base("sha256:f32", "bfloat16")
    assert meta.matches_base("sha256:f32", "float32") and meta.matches_base("sha256:f32", "mixed")
    assert meta.expected_fingerprint("float16") == "sha256:f16" and meta.expected_fingerprint("mixed") == "sha256:f32"
    assert not meta.matches_base("sha256:other")
    bare = trained(base_fingerprint="", base_fingerprints={})
    assert not bare.records_base and not bare.matches_base("") and not bare.matches_base("sha256:f32", "float32")
    only_float32 = trained(base_fingerprints={})  # written without per-rounding fingerprints
    assert only_float32.matches_base("sha256:f32", "bfloat16") and only_float32.records_base


@pytest.mark.parametrize("drop, entry", [("adapter", "adapter"), ("head", "head"), ("num_classes", "num_classes")])
def test_missing_entries_name_the_damaged_file(tmp_path, drop, entry):
    meta = written_before()
    del meta[drop]
    expected = f"'x.safetensors' lacks the '{entry}' metadata entry; the adapter file is damaged"
    with pytest.raises(PaceError, match=expected):
        AdapterMetadata.from_metadata(meta, source="x.safetensors")


def test_malformed_entries_name_the_damaged_file():
    meta = written_before()
    meta["adapter"] = {"kind": "lora_add", "rank": "four", "targets": []}
    with pytest.raises(PaceError, match="malformed 'adapter.rank' metadata entry; the adapter file is damaged"):
        AdapterMetadata.from_metadata(meta, source="x.safetensors")
    meta["adapter"] = {"kind": "lora_add", "rank": 4}
    with pytest.raises(PaceError, match="lacks the 'adapter.targets'"):
        AdapterMetadata.from_metadata(meta, source="x.safetensors")
