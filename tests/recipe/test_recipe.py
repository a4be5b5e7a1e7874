import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pace_cli.errors import PaceError
from pace_cli.recipe import SECTIONS, Recipe, apply_overrides, load_recipe, parse_recipe, recipe_to_dict, recipe_to_toml
from pace_cli.recipe.toml import toml_document

MINIMAL = """
[model]
name = "vit_tiny_patch16_224"

[data]
source = "synthetic"
"""

FULL = r'''
[model]
name = "vit_base_patch16_224"
checkpoint = "weights/vit \"b\"\\16.safetensors"
num_classes = 100
img_size = 224
in_chans = 3
drop_path_rate = 0.2
drop_rate = 0.05

[model.kwargs]
depth = 4
patch_size = 16
qkv_bias = false
act = "gelu"
"weird key" = [1, 2.5, "x", [true]]

[data]
source = "imagefolder"
root = "/data/cifar\tüñí"
train_split = "train800"
val_split = ""
test_split = "test"
batch_size = 32
eval_batch_size = 128
image_size = 224
channels = 3
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
shots = 8
seed = 3
num_workers = 2

[adapter]
kind = "lora_add"
rank = 4
targets = ["qkv", "fc2"]

[pace]
variant = "lazy"
lambda = 0.3
sigma = 0.7
lazy_interval = 3
noise_free_blocks = 1

[optim]
lr = 1.5e-3
weight_decay = 0.0
warmup_epochs = 0
min_lr = 1e-07
warmup_start_lr = 0.0
grad_clip = 1.0

[train]
epochs = 3
seed = 42
device = "cpu"
precision = "bf16"
eval_every = 2
log_every = 5

[output]
dir = "runs/exp 1"
'''


def _error(text, overrides=()):
    with pytest.raises(PaceError) as info:
        parse_recipe(text, overrides)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_defaults():
    r = parse_recipe(MINIMAL)
    assert r.model.checkpoint is None and r.model.pretrained is False and r.model.kwargs == {}
    assert r.model.drop_path_rate == 0.1 and r.data.val_split == "val" and r.data.batch_size == 64
    assert r.adapter.kind == "lora_mul+vpt_add" and r.adapter.rank == 10
    assert r.adapter.targets == ["qkv", "proj", "fc1", "fc2"]
    assert r.pace.variant == "pace" and r.pace.lambda_ == 1.0 and r.pace.lazy_interval == 2
    assert r.optim.lr == 1e-3 and r.optim.warmup_epochs == 2 and r.optim.grad_clip is None
    assert r.train.epochs == 20 and r.train.device == "auto" and r.train.precision == "fp32"
    assert r.output.dir == "runs/pace"
    assert tuple(recipe_to_dict(r)) == SECTIONS


def test_full_recipe_roundtrips():
    r = parse_recipe(FULL)
    assert r.data.val_split is None  # "" means unset
    assert r.model.kwargs["weird key"] == [1, 2.5, "x", [True]]
    assert r.data.root == "/data/cifar\tüñí"
    text = recipe_to_toml(r)
    assert parse_recipe(text) == r
    assert recipe_to_toml(parse_recipe(text)) == text
    assert text.index("[model]") < text.index("[model.kwargs]") < text.index("[data]")
    assert parse_recipe(recipe_to_toml(parse_recipe(MINIMAL))) == parse_recipe(MINIMAL)


def test_load_recipe_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(FULL, encoding="utf-8")
    assert load_recipe(path) == parse_recipe(FULL)
    assert load_recipe(str(path), ["train.epochs=9"]).train.epochs == 9
    with pytest.raises(PaceError, match="recipe file '.*missing.toml' not found"):
        load_recipe(tmp_path / "missing.toml")
    path.write_bytes(b"[model]\nname = \"\xff\"")
    with pytest.raises(PaceError, match="r.toml.*UTF-8"):
        load_recipe(path)
    path.write_text("[model\nname = 1\n")
    with pytest.raises(PaceError, match=r"r.toml' is not valid TOML: .*line 1, column"):
        load_recipe(path)


