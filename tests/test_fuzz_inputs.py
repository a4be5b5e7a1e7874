"""Fuzzing the inputs beside the recipe (issue 11): few-shot list files, PEFT folders, sweep grids.

Whatever the bytes, the reader must answer with a valid result or a PaceError (one line for the
user), never another exception: the recipe loader is fuzzed the same way in test_recipe.py.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import tiny_recipe_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from pace_cli.data import build_dataset
from pace_cli.errors import PaceError
from pace_cli.recipe import parse_recipe

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _assert_one_line(error: PaceError) -> None:
    assert str(error) and "\n" not in str(error), repr(str(error))


# ---------------------------------------------------------------- few-shot list files

_IMAGES = ("a.png", "b.png", "sub/c.png")


@pytest.fixture(scope="module")
def fewshot_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fewshot")
    for name in _IMAGES:
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 6), (10, 20, 30)).save(root / "images" / name)
    (root / "annotations").mkdir()
    (root / "annotations" / "train_meta.list.num_shot_1.seed_0").write_text("a.png 3\nb.png 7\n")
    return root


# Lines that look almost right: an existing or missing image, a label of any shape, odd spacing.
_token = st.one_of(st.sampled_from(_IMAGES + ("missing.png", "../a.png", "", "images/a.png")),
                   st.integers(-3, 12).map(str), st.sampled_from(["3", "7", "1e3", "0x7", "-0", "7.0", "nan", "٣"]),
                   st.text(max_size=8))
_line = st.one_of(st.lists(_token, max_size=4).map(lambda parts: " ".join(parts)),
                  st.lists(_token, max_size=3).map(lambda parts: "\t".join(parts)), st.text(max_size=30))
_list_text = st.one_of(st.lists(_line, max_size=6).map("\n".join), st.binary(max_size=60))


@FUZZ
@given(text=_list_text, split=st.sampled_from(["val", "test"]), with_train_space=st.booleans())
def test_fuzz_fewshot_list_files(fewshot_root, text, split, with_train_space):
    list_file = fewshot_root / "annotations" / f"{split}_meta.list"
    if isinstance(text, bytes):
        list_file.write_bytes(text)
    else:
        list_file.write_text(text, encoding="utf-8")
    try:
        ds = build_dataset("fewshot", split, root=fewshot_root, image_size=8,
                           list_shots=1 if with_train_space else None)
    except PaceError as error:
        _assert_one_line(error)
        return
    assert len(ds) > 0 and len(ds.labels) == len(ds)
    assert all(0 <= label < len(ds.classes) for label in ds.labels)
    image, label, _ = ds[0]
    assert image.shape == (3, 8, 8) and torch.isfinite(image).all()


# ---------------------------------------------------------------- PEFT folders

_TINY = tiny_recipe_text(data={"synthetic_classes": 3})

_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-4, 70), st.floats(allow_nan=True),
                          st.text(max_size=10), st.sampled_from(["LORA", "lora", "IA3", "none", "lora_only", "all",
                                                                 "pissa", "gaussian", "qkv", "head"]))
_json = st.recursive(_json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                     max_leaves=6)
_PEFT_KEYS = ["peft_type", "r", "lora_alpha", "target_modules", "modules_to_save", "bias", "use_rslora", "use_dora",
              "fan_in_fan_out", "rank_pattern", "alpha_pattern", "init_lora_weights", "layers_to_transform",
              "lora_bias", "task_type", "base_model_name_or_path"]
_GOOD = {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["blocks.0.attn.qkv"],
         "modules_to_save": ["head"], "bias": "none"}
_config = st.one_of(
    st.dictionaries(st.sampled_from(_PEFT_KEYS), _json, max_size=6).map(lambda changes: {**_GOOD, **changes}),
    _json,
)


@pytest.fixture(scope="module")
def peft_parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("peft")
    layer = "base_model.model.blocks.0.attn.qkv"
    tensors = {f"{layer}.lora_A.weight": torch.randn(2, 32), f"{layer}.lora_B.weight": torch.randn(96, 2),
               "base_model.model.head.weight": torch.randn(3, 32), "base_model.model.head.bias": torch.zeros(3)}
    save_file(tensors, str(folder / "weights.safetensors"))
    return folder / "weights.safetensors", parse_recipe(_TINY)


@FUZZ
@given(config=_config, raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_fuzz_peft_folders(peft_parts, config, raw):
    from pace_cli.artifacts import import_peft

    weights, recipe = peft_parts
    work = Path(tempfile.mkdtemp())
    try:
        folder = work / "peft"
        folder.mkdir()
        shutil.copy(weights, folder / "adapter_model.safetensors")
        text = raw if raw is not None else json.dumps(config, allow_nan=True).encode()
        (folder / "adapter_config.json").write_bytes(text)
        try:
            report = import_peft(folder, work / "out.safetensors", recipe)
        except PaceError as error:
            _assert_one_line(error)
            assert not (work / "out.safetensors").exists()
            return
        assert report.layers == 1 and math.isfinite(report.scaling)
        assert (work / "out.safetensors").is_file()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- sweep grids

_RECIPE_FOR_SWEEP = _TINY + 'trainval_split = "trainval"\n'
_grid_value = st.one_of(st.sampled_from(["0.1", "1", "-1", "1e400", "nan", "true", '"x"', "[1, 2]", "[", "]", "'",
                                         '"', ",", "{a = 1}", "off", "lazy"]), st.text(max_size=8))
_grid_key = st.one_of(st.sampled_from(["pace.lambda", "pace.sigma", "pace.variant", "train.seed", "data.seed",
                                       "adapter.rank", "model.kwargs.depth", "optim", "nope.x", "pace..sigma", ""]),
                      st.text(max_size=10))
_grid_spec = st.one_of(st.tuples(_grid_key, st.lists(_grid_value, max_size=4)).map(
    lambda kv: f"{kv[0]}={','.join(kv[1])}"), st.text(max_size=30))


@FUZZ
@given(specs=st.lists(_grid_spec, max_size=3), seeds=st.one_of(st.just("0"), st.text(max_size=8)))
def test_fuzz_sweep_grids(tmp_path_factory, specs, seeds):
    pytest.importorskip("pace_cli.sweep")
    from pace_cli.sweep import parse_seeds, plan_sweep

    work = tmp_path_factory.mktemp("sweep")
    recipe = work / "recipe.toml"
    recipe.write_text(_RECIPE_FOR_SWEEP)
    try:
        plan = plan_sweep(recipe, work / "out", grid=specs, seeds=parse_seeds(seeds))
    except PaceError as error:
        _assert_one_line(error)
        return
    assert plan.runs and len({run.run_dir for run in plan.runs}) == len(plan.runs)
    assert all(run.run_dir.parent.parent == work / "out" for run in plan.runs)  # no folder escapes the sweep
