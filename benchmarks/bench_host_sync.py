"""The training loop's per-step host synchronisation: this tree against an older revision.

    python benchmarks/bench_host_sync.py [--old 5402e05] [--rounds 3]

Revision 5402e05 (0.1.0) read the loss, its parts, the gradient norm and the accuracy with
``.item()`` after every step (six host-device synchronisations a step); this tree keeps them on
the device and reads them every ``log_every`` steps. The script checks the old revision out into
a temporary git worktree and runs the same `pace train` command (synthetic data, no validation) with
each tree, alternating, and prints the training loop's images/s and their ratio.

On a CPU a synchronisation costs nothing (the work is done when ``.item()`` is called), so the
expected ratio is 1.0 within noise. On a GPU each ``.item()`` stalls the host until the queued
kernels finish, so the next step's kernels cannot be queued while the current ones run: the gap is
the Python and launch time of a step, which matters most for small models and batches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RECIPE = """
[model]
name = "vit_tiny_patch16_224"
img_size = 28
in_chans = 1
kwargs = { patch_size = 7, embed_dim = 128, depth = 6, num_heads = 4 }
[data]
source = "synthetic"
synthetic_size = 512
channels = 1
val_split = ""
test_split = ""
batch_size = 32
[adapter]
kind = "lora_mul+vpt_add"
rank = 8
[pace]
variant = "{variant}"
[train]
epochs = 2
device = "cpu"
log_every = 50
"""


def images_per_second(tree: Path, recipe: Path, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-m", "pace_cli.cli" if not (tree / "pace_cli" / "__main__.py").exists()
                           else "pace_cli", "train", str(recipe), "-o", str(out), "--overwrite", "--json"],
                          env=env, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"pace train in {tree} failed: {done.stderr[-1500:]}")
    text = done.stdout
    return json.loads(text[text.index("{"):text.rindex("}") + 1])["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", default="5402e05")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["off", "pace"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_tree), args.old],
                       check=True, capture_output=True)
        try:
            for variant in args.variants:
                recipe = Path(tmp) / f"{variant}.toml"
                recipe.write_text(RECIPE.replace("{variant}", variant))
                old, new, ratios = [], [], []
                for _ in range(args.rounds):
                    a = images_per_second(old_tree, recipe, Path(tmp) / "out-old")
                    b = images_per_second(REPO, recipe, Path(tmp) / "out-new")
                    old.append(a)
                    new.append(b)
                    ratios.append(a / b)  # new step time / old step time
                print(f"{variant}: {args.old} {statistics.median(old):.0f} img/s (per-step .item()), this tree "
                      f"{statistics.median(new):.0f} img/s (device-side sums); step-time ratio new/old "
                      f"{statistics.median(ratios):.3f} (rounds: {', '.join(f'{r:.3f}' for r in ratios)})", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], check=False,
                           capture_output=True)


if __name__ == "__main__":
    main()
