"""File-to-file merging: the streaming safetensors writer, the plain-read base and merge_files."""

import dataclasses
import json
import random
import struct

import pytest
import torch
from helpers import tiny_vit
from safetensors.torch import load_file

import pace_cli.files.tensors as pio
from pace_cli import artifacts
from pace_cli.adapters import AdapterConfig, adapter_state_dict, inject_adapters, merge_state_dict
from pace_cli.artifacts import streaming_merge
from pace_cli.errors import PaceError
from pace_cli.files import header


def _bits(t: torch.Tensor) -> torch.Tensor:
    # compare raw bytes, so NaN payloads and signed zeros count too
    return t.contiguous().reshape(-1).view(torch.uint8)


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(_bits(a[k]), _bits(b[k])), k


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def _mixed_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "w32": torch.randn(5, 3, generator=g),
        "wbf16": torch.randn(7, 3, generator=g).to(torch.bfloat16),
        "wf16": torch.randn(3, generator=g).to(torch.float16),
        "nan": torch.tensor([float("nan"), -0.0, float("inf")]),
        "steps": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(5, dtype=torch.uint8),
        "empty": torch.zeros(0, 4),
        "view": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
    }


# ---------------------------------------------------------------- the streaming writer


@pytest.mark.parametrize("metadata", [None, {"kind": "adapter", "rank": 10, "note": "é ü"}])
def test_streaming_writer_matches_save_tensors(tmp_path, metadata):
    tensors = _mixed_tensors()
    entries = [(k, v.dtype, v.shape) for k, v in tensors.items()]
    order = list(tensors)
    random.Random(1).shuffle(order)  # produced in any order, written to its declared place
    path = tmp_path / "s.safetensors"
    size = pio.save_tensors_streaming(path, entries, ((k, tensors[k]) for k in order), metadata)
    reference = tmp_path / "r.safetensors"
    pio.save_tensors(reference, tensors, metadata)

    assert size == path.stat().st_size
    _assert_same_tensors(load_file(str(path)), tensors)
    _assert_same_tensors(pio.load_tensors(path), load_file(str(reference)))
    assert header.read_metadata(path) == header.read_metadata(reference)
    assert header.tensor_info(path) == header.tensor_info(reference)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and json.loads(raw[8:8 + n])  # padded with spaces, valid JSON
    assert _leftovers(tmp_path) == []


def test_streaming_writer_aligns_every_tensor(tmp_path):
    tensors = {"a": torch.zeros(3, dtype=torch.uint8), "b": torch.zeros(3, dtype=torch.float16),
               "c": torch.zeros(3, dtype=torch.float64), "d": torch.zeros(1)}
    path = tmp_path / "a.safetensors"
    pio.save_tensors_streaming(path, [(k, v.dtype, v.shape) for k, v in tensors.items()], tensors.items())
    data_start, layout = header.tensor_layout(path)
    assert data_start % 8 == 0
    for name, (_, _, begin, _) in layout.items():
        assert begin % tensors[name].element_size() == 0, name


@pytest.mark.parametrize("bad", ["undeclared", "shape", "dtype", "twice", "missing", "raises"])
def test_streaming_writer_refuses_and_leaves_nothing(tmp_path, bad):
    tensors = {"a": torch.ones(2, 3), "b": torch.ones(4)}
    entries = [(k, v.dtype, v.shape) for k, v in tensors.items()]

    def produce():
        yield "a", tensors["a"]
        if bad == "undeclared":
            yield "c", torch.ones(4)
        elif bad == "shape":
            yield "b", torch.ones(5)
        elif bad == "dtype":
            yield "b", torch.ones(4, dtype=torch.float64)
        elif bad == "twice":
            yield "a", tensors["a"]
        elif bad == "raises":
            raise PaceError("boom")
        if bad != "missing":
            yield "b", tensors["b"]

    path = tmp_path / "out.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(PaceError if bad == "raises" else ValueError):
        pio.save_tensors_streaming(path, entries, produce())
    assert path.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_lazy_safetensors_reads_what_load_file_reads(tmp_path):
    tensors = _mixed_tensors()
    path = tmp_path / "m.safetensors"
    pio.save_tensors(path, tensors)
    with artifacts.LazySafetensors(path) as lazy:
        assert list(lazy) == sorted(tensors)
        _assert_same_tensors(dict(lazy.items()), tensors)
        assert lazy.info("wbf16") == ("BF16", [7, 3])
        with pytest.raises(KeyError):
            lazy["nope"]


# ---------------------------------------------------------------- merge_files


KIND = "lora_mul+vpt_add"


