import inspect
import json
import re
from pathlib import Path

import pytest
import typer
from helpers import tiny_recipe_text
from rich.text import Text
from typer.testing import CliRunner

from pace_cli.cli import app

runner = CliRunner()

def write_recipe(tmp_path: Path, kind="lora_mul+vpt_add", variant="pace", extra="") -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(tiny_recipe_text(
        model={"drop_path_rate": 0.1},
        data={"batch_size": 16, "synthetic_classes": 6, "synthetic_size": 48},
        adapter={"kind": kind, "rank": 4},
        pace={"variant": variant, "sigma": 1.0, "lambda": 0.5},
        optim={"lr": 0.01, "warmup_epochs": 1},
        train={"epochs": 2, "log_every": 1},
        output={"dir": str(tmp_path / "run")},
    ) + extra)
    return path


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def json_of(result):
    return json.loads(result.stdout)


@pytest.mark.parametrize("variant", ["pace", "fast"])
def test_train_merge_eval_round_trip(tmp_path, variant):
    recipe = write_recipe(tmp_path, variant=variant)
    trained = invoke("train", recipe, "--json")
    assert trained.exit_code == 0, trained.output
    run = tmp_path / "run"
    assert (run / "adapter.safetensors").is_file() and (run / "recipe.toml").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert len(epochs) == 2 and all("val_top1" in r and "grad_norm" in r and "fp_distance" in r for r in epochs)
    assert any(r["type"] == "step" and "lr" in r for r in records)

    base = tmp_path / "base.safetensors"
    assert invoke("export-base", recipe, "-o", base).exit_code == 0
    merged = tmp_path / "merged.safetensors"
    result = invoke("merge", base, run / "adapter.safetensors", "-o", merged, "--json")
    assert result.exit_code == 0, result.output
    assert json_of(result)["fingerprint_ok"] is True

    merged_eval = json_of(invoke("eval", recipe, "--weights", merged, "--json"))
    folded_eval = json_of(invoke("eval", recipe, "--adapter", run / "adapter.safetensors", "--json"))
    unmerged_eval = json_of(invoke("eval", recipe, "--adapter", run / "adapter.safetensors", "--unmerged", "--json"))
    assert merged_eval["samples"] == 48 and merged_eval["split"] == "test"
    assert merged_eval["top1"] == folded_eval["top1"] == unmerged_eval["top1"]
    assert merged_eval["top5"] is not None
    assert abs(merged_eval["loss"] - unmerged_eval["loss"]) < 1e-4

    val = json_of(invoke("eval", recipe, "--weights", merged, "--split", "val", "--json"))
    assert val["split"] == "val"


def test_inspect_adapter_and_base(tmp_path):
    recipe = write_recipe(tmp_path, kind="lora_add")
    assert invoke("train", recipe, "--set", "train.epochs=1").exit_code == 0
    info = json_of(invoke("inspect", tmp_path / "run" / "adapter.safetensors", "--json"))
    assert info["role"] == "adapter" and info["kind"] == "lora_add" and info["rank"] == 4
    assert info["pace"]["variant"] == "pace" and info["pace"]["lambda"] == 0.5
    assert info["timm_model"] == "vit_tiny_patch16_224" and info["num_classes"] == 6
    assert info["trainable_parameters"] > 0 and info["file_bytes"] > 0
    assert "[adapter]" in info["recipe"]
    assert invoke("inspect", tmp_path / "run" / "adapter.safetensors").exit_code == 0

    base = tmp_path / "base.safetensors"
    invoke("export-base", recipe, "-o", base)
    info = json_of(invoke("inspect", base, "--json"))
    assert info["role"] == "base" and info["tensors"] > 10 and info["dtypes"] == {"float32": info["tensors"]}


def test_set_override_and_overwrite_protection(tmp_path):
    recipe = write_recipe(tmp_path)
    assert invoke("train", recipe, "--set", "train.epochs=1", "--set", "pace.variant=off").exit_code == 0
    saved = (tmp_path / "run" / "recipe.toml").read_text()
    assert 'variant = "off"' in saved and "epochs = 1" in saved
    again = invoke("train", recipe, "--set", "train.epochs=1")
    assert again.exit_code == 2 and "--overwrite" in again.output


