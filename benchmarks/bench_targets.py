"""Cost of multi-target evaluation: one `pace eval` over the test split and three targets vs four evals.

Uses the shipped backbone (builtin:fmnist_vit, a tiny ViT) and generated 28x28 grayscale PNGs in
VTAB-1K list format (one test split plus three target folders, ``--images`` each). Two views:

- library: ``targets.evaluate_targets`` once vs ``session.evaluate_recipe`` four times in one process
  (what a sweep or a notebook pays);
- CLI: one ``pace eval`` process vs four (what a shell user pays: Python and torch start-up included).

Run:  PYTHONPATH=. python benchmarks/bench_targets.py [--images 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pace_cli.recipe import load_recipe
from pace_cli.evaluation import evaluate_recipe
from pace_cli.artifacts.base import export_base_weights
from pace_cli.evaluation import evaluate_targets

RECIPE = """
[model]
name = "vit_tiny_patch16_224"
checkpoint = "builtin:fmnist_vit"
img_size = 28
in_chans = 1
num_classes = 10
kwargs = {{ patch_size = 7, embed_dim = 128, depth = 6, num_heads = 4 }}

[data]
source = "vtab1k"
root = "{root}/source"
test_split = "test"
channels = 1
image_size = 28
mean = [0.286]
std = [0.353]
eval_batch_size = 256

[train]
device = "cpu"
{targets}
"""

TARGET = """
[[eval.targets]]
name = "{name}"
source = "vtab1k"
root = "{root}/{name}"
split = "test"
restrict_logits = {restrict}
"""

TARGETS = (("t_all", "false"), ("t_half", "true"), ("t_five", "true"))


def write_split(folder: Path, images: int, classes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(images):
        rel = f"images/test/{i:06d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / rel)
        lines.append(f"{rel} {classes[i % len(classes)]}\n")
    (folder / "test.txt").write_text("".join(lines))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="images per set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cli", action="store_true", help="skip the subprocess comparison")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_split(root / "source", args.images, list(range(10)), 0)
        for (name, _), classes, seed in zip(TARGETS, (list(range(10)), [0, 2, 4, 6, 8], [1, 3, 5, 7, 9]), (1, 2, 3)):
            write_split(root / name, args.images, classes, seed)
        targets = "".join(TARGET.format(name=n, root=root, restrict=r) for n, r in TARGETS)
        combined_path = root / "combined.toml"
        combined_path.write_text(RECIPE.format(root=root, targets=targets))
        recipe = load_recipe(combined_path)
        weights = root / "base.safetensors"
        export_base_weights(recipe, weights)
        # One recipe per set for the separate runs: each target becomes the test split.
        singles = [combined_path.with_name("single_source.toml")]
        singles[0].write_text(RECIPE.format(root=root, targets=""))
        for name, _ in TARGETS:
            path = root / f"single_{name}.toml"
            path.write_text(RECIPE.format(root=root, targets="").replace(f"{root}/source", f"{root}/{name}"))
            singles.append(path)
        single_recipes = [load_recipe(p) for p in singles]

        evaluate_targets(recipe, weights=weights)  # warm caches (files, allocator) before timing
        combined = [timed(lambda: evaluate_targets(recipe, weights=weights)) for _ in range(args.repeats)]
        separate = [timed(lambda: [evaluate_recipe(r, weights=weights) for r in single_recipes])
                    for _ in range(args.repeats)]
        report = evaluate_targets(recipe, weights=weights)
        eval_seconds = sum(s.result.seconds for s in report.sets)
        total_images = sum(s.result.samples for s in report.sets)
        out = {
            "images_per_set": args.images, "sets": len(report.sets), "repeats": args.repeats,
            "library_combined_s": round(statistics.median(combined), 3),
            "library_separate_s": round(statistics.median(separate), 3),
            "library_ratio_separate_over_combined": round(statistics.median(separate) / statistics.median(combined), 3),
            "forward_passes_s": round(eval_seconds, 3),
            "images_per_s_combined": round(total_images / statistics.median(combined), 1),
        }
        if not args.no_cli:
            cmd = [sys.executable, "-m", "pace_cli.cli", "eval"]
            run = lambda p: subprocess.run(cmd + [str(p), "--weights", str(weights), "--json"],  # noqa: E731
                                           check=True, capture_output=True)
            cli_combined = [timed(lambda: run(combined_path)) for _ in range(args.repeats)]
            cli_separate = [timed(lambda: [run(p) for p in singles]) for _ in range(args.repeats)]
            out.update({
                "cli_combined_s": round(statistics.median(cli_combined), 3),
                "cli_separate_s": round(statistics.median(cli_separate), 3),
                "cli_ratio_separate_over_combined": round(statistics.median(cli_separate)
                                                          / statistics.median(cli_combined), 3),
            })
        for s in report.sets:
            print(f"{s.name:>8}: {s.result.samples} images, logits {'restricted to ' + str(s.scored_classes) if s.restrict_logits else 'all ' + str(s.head_classes)}, "
                  f"top-1 {s.result.top1:.3f}")
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
