"""Multi-target evaluation: restricted logits against an independent computation, the CLI table and
JSON, and the errors; plus the recipe's [[eval.targets]] validation and round trip."""

from __future__ import annotations

import json

import pytest
import torch
from fake_data import make_fake_data
from helpers import tiny_recipe_text
from torch import nn
from typer.testing import CliRunner

from pace_cli.artifacts.base import export_base_weights
from pace_cli.cli import app
from pace_cli.data import PaceDataset
from pace_cli.errors import PaceError
from pace_cli.evaluation import head_indices, restricted_view, score_set
from pace_cli.recipe import load_recipe, parse_recipe, recipe_to_toml

runner = CliRunner()


# ---------------------------------------------------------------- restricted logits vs by hand


class _Table(PaceDataset):
    """Sample i is the tensor [i]; its label is given."""

    def __init__(self, labels, classes):
        super().__init__(source="table", split="t", classes=classes, labels=labels, transform=lambda x: x)

    def _raw(self, row):
        return torch.tensor([float(row)])


class _Lookup(nn.Module):
    """Returns fixed logits per sample: the image is the sample's index."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits[x[:, 0].long()]


def test_restricted_logits_match_an_independent_computation():
    torch.manual_seed(1)
    n, head = 40, 12
    logits = torch.randn(n, head)
    target_classes = ["2", "5", "7", "9", "11", "0"]  # the target's own class order
    labels = [i % len(target_classes) for i in range(n)]
    head_names = [str(i) for i in range(head)]
    ds = _Table(labels, target_classes)
    model = _Lookup(logits)

    heads = [int(c) for c in target_classes]
    true_head = torch.tensor([heads[label] for label in labels])
    # By hand: keep the columns of the classes present, argmax there, map back to head indices.
    present = sorted(set(true_head.tolist()))
    sub = logits[:, present]
    pred = torch.tensor(present)[sub.argmax(1)]
    top1 = (pred == true_head).float().mean().item()
    top5_idx = torch.tensor(present)[sub.topk(5, dim=1).indices]
    top5 = (top5_idx == true_head[:, None]).any(1).float().mean().item()
    full_top1 = (logits.argmax(1) == true_head).float().mean().item()
    full_top5 = (logits.topk(5, dim=1).indices == true_head[:, None]).any(1).float().mean().item()

    kw = dict(name="t", kind="target", source="table", class_map="name", batch_size=7, num_workers=0,
              device=torch.device("cpu"))
    restricted = score_set(model, ds, head_names, restrict=True, **kw)
    full = score_set(model, ds, head_names, restrict=False, **kw)
    assert restricted.scored_classes == 6 and full.scored_classes == head
    assert restricted.result.top1 == pytest.approx(top1) and restricted.result.top5 == pytest.approx(top5)
    assert full.result.top1 == pytest.approx(full_top1) and full.result.top5 == pytest.approx(full_top5)
    assert restricted.result.top1 >= full.result.top1  # fewer wrong answers to choose from
    assert restricted.result.samples == n


def test_restricted_view_keeps_only_present_classes():
    kept, labels = restricted_view([9, 2, 4], [0, 0, 2], num_outputs=10, restrict=True)
    assert kept == [4, 9] and labels == [1, 1, 0]
    kept, labels = restricted_view([9, 2, 4], [0, 0, 2], num_outputs=10, restrict=False)
    assert kept == list(range(10)) and labels == [9, 9, 4]


def test_head_indices_by_name_and_index():
    ds = _Table([0, 1], ["7", "3"])
    names = [str(i) for i in range(8)]
    assert head_indices(ds, names, "name", "x") == [7, 3]
    ds.class_ids = [7, 3]
    assert head_indices(ds, names, "index", "x") == [7, 3]
    with pytest.raises(PaceError, match=r"target 'far': label 9 is outside the head's 5 classes"):
        head_indices(_with_ids(["9"], [9]), names[:5], "index", "far")
    with pytest.raises(PaceError, match=r"target 'odd': class 'cat' is not one of the head's 8 classes"):
        head_indices(_Table([0], ["cat"]), names, "name", "odd")


def _with_ids(classes, ids):
    ds = _Table([0] * len(classes), classes)
    ds.class_ids = ids
    return ds


# ---------------------------------------------------------------- recipe keys

TARGET = """
[model]
name = "vit_tiny_patch16_224"
[data]
source = "digits"
{targets}
"""


def test_targets_round_trip_through_toml():
    recipe = parse_recipe(TARGET.format(targets="""