@pytest.mark.parametrize("extra,expected", [
    ("\n[extra]\nfoo = 1\n", "extra"),
    ("", "rnak"),
    ("", "'many'"),
])
def test_bad_recipe_is_one_clean_line(tmp_path, extra, expected):
    recipe = write_recipe(tmp_path, extra=extra)
    text = recipe.read_text()
    if expected == "rnak":
        text = text.replace("rank = 4", "rnak = 4")
    if expected == "'many'":
        text = text.replace("epochs = 2", 'epochs = "many"')
    recipe.write_text(text)
    result = invoke("train", recipe)
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert expected.strip("'") in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_missing_files_and_wrong_kinds_of_file(tmp_path):
    result = invoke("train", tmp_path / "nope.toml")
    assert result.exit_code == 2 and "not found" in result.output and "Traceback" not in result.output
    recipe = write_recipe(tmp_path, extra="")
    text = recipe.read_text().replace("synthetic_classes = 6\n", "").replace("synthetic_size = 48\n", "")
    recipe.write_text(text.replace('[data]', '[data]\nroot = "/does/not/exist"').replace(
        'source = "synthetic"', 'source = "imagefolder"'))
    result = invoke("train", recipe)
    assert result.exit_code == 2 and "/does/not/exist" in result.output
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not a safetensors file")
    for args in (("inspect", junk), ("merge", junk, junk, "-o", tmp_path / "m.safetensors")):
        result = invoke(*args)
        assert result.exit_code == 2 and "junk.safetensors" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.safetensors").exists()


def test_version_and_help():
    assert "pace" in invoke("--version").output
    for command in ("train", "merge", "eval", "inspect", "export-base"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_copy_of_the_base_merges_without_force(tmp_path, dtype):
    import torch
    from safetensors.torch import load_file, save_file

    recipe = write_recipe(tmp_path, kind="lora_mul+vpt_add")
    assert invoke("train", recipe, "--set", "train.epochs=1").exit_code == 0
    adapter = tmp_path / "run" / "adapter.safetensors"
    base = tmp_path / "base.safetensors"
    assert invoke("export-base", recipe, "-o", base).exit_code == 0
    half = {k: v.to(getattr(torch, dtype)) for k, v in load_file(str(base)).items()}
    half_path = tmp_path / "base-half.safetensors"
    save_file(half, str(half_path))

    result = invoke("merge", half_path, adapter, "-o", tmp_path / "merged.safetensors", "--json")
    assert result.exit_code == 0, result.output
    assert json_of(result)["fingerprint_ok"] is True
    merged = load_file(str(tmp_path / "merged.safetensors"))
    assert all(v.dtype == getattr(torch, dtype) for v in merged.values())

    # a half-precision copy of another base is still refused
    other = dict(half)
    other["blocks.0.mlp.fc1.weight"] = other["blocks.0.mlp.fc1.weight"] * 2
    save_file(other, str(tmp_path / "other-half.safetensors"))
    result = invoke("merge", tmp_path / "other-half.safetensors", adapter, "-o", tmp_path / "m2.safetensors")
    assert result.exit_code == 2 and "--force" in result.output
    assert not (tmp_path / "m2.safetensors").exists()


# ---------------------------------------------------------------- --help reads right

COMMANDS = ["train", "merge", "eval", "inspect", "export-base", "export", "import-peft", "check", "sweep", "report"]


def help_text(*command: str, columns: int = 100) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


def docstring_of(command: str) -> str:
    info = next(i for i in app.registered_commands if (i.name or i.callback.__name__) == command)
    return inspect.cleandoc(info.callback.__doc__)


def test_every_command_is_listed_with_its_help():
    listed = help_text()
    for command in COMMANDS:
        first_line = Text.from_markup(docstring_of(command).split("\n\n")[0]).plain
        assert re.search(rf"│ {re.escape(command)} +{re.escape(first_line[:40])}", listed), command


@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS])
def test_flags_show_no_value_in_help(command):
    # `--json <bool>` reads as if the flag took a value
    text = help_text(*command)
    assert "<bool>" not in text
    assert re.search(r"--help +Show this message and exit", text)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_paragraphs_reflow_instead_of_breaking_where_the_source_wraps(command):
    # at a width where nothing needs wrapping, each docstring paragraph must come out on one line
    lines = help_text(command, columns=1000).splitlines()
    for paragraph in docstring_of(command).split("\n\n"):
        sentence = Text.from_markup(" ".join(paragraph.split())).plain
        assert any(sentence in line for line in lines), f"{command}: {sentence!r} is broken across lines"


@pytest.mark.parametrize("command", COMMANDS)
def test_recipe_sections_in_help_are_not_eaten_as_markup(command):
    # rich markup takes an unescaped "[output]" for a style tag and prints nothing
    click_command = typer.main.get_command(app).commands[command]
    sources = [docstring_of(command)] + [getattr(p, "help", None) or "" for p in click_command.params]
    literal = {word for text in sources for word in re.findall(r"\[([\w-]+)\]", text) if not _is_style(word)}
    text = help_text(command, columns=1000)
    for word in literal:
        assert f"[{word}]" in text, f"{command}: [{word}] is missing from --help"


def _is_style(word: str) -> bool:
    from rich.errors import StyleSyntaxError
    from rich.style import Style

    try:
        Style.parse(word)
        return True
    except StyleSyntaxError:
        return False