def test_lambda_alias_both_ways():
    r = parse_recipe(MINIMAL + "[pace]\nlambda = 0.25\n")
    assert r.pace.lambda_ == 0.25
    assert recipe_to_dict(r)["pace"]["lambda"] == 0.25 and "lambda_" not in recipe_to_dict(r)["pace"]
    assert "lambda = 0.25" in recipe_to_toml(r)
    assert parse_recipe(MINIMAL + "[pace]\nlambda_ = 0.5\n").pace.lambda_ == 0.5
    assert parse_recipe(MINIMAL, ["pace.lambda=2"]).pace.lambda_ == 2.0
    assert parse_recipe(MINIMAL, ["pace.lambda_=3"]).pace.lambda_ == 3.0
    assert Recipe.model_validate(recipe_to_dict(r)) == r


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("[adapter]\nrnak = 3", r"unknown key \[adapter\] rnak \(did you mean 'rank'\? allowed: kind, rank, targets, feedforward\)"),
        ("[adapter]\nzzz = 3", r"unknown key \[adapter\] zzz \(allowed: kind, rank, targets, feedforward\)"),
        ("[bogus]\nx = 1", r"unknown section \[bogus\]"),
        ("[train]\nepochs = \"ten\"", r"\[train\] epochs = 'ten': must be an integer"),
        ("[train]\nepochs = true", r"\[train\] epochs = true: must be an integer"),
        ("[optim]\nlr = \"fast\"", r"\[optim\] lr = 'fast': must be a number"),
        ("[adapter]\nrank = 0", r"\[adapter\] rank = 0: must be > 0"),
        ("[adapter]\nrank = -1", r"\[adapter\] rank = -1: must be > 0"),
        ("[adapter]\ntargets = []", r"\[adapter\] targets = \[\]: must not be empty"),
        ("[pace]\nsigma = -1", r"\[pace\] sigma = -1: must be >= 0"),
        ("[pace]\nlambda = -1", r"\[pace\] lambda = -1: must be >= 0"),
        ("[optim]\nlr = 0", r"\[optim\] lr = 0: must be > 0"),
        ("[optim]\nlr = inf", r"\[optim\] lr = inf: must be a finite number"),
        ("[train]\nepochs = 0", r"\[train\] epochs = 0: must be > 0"),
        ("[data]\nshots = 0", r"\[data\] shots = 0: must be > 0"),
        ("[pace]\nvariant = \"paec\"", r"\[pace\] variant = 'paec': must be one of off, pace, lazy, fast"),
        ("[train]\ndevice = \"gpu\"", r"\[train\] device = 'gpu': must be one of auto, cpu, cuda"),
        ("[model]\ndrop_path_rate = 1.0", r"\[model\] drop_path_rate = 1.0: must be < 1"),
    ],
)
def test_invalid_values_name_the_key(extra, expected):
    # later tables with the same name are illegal TOML, so splice [model]/[data] keys in place
    if extra.startswith("[model]"):
        text = MINIMAL.replace("[model]", extra)
    elif extra.startswith("[data]"):
        text = MINIMAL.replace("[data]", extra)
    else:
        text = MINIMAL + extra
    msg = _error(text)
    assert msg.startswith("invalid recipe '<recipe>': ")
    assert re.search(expected, msg), msg


def test_several_errors_join_on_one_line():
    msg = _error(MINIMAL + "[adapter]\nrank = 0\n[pace]\nvariant = \"x\"\n")
    assert "[adapter] rank" in msg and "; [pace] variant" in msg