[[eval.targets]]
name = "a"
source = "synthetic"
split = "x"
restrict_logits = true
synthetic_classes = 3
[[eval.targets]]
name = "b"
source = "fewshot"
root = "/d/b"
split = "val"
image_dir = "."
class_map = "index"
restrict_logits = false
"""))
    assert [t.name for t in recipe.eval.targets] == ["a", "b"]
    text = recipe_to_toml(recipe)
    assert "[[eval.targets]]" in text and parse_recipe(text) == recipe
    assert parse_recipe(TARGET.format(targets="")).eval.targets == []


@pytest.mark.parametrize("targets, message", [
    ('[[eval.targets]]\nname = "a"\nsource = "digits"', r"missing required key \[eval\] targets\[0\].restrict_logits"),
    ('[[eval.targets]]\nname = "a"\nsource = "vtab1k"\nrestrict_logits = true', "target 'a': source = 'vtab1k' needs root"),
    ('[[eval.targets]]\nname = "a"\nsource = "digits"\nrestrict_logits = true\nimage_dir = "x"',
     "target 'a': image_dir is only read by source = 'fewshot' or 'fgvc'"),
    ('[[eval.targets]]\nname = "a"\nsource = "digits"\nrestrict_logits = true\nsynthetic_size = 4',
     "target 'a': synthetic_size is only read by source = 'synthetic'"),
    ('[[eval.targets]]\nname = "a"\nsource = "digits"\nrestrict_logits = true\n'
     '[[eval.targets]]\nname = "a"\nsource = "digits"\nrestrict_logits = false', "two targets are named 'a'"),
    ('[[eval.targets]]\nname = "a"\nsource = "digits"\nrestrict_logits = true\nclass_map = "wnid"',
     "class_map = 'wnid': must be 'name' or 'index'"),
])
def test_bad_targets_are_one_line_errors(targets, message):
    with pytest.raises(PaceError, match=message) as info:
        parse_recipe(TARGET.format(targets=targets))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- the CLI, end to end on fake data

TINY = tiny_recipe_text(
    model={"num_classes": 6, "kwargs": {"depth": 1}},
    data={"source": "vtab1k", "root": "unset", "train_split": "train800", "val_split": "val200",
          "test_split": "test", "eval_batch_size": 5},
    train={"device": "cpu"},
    eval={"targets": [
        {"name": "shifted", "source": "vtab1k", "root": "unset", "restrict_logits": True},
        {"name": "folders", "source": "imagefolder", "root": "unset", "split": "test", "restrict_logits": False},
        {"name": "lists", "source": "fewshot", "root": "unset", "split": "val", "image_dir": ".",
         "restrict_logits": True},
    ]},
)


@pytest.fixture()
def setup(tmp_path):
    def make(extra=""):
        recipe = make_fake_data(parse_recipe(TINY + extra), tmp_path / "data")
        path = tmp_path / "recipe.toml"
        path.write_text(recipe_to_toml(recipe))
        weights = tmp_path / "base.safetensors"
        if not weights.exists():
            export_base_weights(recipe, weights)
        return path, weights
    return make


def test_eval_scores_every_target_in_one_table_and_json(setup):
    recipe, weights = setup()
    result = runner.invoke(app, ["eval", str(recipe), "--weights", str(weights), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = [r["name"] for r in report["results"]]
    assert names == ["test", "shifted", "folders", "lists"]
    by = {r["name"]: r for r in report["results"]}
    assert by["test"]["kind"] == "recipe" and by["shifted"]["kind"] == "target"
    assert by["shifted"]["restrict_logits"] and by["shifted"]["scored_classes"] == 2  # 2 of the 3 fake classes
    assert by["folders"]["scored_classes"] == 6 and not by["folders"]["restrict_logits"]
    assert all(r["samples"] > 0 and 0 <= r["top1"] <= 1 for r in report["results"])
    targets = [by[n]["top1"] for n in ("shifted", "folders", "lists")]
    assert report["mean_target_top1"] == pytest.approx(sum(targets) / 3)

    # The recipe's own split scores as a plain eval does, with the old JSON shape.
    plain = runner.invoke(app, ["eval", str(recipe), "--weights", str(weights), "--json", "--no-targets"])
    assert plain.exit_code == 0, plain.output
    single = json.loads(plain.stdout)
    assert single["split"] == "test" and "results" not in single
    assert single["top1"] == pytest.approx(by["test"]["top1"]) and single["samples"] == by["test"]["samples"]

    table = runner.invoke(app, ["eval", str(recipe), "--weights", str(weights)])
    assert table.exit_code == 0, table.output
    for text in ("shifted", "folders", "lists", "mean over 3 targets", "2 of 6", "all 6",
                 "shifted: scored with logits restricted to the 2 classes it holds"):
        assert text in table.stdout


def test_a_target_label_outside_the_head_is_an_error_naming_it(setup, tmp_path):
    recipe, weights = setup()
    lists = tmp_path / "data" / "targets" / "2_lists" / "annotations" / "val_meta.list"
    lines = lists.read_text().splitlines()
    lists.write_text("\n".join(lines + [lines[0].rsplit(" ", 1)[0] + " 77"]) + "\n")
    result = runner.invoke(app, ["eval", str(recipe), "--weights", str(weights)])
    assert result.exit_code == 2
    assert "target 'lists': class '77' is not one of the head's 6 classes" in result.output
    head, _, tail = recipe.read_text().rpartition('class_map = "name"')  # the last target is "lists"
    recipe.write_text(head + 'class_map = "index"' + tail)
    result = runner.invoke(app, ["eval", str(recipe), "--weights", str(weights)])
    assert result.exit_code == 2 and "target 'lists': label 77 is outside the head's 6 classes" in result.output


def test_a_missing_target_folder_fails_before_the_model_is_built(setup, tmp_path):
    recipe, weights = setup()
    text = recipe.read_text()
    recipe.write_text(text.replace(str(tmp_path / "data" / "targets" / "1_folders"), str(tmp_path / "nowhere")))
    result = runner.invoke(app, ["eval", str(recipe), "--weights", str(weights)])
    assert result.exit_code == 2 and "nowhere does not exist" in result.output
    assert load_recipe(recipe).eval.targets[1].name == "folders"


def test_eval_with_an_adapter_scores_the_targets_too(setup, tmp_path):
    from pace_cli.training.loop import train

    recipe_path, _ = setup()
    recipe = load_recipe(recipe_path, ["train.epochs=1", "data.batch_size=4", f"output.dir={tmp_path / 'run'}",
                                       "data.val_split=\"\""])
    result = train(recipe)
    out = runner.invoke(app, ["eval", str(recipe_path), "--adapter", str(result.adapter_path), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert [r["name"] for r in report["results"]] == ["test", "shifted", "folders", "lists"]
    assert report["results"][1]["scored_classes"] == 2 and report["mean_target_top1"] is not None
