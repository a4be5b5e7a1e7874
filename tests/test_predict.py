"""`pace predict` on image files, and what `pace merge` now records for it (preprocessing, class names)."""
from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
import timm
import torch
from predict_fixtures import CLASSES, MEAN, STD, train_tiny
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from pace_cli import files
from pace_cli.artifacts import read_file_metadata
from pace_cli.cli import app
from pace_cli.data import collect_image_paths
from pace_cli.errors import PaceError

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("predict"))


@pytest.fixture()
def photos(tmp_path, trained):
    """Nested folders with three good images, a corrupt .png, and a text file the walk must skip."""
    folder = tmp_path / "photos"
    (folder / "a" / "b").mkdir(parents=True)
    shutil.copy(trained.root / "test" / "cat" / "0.png", folder / "one.png")
    shutil.copy(trained.root / "test" / "dog" / "1.png", folder / "a" / "two.png")
    shutil.copy(trained.root / "test" / "eel" / "2.png", folder / "a" / "b" / "three.png")
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "a" / "notes.txt").write_text("not an image")
    return folder


def _predict(*args):
    return runner.invoke(app, ["predict", *map(str, args)])


def _csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_merge_records_preprocessing_and_classes_and_stays_a_timm_checkpoint(trained):
    meta = read_file_metadata(trained.merged)
    assert meta["preprocessing"] == {"image_size": 32, "channels": 3, "mean": MEAN, "std": STD, "resize": "square"}
    assert meta["class_names"] == CLASSES
    model = timm.create_model(meta["timm_model"], num_classes=3, **meta["timm_kwargs"])
    model.load_state_dict(load_file(str(trained.merged)), strict=True)


def test_folder_with_corrupt_and_non_image_files(trained, photos):
    result = _predict("--weights", trained.merged, photos, "--topk", 2, "--workers", 0)
    assert result.exit_code == 0, result.output
    rows = _csv_rows(result.stdout)
    assert [r["path"] for r in rows] == [str(photos / p) for p in ("one.png", "a/broken.png", "a/two.png",
                                                                  "a/b/three.png")]
    assert list(rows[0]) == ["path", "class_1", "prob_1", "class_2", "prob_2", "error"]
    broken = rows[1]
    assert broken["class_1"] == "" and "broken.png" in broken["error"] and "\n" not in broken["error"]
    for row in (rows[0], rows[2], rows[3]):
        assert row["error"] == "" and row["class_1"] in CLASSES and row["class_2"] in CLASSES
        assert 1.0 >= float(row["prob_1"]) >= float(row["prob_2"]) > 0
    assert "3 of 4 images predicted, 1 unreadable" in result.stderr


def test_a_named_non_image_file_is_a_row_not_a_crash(trained, photos):
    result = _predict("--weights", trained.merged, photos / "a" / "notes.txt", photos / "one.png", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["topk"] == [] and "notes.txt" in lines[0]["error"]
    assert lines[1]["error"] is None and len(lines[1]["topk"]) == 3  # topk 5 capped at the 3 classes


def test_strict_stops_at_the_first_unreadable_image_and_writes_nothing(trained, photos, tmp_path):
    out = tmp_path / "preds.csv"
    result = _predict("--weights", trained.merged, photos, "--strict", "-o", out)
    assert result.exit_code != 0
    assert "broken.png" in result.stderr and "--strict" in result.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_no_overwrite_without_the_flag(trained, photos, tmp_path):
    out = tmp_path / "preds.json"
    out.write_text("keep me")
    result = _predict("--weights", trained.merged, photos, "-o", out)
    assert result.exit_code != 0 and "--overwrite" in result.stderr and out.read_text() == "keep me"
    result = _predict("--weights", trained.merged, photos, "-o", out, "--overwrite", "--topk", 1)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())  # the format follows the suffix
    assert set(report) == {"model", "topk", "images", "failed", "predictions"}
    assert report["topk"] == 1 and report["images"] == 4 and report["failed"] == 1
    assert set(report["predictions"][0]) == {"path", "topk", "error"}
    assert set(report["predictions"][0]["topk"][0]) == {"class", "prob"}


def test_list_file_paths_are_relative_to_the_list(trained, photos):
    (photos / "a" / "list.txt").write_text("# two images\ntwo.png\n\nb/three.png\n")
    assert collect_image_paths([f"@{photos / 'a' / 'list.txt'}"]) == [photos / "a" / "two.png",
                                                                       photos / "a" / "b" / "three.png"]
    with pytest.raises(PaceError, match="not found"):
        collect_image_paths([photos / "missing.png"])


