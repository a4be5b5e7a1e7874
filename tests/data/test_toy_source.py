"""A new data source is one module (toy_source.py) plus one registry row, and nothing else.

With only ``monkeypatch.setitem(SOURCES, ...)``, the row drives recipe validation (name, splits,
root rule, the keys it reads), `pace check`, and a short training run.
"""

from __future__ import annotations

import json

import pytest
import toy_source
from helpers import tiny_recipe_text
from typer.testing import CliRunner

from pace_cli.cli import app
from pace_cli.data.sources import SOURCES
from pace_cli.errors import PaceError
from pace_cli.recipe import parse_recipe


def recipe_text(data: dict | None = None, **sections) -> str:
    """The tiny recipe on the toy source, with its own split names; ``data`` adds [data] keys."""
    return tiny_recipe_text(
        data={"source": "stripes", "train_split": "fit", "val_split": "holdout", "test_split": "exam",
              "batch_size": 8, "synthetic_classes": 4, **(data or {})},
        adapter={"rank": 2}, optim={"lr": 0.01, "warmup_epochs": 0},
        train={"epochs": 1, "device": "cpu", "log_every": 1}, **sections)


@pytest.fixture
def stripes(monkeypatch):
    monkeypatch.setitem(SOURCES, "stripes", toy_source.SPEC)


def _error(text: str, overrides=()) -> str:
    with pytest.raises(PaceError) as info:
        parse_recipe(text, overrides)
    return info.value.what


def test_unregistered_source_is_refused():
    assert "[data] source = 'stripes': must be one of imagefolder, vtab1k" in _error(recipe_text())


def test_validation_reads_the_row(stripes):
    recipe = parse_recipe(recipe_text())
    assert recipe.data.source == "stripes" and recipe.data.synthetic_classes == 4
    assert ("[data]: train_split = 'train' is not a split of source = 'stripes' (use one of fit, holdout, exam)"
            in _error(recipe_text(), ["data.train_split=train"]))
    assert "root is only read by source = 'imagefolder'" in _error(recipe_text({"root": "/d"}))
    assert "image_dir is only read by source = 'fewshot' or 'fgvc', not 'stripes'" in _error(
        recipe_text({"image_dir": "x"}))
    # options of the row: read by the new source, refused for the others that do not read them
    assert "synthetic_classes is only read by source = 'synthetic' or 'stripes', not 'digits'" in _error(
        recipe_text(), ["data.source=digits", "data.train_split=train", "data.val_split=val", "data.test_split=test"])
    def target(split: str) -> dict:
        return {"targets": [{"name": "again", "source": "stripes", "split": split, "seed": 3,
                             "restrict_logits": False}]}
    assert parse_recipe(recipe_text(eval=target("exam"))).eval.targets[0].seed == 3
    assert "target 'again': split = 'test' is not a split of source = 'stripes'" in _error(
        recipe_text(eval=target("test")))


def test_pace_check_builds_every_split(stripes, tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(recipe_text())
    result = CliRunner().invoke(app, ["check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["num_classes"] == 4
    assert {s["role"]: (s["split"], s["samples"]) for s in report["splits"]} == {
        "train": ("fit", 24), "val": ("holdout", 8), "test": ("exam", 12)}


def test_training_runs_on_it(stripes, tmp_path):
    from pace_cli.training.loop import train

    result = train(parse_recipe(recipe_text()), output_dir=tmp_path / "run")
    assert result.steps == 3 and result.adapter_path.is_file()
    assert result.val is not None and result.val.samples == 8
    saved = parse_recipe(result.recipe_path.read_text())
    assert saved.data.source == "stripes" and saved.data.train_split == "fit"
