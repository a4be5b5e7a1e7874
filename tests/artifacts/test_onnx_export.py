"""`pace export --format onnx`: one self-contained fp32 file that onnxruntime runs like PyTorch, and
`pace predict --onnx` giving what `pace predict --weights` gives."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from predict_fixtures import CLASSES, MEAN, STD, train_tiny
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from pace_cli import files
from pace_cli.artifacts import export_onnx, load_merged_model
from pace_cli.artifacts.merged_file import merge_first_line
from pace_cli.cli import app
from pace_cli.errors import PaceError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
TINY_SWIN = {"name": "swin_tiny_patch4_window7_224", "img_size": 32,
             "kwargs": {"patch_size": 2, "window_size": 4, "depths": [1, 1], "num_heads": [2, 4], "embed_dim": 16,
                        "depth": None}}


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("onnx_vit"))


def _ort_logits(path: Path, images: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": images.numpy()})[0])


def _check_file(path: Path, merged: Path, batch: int, *, channels: int, size: int) -> None:
    """Self-contained, fp32, and onnxruntime's logits within 1e-4 of PyTorch's scale at ``batch``."""
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in graph.graph.initializer)
    assert {init.data_type for init in graph.graph.initializer if init.dims and len(init.dims) > 1} == {
        onnx.TensorProto.FLOAT}
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".data" or ".tmp-" in p.name] == []
    model = load_merged_model(merged).model
    images = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(images)
    got = _ort_logits(path, images)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_vit_export_records_preprocessing_and_runs_at_another_batch(vit, tmp_path):
    out = tmp_path / "model.onnx"
    report = export_onnx(vit.merged, out, dynamic_batch=True)
    assert report.check.batch != report.export_batch and report.check.relative <= 1e-4
    assert 0 <= report.check.max_prob_diff <= report.check.max_logit_diff + 1e-12
    _check_file(out, vit.merged, batch=5, channels=3, size=32)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["pace.class_names"]) == CLASSES
    assert json.loads(props["pace.preprocessing"]) == {"image_size": 32, "channels": 3, "mean": MEAN, "std": STD,
                                                       "resize": "square"}


def test_swin_export(tmp_path):
    trained = train_tiny(tmp_path, model=TINY_SWIN)
    out = tmp_path / "swin.onnx"
    result = runner.invoke(app, ["export", str(trained.merged), "--format", "onnx", "-o", str(out),
                                 "--dynamic-batch", "--opset", "17"])
    assert result.exit_code == 0, result.output
    assert "max logit diff" in result.stdout and "batch 3" in result.stdout
    _check_file(out, trained.merged, batch=4, channels=3, size=32)


def test_shipped_backbone_quickstart_merged_model_exports(tmp_path):
    from pace_cli.artifacts import merge_files
    from pace_cli.models import resolve_checkpoint
    from pace_cli.recipe import load_recipe
    from pace_cli.training.loop import train

    recipe = load_recipe(ROOT / "recipes" / "quickstart.toml",
                         ["train.epochs=1", "data.shots=1", "output.dir=" + str(tmp_path / "qs")])
    adapter = train(recipe).adapter_path
    merged = tmp_path / "merged.safetensors"
    merge_files(resolve_checkpoint("builtin:fmnist_vit"), adapter, merged)
    out = tmp_path / "qs.onnx"
    result = runner.invoke(app, ["export", str(merged), "--format", "onnx", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["export_batch"] == summary["check_batch"] == 1 and summary["num_classes"] == 10
    _check_file(out, merged, batch=1, channels=1, size=28)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["pace.preprocessing"])["mean"] == [0.286]


def test_a_bf16_merged_file_exports_in_fp32(vit, tmp_path):
    half = tmp_path / "merged-bf16.safetensors"
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(str(vit.merged)).items()},
              str(half), metadata=files.read_metadata(vit.merged))
    out = tmp_path / "from-bf16.onnx"
    export_onnx(half, out, dynamic_batch=True)
    _check_file(out, half, batch=2, channels=3, size=32)


def test_predict_through_onnxruntime_equals_predict_through_pytorch(vit, tmp_path):
    dynamic, fixed = tmp_path / "dynamic.onnx", tmp_path / "fixed.onnx"
    export_onnx(vit.merged, dynamic, dynamic_batch=True)
    export_onnx(vit.merged, fixed)  # batch 1: predict feeds it one image at a time
    images = str(vit.root / "test")
    torch_rows = json.loads(runner.invoke(app, ["predict", "--weights", str(vit.merged), images, "--format",
                                                "json", "--topk", 3]).stdout)["predictions"]
    for model in (dynamic, fixed):
        result = runner.invoke(app, ["predict", "--onnx", str(model), images, "--format", "json", "--topk", 3,
                                     "--batch-size", 4])
        assert result.exit_code == 0, result.output
        onnx_rows = json.loads(result.stdout)["predictions"]
        assert len(onnx_rows) == len(torch_rows) == 9
        for a, b in zip(torch_rows, onnx_rows):
            assert a["path"] == b["path"]
            assert [t["class"] for t in a["topk"]] == [t["class"] for t in b["topk"]]
            assert [t["prob"] for t in a["topk"]] == pytest.approx([t["prob"] for t in b["topk"]], abs=1e-5)


def test_refusals(vit, tmp_path):
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", str(vit.adapter), "--format", "onnx", "-o", str(out)])
    assert result.exit_code != 0 and "is an adapter, not a merged model" in result.stderr
    assert merge_first_line(vit.adapter) in result.stderr
    for flag in (["--base", str(vit.base)], ["--force"]):
        result = runner.invoke(app, ["export", str(vit.merged), "--format", "onnx", "-o", str(out), *flag])
        assert result.exit_code != 0 and flag[0] in result.stderr and "onnx" in result.stderr
    result = runner.invoke(app, ["export", str(vit.adapter), "-o", str(tmp_path / "peft"), "--dynamic-batch"])
    assert result.exit_code != 0 and "--dynamic-batch only applies to --format onnx" in result.stderr
    assert not out.exists()
    out.write_text("old")
    with pytest.raises(PaceError, match="--overwrite"):
        export_onnx(vit.merged, out)
    assert out.read_text() == "old"


def test_without_the_extra_the_error_names_the_pip_install(vit, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = runner.invoke(app, ["export", str(vit.merged), "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code != 0
    assert "pip install 'pace-cli[onnx]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