def test_predictions_agree_with_pace_eval_on_a_labelled_split(trained):
    """Same images, same model file: predict's top-1 scores exactly what `pace eval` reports."""
    test_split = trained.root / "test"
    result = _predict("--weights", trained.merged, test_split, "--format", "json", "--topk", 1, "--batch-size", 4)
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)["predictions"]
    hits = {name: [] for name in CLASSES}
    for row in predictions:
        truth = row["path"].split("/")[-2]
        hits[truth].append(row["topk"][0]["class"] == truth)
    evaluated = runner.invoke(app, ["eval", str(trained.recipe), "--weights", str(trained.merged), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    scored = json.loads(evaluated.stdout)
    assert scored["samples"] == len(predictions) == 9
    assert scored["top1"] == pytest.approx(sum(sum(h) for h in hits.values()) / 9)
    assert scored["per_class"] == pytest.approx({name: sum(h) / len(h) for name, h in hits.items()})


def test_probabilities_equal_a_hand_written_reading_of_the_files(trained, photos):
    """The documented preprocessing, written out with PIL and numpy: bicubic to 32x32, /255, (x - mean) / std."""
    import numpy as np
    from PIL import Image

    meta = read_file_metadata(trained.merged)
    model = timm.create_model(meta["timm_model"], num_classes=3, **meta["timm_kwargs"]).eval()
    model.load_state_dict(load_file(str(trained.merged)))
    names = [photos / "one.png", photos / "a" / "two.png", photos / "a" / "b" / "three.png"]
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC), np.float32) / 255
              for p in names]
    x = (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) - torch.tensor(MEAN)[:, None, None]) / torch.tensor(
        STD)[:, None, None]
    with torch.no_grad():
        expected = model(x).double().softmax(1)
    result = _predict("--weights", trained.merged, *names, "--format", "json", "--topk", 3)
    for row, probs in zip(json.loads(result.stdout)["predictions"], expected):
        got = {t["class"]: t["prob"] for t in row["topk"]}
        assert [got[name] for name in CLASSES] == pytest.approx(probs.tolist(), abs=1e-5)


def test_adapter_predicts_as_its_merged_file(trained, photos):
    merged = json.loads(_predict("--weights", trained.merged, photos, "--format", "json").stdout)
    adapted = _predict("--adapter", trained.adapter, photos, "--format", "json")
    assert adapted.exit_code == 0, adapted.output
    for a, b in zip(merged["predictions"], json.loads(adapted.stdout)["predictions"]):
        assert [t["class"] for t in a["topk"]] == [t["class"] for t in b["topk"]]
        assert [t["prob"] for t in a["topk"]] == pytest.approx([t["prob"] for t in b["topk"]], abs=1e-5)


def test_a_merged_file_without_preprocessing_takes_the_recipe(trained, photos, tmp_path):
    old = tmp_path / "old-merged.safetensors"
    meta = {k: v for k, v in files.read_metadata(trained.merged).items() if k != "preprocessing"}
    save_file(load_file(str(trained.merged)), str(old), metadata=meta)
    result = _predict("--weights", old, photos)
    assert result.exit_code != 0 and "--recipe" in result.stderr and "preprocessing" in result.stderr
    with_recipe = _predict("--weights", old, photos, "--recipe", trained.recipe, "--format", "json")
    plain = _predict("--weights", trained.merged, photos, "--format", "json")
    assert with_recipe.exit_code == 0, with_recipe.output
    assert json.loads(with_recipe.stdout)["predictions"] == json.loads(plain.stdout)["predictions"]


def test_exactly_one_model_and_an_unknown_format_are_refused(trained, photos):
    assert "exactly one model" in _predict(photos).stderr
    assert "exactly one model" in _predict("--weights", trained.merged, "--adapter", trained.adapter, photos).stderr
    result = _predict("--weights", trained.merged, photos, "--format", "xml")
    assert result.exit_code != 0 and "csv, json, jsonl" in result.stderr


def test_loader_workers_give_the_same_rows(trained, photos):
    serial = _predict("--weights", trained.merged, photos, "--workers", 0, "--batch-size", 2)
    parallel = _predict("--weights", trained.merged, photos, "--workers", 2, "--batch-size", 2)
    assert serial.exit_code == parallel.exit_code == 0
    assert serial.stdout == parallel.stdout


def test_ctrl_c_leaves_the_previous_output(trained, photos, tmp_path, monkeypatch):
    """Interrupted while predicting, or with the new file written but not yet in place: the old file stays."""
    import pace_cli.files.atomic as atomic
    import pace_cli.predict.run as run

    out = tmp_path / "preds.csv"
    out.write_text("previous")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    for module, name in ((run, "predict_images"), (atomic, "fsync_file")):
        with monkeypatch.context() as patch:
            patch.setattr(module, name, interrupted)
            result = _predict("--weights", trained.merged, photos, "-o", out, "--overwrite")
        assert result.exit_code == 130, name
        assert out.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["photos", "preds.csv"]
    assert _predict("--weights", trained.merged, photos, "-o", out, "--overwrite").exit_code == 0
    assert out.read_text().startswith("path,class_1")


def test_merge_goes_on_when_the_recorded_recipe_no_longer_parses(trained, tmp_path):
    from pace_cli.artifacts import merge_files

    adapter = tmp_path / "adapter.safetensors"
    meta = files.read_metadata(trained.adapter)
    meta["recipe"] = meta["recipe"] + "\n[data.gone]\nkey = 1\n"
    save_file(load_file(str(trained.adapter)), str(adapter), metadata=meta)
    merged = tmp_path / "merged.safetensors"
    merge_files(trained.base, adapter, merged)
    assert "preprocessing" not in read_file_metadata(merged)
    assert torch.equal(load_file(str(merged))["head.weight"], load_file(str(trained.merged))["head.weight"])