def test_cross_field_rules():
    both = MINIMAL.replace("[model]", '[model]\ncheckpoint = "w.pth"\npretrained = true')
    assert "checkpoint and pretrained" in _error(both)
    assert "[model] checkpoint" in _error(MINIMAL.replace("[model]", '[model]\ncheckpoint = "w.txt"'))
    mismatch = MINIMAL.replace("[data]", "[data]\nmean = [0.5]\nstd = [0.2, 0.2]")
    assert "[data]" in _error(mismatch) and "mean has 1" in _error(mismatch)
    assert "[data] std" in _error(MINIMAL.replace("[data]", "[data]\nmean = [0.5]\nstd = [0]"))
    assert "needs root" in _error(MINIMAL.replace('"synthetic"', '"imagefolder"'))
    assert "set it as a [model] key" in _error(MINIMAL + "[model.kwargs]\nimg_size = 32\n")
    assert "[model] kwargs.bad" in _error(MINIMAL + "[model.kwargs]\nbad = {a = 1}\n")
    assert "missing required section [data]" in _error('[model]\nname = "x"\n')
    assert "missing required key [model] name" in _error('[model]\n[data]\nsource = "digits"\n')


def test_malformed_toml():
    msg = _error("[model\nname = 'x'")
    assert "not valid TOML" in msg and "line 1" in msg


def test_overrides():
    r = parse_recipe(
        MINIMAL,
        [
            "optim.lr=1e-2",
            "model.pretrained=true",
            "train.device=cpu",
            "data.source=imagefolder",
            "data.root=/some/where",
            "model.kwargs.depth=2",
            "adapter.targets=[\"qkv\"]",
            " train.epochs = 7 ",
            'data.val_split=""',
        ],
    )
    assert r.optim.lr == 1e-2 and r.model.pretrained is True and r.train.device == "cpu"
    assert r.data.root == "/some/where" and r.model.kwargs == {"depth": 2}
    assert r.adapter.targets == ["qkv"] and r.train.epochs == 7 and r.data.val_split is None
    assert "[train] epochs = 'x'" in _error(MINIMAL, ["train.epochs=x"])
    assert "unknown key [train] epoch " in _error(MINIMAL, ["train.epoch=3"])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epochs", "expected section.key=value"),
        ("epochs=3", "must be section.key"),
        ("bogus.x=1", r"unknown section \[bogus\]"),
        ("train..epochs=1", "must be section.key"),
        ("model.name.sub=1", "model.name is a value"),
    ],
)
def test_bad_override_syntax(override, expected):
    msg = _error(MINIMAL, [override])
    assert override in msg and re.search(expected, msg), msg


def test_apply_overrides_does_not_mutate():
    data = {"model": {"name": "x", "kwargs": {"depth": 1}}}
    out = apply_overrides(data, ["model.kwargs.depth=5"])
    assert data["model"]["kwargs"]["depth"] == 1 and out["model"]["kwargs"]["depth"] == 5


# ---------------------------------------------------------------- fuzzing

_scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
)
_values = _scalars | st.lists(_scalars, max_size=3)
_keys = st.sampled_from(
    ["name", "source", "rank", "lambda", "lr", "epochs", "kind", "targets", "mean", "std",
     "checkpoint", "pretrained", "kwargs", "device", "dir", "zzz"]
) | st.text(min_size=1, max_size=6)
_tables = st.dictionaries(
    st.sampled_from(list(SECTIONS) + ["extra"]), st.dictionaries(_keys, _values, max_size=5), max_size=8
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), _tables.map(toml_document)))
def test_fuzz_parse_recipe(text):
    try:
        r = parse_recipe(text)
    except PaceError as e:
        assert "\n" not in str(e)
    else:
        assert parse_recipe(recipe_to_toml(r)) == r


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=3))
def test_fuzz_overrides(overrides):
    try:
        parse_recipe(MINIMAL, overrides)
    except PaceError as e:
        assert "\n" not in str(e)


# ---- keys with no effect (issue 11): errors for keys no part of the run reads, warnings for switched-off ones


