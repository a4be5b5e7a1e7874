"""The package layout holds: imports point down the layer order, modules form no cycle, light modules stay light.

LAYERS is the declared order, top to bottom; docs copy it. A module may import from its own layer or
any layer below it, never from one above. The torch-free spec tables (data.sources, adapters.kinds)
and the run-folder names (files.layout) sit at the recipe layer, because recipe validation reads them.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Top to bottom. An entry names a module or a package with all its submodules, and a module belongs to
# the longest entry naming it; the root package `pace_cli` names only itself (its __init__.py), so a new
# package has to be placed here before its imports can be checked.
LAYERS: list[list[str]] = [
    ["pace_cli.cli", "pace_cli.__main__"],
    ["pace_cli.report", "pace_cli.sweep"],
    ["pace_cli.training"],
    ["pace_cli.evaluation", "pace_cli.predict"],
    ["pace_cli.artifacts", "pace_cli.check"],
    ["pace_cli.builders"],
    ["pace_cli.models", "pace_cli.data", "pace_cli.regularizer"],
    ["pace_cli.files", "pace_cli.adapters", "pace_cli.distributed"],
    ["pace_cli.recipe", "pace_cli.data.sources", "pace_cli.adapters.kinds", "pace_cli.files.layout"],
    ["pace_cli.errors", "pace_cli.lazy", "pace_cli"],  # the root package holds only __version__
]

# What reading and validating a recipe loads: importing these must not pull in torch, which takes
# seconds and is not needed to read a recipe.
TORCH_FREE = ["pace_cli.recipe", "pace_cli.files.layout", "pace_cli.adapters.kinds", "pace_cli.data.sources"]

MAX_LINES = 450

PACKAGE = Path(importlib.util.find_spec("pace_cli").origin).parent  # the code the other tests import
ROOT = PACKAGE.parent


def module_files() -> dict[str, Path]:
    """Every module of pace_cli by dotted name; a package's __init__.py is the package's own name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = module_files()


def face_exports(face: str) -> dict[str, str]:
    """A lazy face's _EXPORTS (name -> submodule), read from its source; {} for a module without one."""
    path = MODULES.get(face)
    if path is None or path.name != "__init__.py":
        return {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def resolve(module: str, name: str | None) -> str:
    """What `from module import name` (or `import module` when name is None) loads: a module or a face.

    A name a face exports resolves to the submodule that defines it, because reading it loads that
    submodule; a name that is itself a submodule resolves to that submodule.
    """
    if name is None:
        return module
    if f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    submodule = face_exports(module).get(name)
    return f"{module}.{submodule}" if submodule else module


def imports_of(module: str, *, module_level_only: bool) -> list[tuple[str, int]]:
    """(imported pace_cli module, line) for each import in ``module``; in-function ones unless excluded."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    # `if TYPE_CHECKING:` imports never run; they only name types for annotations
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            node.body = []
    if module_level_only:  # imports under a module-level if or try still run at import time
        nodes = [n for top in tree.body if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 for n in ast.walk(top)]
    else:
        nodes = list(ast.walk(tree))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "pace_cli"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] == "pace_cli":
                found += [(resolve(base, alias.name), node.lineno) for alias in node.names]
    return found


def layer_of(module: str) -> int:
    """Index in LAYERS (0 is the top) of the longest prefix naming ``module``."""
    best, index = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            names_it = module == prefix or (prefix != "pace_cli" and module.startswith(prefix + "."))
            if names_it and len(prefix) > best:
                best, index = len(prefix), i
    if index is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
    return index


def layer_name(index: int) -> str:
    return ", ".join(p.removeprefix("pace_cli.") for p in LAYERS[index])


def upward_imports(module: str) -> list[str]:
    """Each import of ``module`` that points to a layer above its own, as 'a -> b (line n)'."""
    own = layer_of(module)
    return [f"{module} [{layer_name(own)}] -> {target} [{layer_name(layer_of(target))}] (line {line})"
            for target, line in imports_of(module, module_level_only=False) if layer_of(target) < own]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a, b, ..., a) through each strongly connected group of modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(set(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_within(graph, group) for group in groups]


def _cycle_within(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, staying inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, set()) & group):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle inside {sorted(group)}")


def module_graph() -> dict[str, set[str]]:
    """What each module loads when imported: module-level imports only (a lazy face imports nothing)."""
    return {m: {t for t, _ in imports_of(m, module_level_only=True) if t in MODULES} for m in MODULES}


# ---------------------------------------------------------------- the tests

def test_every_module_has_a_layer():
    unplaced = []
    for module in MODULES:
        try:
            layer_of(module)
        except AssertionError as error:
            unplaced.append(str(error))
    assert not unplaced, "\n".join(unplaced)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    arrows = upward_imports(module)
    assert not arrows, "imports up the layer order:\n" + "\n".join(arrows)


def test_modules_import_no_cycle():
    cycles = find_cycles(module_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_light_modules_import_without_torch(module):
    if module not in MODULES:
        pytest.skip(f"{module} does not exist yet")
    names = [m for m in MODULES if m == module or m.startswith(module + ".")]
    code = "import importlib, sys\nsys.modules['torch'] = None\n" + "".join(
        f"importlib.import_module({name!r})\n" for name in names)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, f"{module} does not import with torch blocked:\n{result.stderr[-2000:]}"


# Over MAX_LINES on the day this test was written and being split in parallel: remove at merge.
@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_short(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} is {lines} lines, over {MAX_LINES}: split it"


# ---------------------------------------------------------------- the checks themselves

def test_cycle_finder_names_the_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(find_cycles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_a_face_name_resolves_to_the_submodule_that_defines_it():
    exports = face_exports("pace_cli.recipe")
    assert exports, "pace_cli/recipe/__init__.py has no _EXPORTS to resolve names with"
    name, submodule = next(iter(exports.items()))
    assert resolve("pace_cli.recipe", name) == f"pace_cli.recipe.{submodule}"
    assert resolve("pace_cli", "errors") == "pace_cli.errors"
    assert layer_of("pace_cli.adapters.kinds") > layer_of("pace_cli.adapters.layer")
