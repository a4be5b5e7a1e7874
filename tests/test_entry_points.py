"""Every way into pace outside the test suite still starts: scripts, benchmarks, shell scripts, `python -m`.

None of these is run for real here (they train, download or take minutes); each is started as far as it
goes without doing work, so that a library name that moved breaks CI instead of the next person to run it:
- a script with an argument parser runs with --help;
- a script without one whose work sits behind `if __name__ == "__main__"` is run under another name,
  which executes its imports and definitions only;
- a script that does its work at import time is compiled;
- every `pace_cli` import in a script, in a function or not, must name a module and a name that exist;
- shell scripts pass `bash -n`.
A script whose optional dependency is not installed is skipped, naming the package.
"""
from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import os
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
while not (ROOT / "pyproject.toml").is_file():  # the repository root, wherever this file sits under tests/
    ROOT = ROOT.parent
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")])
SHELL_SCRIPTS = sorted([*ROOT.glob("benchmarks/*.sh"), *ROOT.glob("scripts/*.sh")])
DISTRIBUTION = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml"}  # import name -> package to install


def name_of(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@functools.cache
def tree_of(path: Path) -> ast.Module:
    """The script's syntax tree; an empty one where it does not parse (test_script_starts reports that)."""
    try:
        return ast.parse(path.read_text(), filename=str(path))
    except SyntaxError:
        return ast.Module(body=[], type_ignores=[])


def has_argument_parser(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr == "ArgumentParser" or
               isinstance(node, ast.Name) and node.id == "ArgumentParser" for node in ast.walk(tree))


def has_main_guard(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
               and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
               and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)
               for node in tree.body)


def missing_packages(tree: ast.Module) -> list[str]:
    """Packages that a module-level import of the script needs and this environment lacks."""
    roots = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            roots.add(node.module.split(".")[0])
    return sorted(DISTRIBUTION.get(r, r) for r in roots if importlib.util.find_spec(r) is None)


def start_command(path: Path) -> list[str] | None:
    """How to start the script without doing its work; None where only compiling is safe."""
    tree = tree_of(path)
    if has_argument_parser(tree) and has_main_guard(tree):
        return [sys.executable, str(path), "--help"]
    if has_main_guard(tree):
        return [sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv[1], run_name='entry_point_check')",
                str(path)]
    return None


def run(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def started() -> dict[str, subprocess.CompletedProcess]:
    """Every startable script (and `python -m pace_cli --help`) run at once: each loads torch for ~2 s."""
    commands = {name_of(p): start_command(p) for p in SCRIPTS if not missing_packages(tree_of(p))}
    commands = {name: command for name, command in commands.items() if command is not None}
    commands["python -m pace_cli"] = [sys.executable, "-m", "pace_cli", "--help"]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        results = dict(zip(commands, pool.map(run, commands.values())))
    return results


@pytest.mark.parametrize("path", SCRIPTS, ids=name_of)
def test_script_starts(path, started):
    compile(path.read_text(), str(path), "exec")  # a syntax error fails here, naming the line
    missing = missing_packages(tree_of(path))
    if missing:
        pytest.skip(f"{name_of(path)} needs {', '.join(missing)}, which is not installed")
    if start_command(path) is None:
        return  # its work runs at import time: compiling it is all that is safe here
    result = started[name_of(path)]
    assert result.returncode == 0, f"{' '.join(result.args[1:])} exited {result.returncode}:\n{result.stderr[-3000:]}"


def test_python_dash_m_pace_cli_starts(started):
    result = started["python -m pace_cli"]
    assert result.returncode == 0 and "train" in result.stdout, result.stderr[-3000:]


def pace_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name or None) for every pace_cli import in the script, wherever it sits."""
    found = []
    for node in ast.walk(tree_of(path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "pace_cli"]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "pace_cli":
            found += [(node.lineno, node.module, a.name) for a in node.names]
    return found


def unresolved(module: str, name: str | None) -> str | None:
    """Why `from module import name` (or `import module`) would fail, or None when it works."""
    try:
        loaded = importlib.import_module(module)
        if name is None or hasattr(loaded, name):
            return None
        if not hasattr(loaded, "__path__"):  # a plain module: the name can only be one it defines
            return f"{module} has no {name}"
        importlib.import_module(f"{module}.{name}")  # a package: the name may be a submodule
        return None
    except ImportError as error:
        return f"{type(error).__name__}: {error}"


@pytest.mark.parametrize("path", [p for p in SCRIPTS if pace_imports(p)], ids=name_of)
def test_script_library_imports_exist(path):
    broken = [f"{name_of(path)}:{line}: {module}{'' if name is None else ' import ' + name}: {why}"
              for line, module, name in pace_imports(path) if (why := unresolved(module, name))]
    assert not broken, "\n".join(broken)


def test_console_scripts_resolve():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for command, target in scripts.items():
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), f"{command} = {target}"


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=name_of)
def test_shell_script_parses(path):
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