@pytest.mark.parametrize("extra, expected", [
    ('[data]\nsource = "digits"\nroot = "d"', "root is only read by source"),
    ('[data]\nsource = "synthetic"\nroot = "d"', "root is only read by source"),
    ('[data]\nsource = "digits"\nsynthetic_size = 8', "synthetic_size is only read by source = 'synthetic'"),
    ('[data]\nsource = "fashion-mnist"\nsynthetic_classes = 4', "synthetic_classes is only read"),
    ('[data]\nsource = "digits"\ncache = true', "cache is only read by source = 'imagefolder' or 'vtab1k'"),
    ('[data]\nsource = "fgvc"\nroot = "d"\ncache = false', "cache is only read by source"),
    ('[data]\nsource = "digits"\nroot = "d"\nsynthetic_size = 8', "root is only read by source = 'imagefolder' or "
     "'vtab1k' or 'fewshot' or 'fgvc' or 'fashion-mnist', not 'digits'; remove it; synthetic_size is only read"),
])
def test_keys_no_source_reads_are_refused(extra, expected):
    assert expected in _error('[model]\nname = "vit_tiny_patch16_224"\n' + extra)


@pytest.mark.parametrize("extra", [
    '[data]\nsource = "fashion-mnist"\nroot = "d"',          # optional root: read
    '[data]\nsource = "digits"\nseed = 2\nshots = 4',        # seed picks the k-shot subset
    '[data]\nsource = "synthetic"\nseed = 2',                 # seed of the generated set
    '[data]\nsource = "digits"\nsynthetic_classes = 10\nseed = 0',  # defaults written out change nothing
    '[data]\nsource = "digits"\ncache = "auto"',
    '[data]\nsource = "vtab1k"\nroot = "d"\ncache = true\ntrain_split = "train800"\nval_split = "val200"',
])
def test_keys_that_are_read_are_accepted(extra):
    parse_recipe('[model]\nname = "vit_tiny_patch16_224"\n' + extra)


def test_saved_recipe_of_any_source_loads_again():
    # recipe_to_toml writes every key; a default written out must never trip the no-effect rule
    for source in ("digits", "synthetic", "fashion-mnist"):
        r = parse_recipe(f'[model]\nname = "x"\n[data]\nsource = "{source}"')
        assert parse_recipe(recipe_to_toml(r)) == r


@pytest.mark.parametrize("pace, expected", [
    ('variant = "off"\nsigma = 1.5\nlambda = 0.5', "[pace] lambda, sigma set but ignored with variant = 'off'"),
    ('variant = "off"\nnoise_free_blocks = 1', "noise_free_blocks set but ignored"),
    ('variant = "pace"\nlazy_interval = 4', "lazy_interval set but ignored with variant = 'pace'"),
    ('variant = "fast"\nlazy_interval = 4', "lazy_interval set but ignored with variant = 'fast'"),
])
def test_switched_off_pace_keys_warn(pace, expected):
    from pace_cli.recipe import ineffective_settings

    notes = ineffective_settings(parse_recipe(MINIMAL + "[pace]\n" + pace))
    assert len(notes) == 1 and expected in notes[0]


def test_no_warning_for_keys_that_are_read():
    from pace_cli.recipe import ineffective_settings

    for pace in ('variant = "lazy"\nlazy_interval = 4\nsigma = 2.0', 'variant = "off"\nsigma = 1.0\nlambda = 1.0',
                 'variant = "fast"\nsigma = 0.5\nnoise_free_blocks = 1'):
        assert ineffective_settings(parse_recipe(MINIMAL + "[pace]\n" + pace)) == []
    r = parse_recipe(MINIMAL + 'val_split = ""\n[train]\neval_every = 3\n[optim]\nwarmup_epochs = 0\nwarmup_start_lr = 1e-4')
    assert [n.split()[0] for n in ineffective_settings(r)] == ["[train]", "[optim]"]
    r = parse_recipe(MINIMAL.replace('"synthetic"', '"digits"') + "seed = 2")  # what `pace sweep --seeds` does
    assert [n.split(" set")[0] for n in ineffective_settings(r)] == ["[data] seed"]
    assert ineffective_settings(parse_recipe(MINIMAL.replace('"synthetic"', '"digits"') + "seed = 2\nshots = 3")) == []


