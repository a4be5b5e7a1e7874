"""The layout page and the README's Library section say what the code is: names that exist, the layer order the layer test holds."""

import importlib
import re
from pathlib import Path

import pytest

from test_layers import LAYERS

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = (ROOT / "docs" / "layout.md").read_text()
README = (ROOT / "README.md").read_text()


def test_layout_page_lists_the_layer_order_the_test_checks():
    section = LAYOUT.split("## The layer order", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(". ", 1)[1] for line in section.splitlines() if re.match(r"\d+\. ", line)]
    documented = [sorted(re.findall(r"`([\w.]+)`", row)) for row in rows]
    declared = [sorted(m.removeprefix("pace_cli.") for m in layer if m not in ("pace_cli", "pace_cli.__main__"))
                for layer in LAYERS]
    assert documented == declared


def test_layout_page_names_files_that_exist():
    table = LAYOUT.split("## The folders", 1)[1].split("\n## ", 1)[0]
    missing = []
    for row in table.splitlines()[2:]:
        cells = row.split("|")
        for folder in re.findall(r"`([\w/]+/)`", cells[1]):
            present = {path.name for path in (ROOT / "pace_cli" / folder).rglob("*.py")}
            missing += [f"{folder}{name}" for name in re.findall(r"`(\w+\.py)`", cells[2]) if name not in present]
        for name in re.findall(r"`(\w+\.py)`", cells[1]):
            if not (ROOT / "pace_cli" / name).is_file():
                missing.append(name)
    assert not missing


def _library_bullets():
    section = README.split("## Library", 1)[1].split("\n## ", 1)[0]
    return section.split("\n- ")[1:]


@pytest.mark.parametrize("bullet", _library_bullets(), ids=lambda b: b.split("`")[1])
def test_readme_library_names_exist(bullet):
    """Every name the README's Library section gives is an attribute of a module its bullet names."""
    modules = [importlib.import_module(m) for m in re.findall(r"`(pace_cli\.[\w.]+)`", bullet)]
    names = [n for n in re.findall(r"`(\w+)`", bullet) if not n.startswith("pace_cli")]
    unknown = [n for n in names if not any(hasattr(m, n) for m in modules)]
    assert modules and not unknown, f"README's Library names {unknown}, which its modules do not have"