def _make_files(tmp_path, dtype=torch.float32, kind=KIND):
    """A tiny ViT base file and an adapter file with non-zero adapters for it."""
    torch.manual_seed(0)
    model = tiny_vit(depth=2, num_classes=5)
    base_state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    base = tmp_path / "base.safetensors"
    pio.save_tensors(base, base_state)
    model.to(dtype)
    report = inject_adapters(model, AdapterConfig(kind=kind, rank=3), num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p.float()).to(p.dtype) * 0.1)
    meta = artifacts.AdapterMetadata(
        kind=kind, rank=3, targets=["qkv", "proj", "fc1", "fc2"], layers=report.adapted_layers, head="head",
        timm_model="vit_tiny_patch16_224", num_classes=3,
        base_fingerprint=artifacts.base_fingerprint(base_state, "head"),
        trainable_parameters=report.trainable_parameters).to_metadata()
    adapter = tmp_path / "adapter.safetensors"
    state = {k: v.float() for k, v in adapter_state_dict(model).items()}  # adapters are saved in float32
    pio.save_tensors(adapter, state, meta)
    return base, adapter, base_state, state


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["lora_mul+vpt_add", "lora_add"])
def test_merge_files_equals_in_memory_merge(tmp_path, dtype, kind):
    base, adapter, base_state, adapter_state = _make_files(tmp_path, dtype, kind)
    out = tmp_path / "merged.safetensors"
    report = artifacts.merge_files(base, adapter, out)

    merged = load_file(str(out))
    _assert_same_tensors(merged, merge_state_dict(base_state, adapter_state, kind))
    assert all(v.dtype == dtype for v in merged.values())
    assert report.fingerprint_ok and report.tensors == len(merged) and report.output_bytes == out.stat().st_size
    meta = artifacts.read_file_metadata(out)
    assert meta["format"] == artifacts.MERGED_FORMAT and meta["fingerprint_checked"] is True
    assert meta["base_fingerprint"] == artifacts.base_fingerprint(base_state, "head")
    plain = tiny_vit(depth=2, num_classes=3).to(dtype)
    plain.load_state_dict(merged, strict=True)
    assert _leftovers(tmp_path) == []


def test_merge_files_refuses_other_base_without_writing(tmp_path):
    base, adapter, base_state, adapter_state = _make_files(tmp_path)
    other = dict(base_state)
    other["blocks.1.mlp.fc2.weight"] = other["blocks.1.mlp.fc2.weight"] + 1e-3  # read late in the merge
    other_path = tmp_path / "other.safetensors"
    pio.save_tensors(other_path, other)
    out = tmp_path / "merged.safetensors"
    with pytest.raises(PaceError, match="--force"):
        artifacts.merge_files(other_path, adapter, out)
    assert not out.exists() and _leftovers(tmp_path) == []

    out.write_bytes(b"keep me")
    with pytest.raises(PaceError, match="--force"):
        artifacts.merge_files(other_path, adapter, out, overwrite=True)
    assert out.read_bytes() == b"keep me" and _leftovers(tmp_path) == []

    report = artifacts.merge_files(other_path, adapter, out, overwrite=True, force=True)
    assert not report.fingerprint_ok
    meta = artifacts.read_file_metadata(out)
    assert meta["fingerprint_checked"] is False
    assert meta["base_fingerprint"] == artifacts.base_fingerprint(other, "head")
    _assert_same_tensors(load_file(str(out)), merge_state_dict(other, adapter_state, KIND))


def test_merge_files_fingerprint_while_reading_equals_separate_pass(tmp_path):
    base, _, base_state, _ = _make_files(tmp_path)
    with artifacts.LazySafetensors(base) as lazy:
        view = streaming_merge._FingerprintWhileReading(lazy, "head")
        for key in reversed(list(lazy)[::2]):  # out of order, and half of it unread
            view[key]
        assert view.result() == artifacts.base_fingerprint(base_state, "head")


def test_merge_files_error_during_merge_leaves_nothing(tmp_path):
    base, adapter, base_state, adapter_state = _make_files(tmp_path)
    bad = dict(adapter_state)
    bad["blocks.1.mlp.fc1.lora_B"] = torch.full_like(bad["blocks.1.mlp.fc1.lora_B"], float("nan"))
    bad_path = tmp_path / "bad.safetensors"
    pio.save_tensors(bad_path, bad, header.read_metadata(adapter))
    out = tmp_path / "merged.safetensors"
    with pytest.raises(PaceError, match="NaN"):
        artifacts.merge_files(base, bad_path, out)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_merge_files_refuses_an_adapter_that_records_no_base_unless_forced(tmp_path):
    base, adapter, base_state, adapter_state = _make_files(tmp_path)
    bare = tmp_path / "bare.safetensors"
    meta = artifacts.read_adapter(adapter).metadata
    pio.save_tensors(bare, adapter_state, dataclasses.replace(meta, base_fingerprint="").to_metadata())
    out = tmp_path / "merged.safetensors"
    with pytest.raises(PaceError, match="records no base fingerprint.*; pass --force to merge anyway"):
        artifacts.merge_files(base, bare, out)
    assert not out.exists() and _leftovers(tmp_path) == []
    report = artifacts.merge_files(base, bare, out, force=True)
    assert not report.fingerprint_ok and artifacts.read_file_metadata(out)["fingerprint_checked"] is False