# ---- the data source registry drives [data] and [[eval.targets]] validation

VTAB = ('[model]\nname = "x"\n[data]\nsource = "vtab1k"\nroot = "d"\ntrain_split = "train800"\n'
        'val_split = "val200"\ntest_split = "test"\n')


@pytest.mark.parametrize("override, key", [
    ("data.train_split=train80", "train_split = 'train80'"),
    ("data.val_split=val", "val_split = 'val'"),
    ("data.test_split=tst", "test_split = 'tst'"),
    ("data.trainval_split=trainval", "trainval_split = 'trainval'"),
])
def test_split_names_are_checked_against_the_source(override, key):
    msg = _error(VTAB, [override])
    assert f"[data]: {key} is not a split of source = 'vtab1k' (use one of train800, val200, train800val200, test)" \
        in msg, msg
    assert msg.count("is not a split") == 1


def test_open_split_names_are_accepted():
    for source in ("imagefolder", "synthetic"):
        parse_recipe(f'[model]\nname = "x"\n[data]\nsource = "{source}"\n'
                     + ('root = "d"\n' if source == "imagefolder" else "") + 'train_split = "any-name"\nval_split = "x"')
    parse_recipe('[model]\nname = "x"\n[data]\nsource = "fewshot"\nroot = "d"\nshots = 2\nval_split = "my.list"')
    parse_recipe(VTAB + 'trainval_split = "train800val200"')


def test_target_split_is_checked_against_its_source():
    target = '[[eval.targets]]\nname = "t"\nsource = "digits"\nsplit = "{}"\nrestrict_logits = true\n'
    assert "target 't': split = 'test800' is not a split of source = 'digits' (use one of train, val, trainval, test)" \
        in _error(VTAB + target.format("test800"))
    parse_recipe(VTAB + target.format("val"))


@pytest.mark.parametrize("text, overrides, expected", [
    (MINIMAL + "[pace]\nsigam = 1", (), "unknown key [pace] sigam (did you mean 'sigma'? allowed: variant, lambda, "),
    (MINIMAL + "[pace]\nlamda = 1", (), "unknown key [pace] lamda (did you mean 'lambda'? "),
    (MINIMAL + "[tarin]\nepochs = 1", (), "unknown section [tarin] (did you mean 'train'? allowed: model, data, "),
    (MINIMAL, ["tarin.epochs=1"], "bad --set 'tarin.epochs=1': unknown section [tarin] (did you mean 'train'? "),
    (MINIMAL + '[[eval.targets]]\nname = "a"\nsource = "digits"\nrestrict_logits = true\nspilt = "val"', (),
     "unknown key [eval] targets[0].spilt (did you mean 'split'? allowed: name, source, root, split, "),
])
def test_unknown_names_suggest_the_near_miss(text, overrides, expected):
    assert expected in _error(text, overrides)


def test_recipe_errors_keep_where_and_what_apart():
    with pytest.raises(PaceError) as info:
        parse_recipe(MINIMAL + "[adapter]\nrank = 0", source="r.toml")
    assert info.value.where == "invalid recipe 'r.toml'" and info.value.what == "[adapter] rank = 0: must be > 0"
    assert str(info.value) == "invalid recipe 'r.toml': [adapter] rank = 0: must be > 0"
    with pytest.raises(PaceError) as info:
        parse_recipe(MINIMAL, ["train.epochs"])
    assert info.value.where == "bad --set 'train.epochs'" and info.value.what.startswith("expected section.key=value")


def test_validation_stays_torch_free():
    import subprocess
    import sys

    code = ("import sys\nfrom pace_cli.recipe import parse_recipe\n"
            f"parse_recipe({VTAB!r}, ['data.shots=2'])\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]\n")
    subprocess.run([sys.executable, "-c", code], check=True)
