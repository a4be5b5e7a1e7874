"""Regenerate docs/errors.md: run every bad-input case from tests/cli/test_bad_inputs.py, record what the user sees.

    python scripts/error_catalogue.py > docs/errors.md
"""
import contextlib
import importlib.util
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "tests" / "cli" / "test_bad_inputs.py")
cases = importlib.util.module_from_spec(spec)
sys.path.insert(0, str(ROOT / "tests"))
spec.loader.exec_module(cases)


def shown(text: str, tmp: str) -> str:
    line = next(line for line in text.splitlines() if line.startswith("error:"))
    line = line.replace(tmp, "…")
    line = re.sub(r"pid \d+ on [^,]+,", "pid … on …,", line)  # the lock's owner: this machine, this run
    return re.sub(r"sha256:[0-9a-f]+", "sha256:…", line)


print("# What pace says about bad input\n")
print("Every case below exits with the code shown, prints exactly one line on stderr and no traceback")
print("(`pace --debug …` shows one), and leaves no output file behind. Each row is a test in")
print("`tests/cli/test_bad_inputs.py`; `python scripts/error_catalogue.py > docs/errors.md` regenerates this page.\n")
print("| case | command | exit | what the user sees |")
print("|---|---|---|---|")
rows = [(name, fn) for name, fn in sorted(cases.CASES.items())]
for old, new, key in [("[adapter]\nrank = 2", "[adapter]\nrank = 0", "rank"),
                      ("[train]", "[pace]\nsigma = -1\n[train]", "sigma"),
                      ("[train]", "[pace]\nlambda = -0.5\n[train]", "lambda"),
                      ("[train]", "[optim]\nlr = 0\n[train]", "lr"),
                      ("epochs = 1", "epochs = 0", "epochs"),
                      ("batch_size = 8", "batch_size = 8\nshots = 0", "shots")]:
    rows.append((f"out of range: {key}", lambda tmp, old=old, new=new: (
        cases.train_args(tmp, cases.recipe_with(tmp, old, new)), key)))
for name, fn in rows:
    with tempfile.TemporaryDirectory() as tmp:
        argv, _ = fn(Path(tmp))
        with cases.FAULTS.get(name, contextlib.nullcontext)():  # e.g. a full disk, simulated
            result = cases.runner.invoke(cases.app, argv)
        command = "pace " + argv[0]
        message = shown(result.output, tmp).replace("|", "\\|")
        print(f"| {name.replace('_', ' ')} | `{command}` | {result.exit_code} | {message} |")
print("\nInterrupting `pace train` (Ctrl-C / SIGTERM) saves a checkpoint and exits 130 / 143 with a line that")
print("says how to resume. A diverging loss exits 3 and keeps the last epoch's checkpoint.")
print("\nA recipe key that a switch in the same recipe turns off (e.g. `[pace] sigma` with `variant = \"off\"`) is")
print("a `warning:` line, not an error; the README's Recipes section lists both kinds. Every write site (adapter,")
print("checkpoint, metrics.jsonl, merge, export, sweep tables, report) on a full disk, and every kind of damaged")
print("checkpoint, is tested in `tests/test_reliability.py`; the rows above show one of each.")
