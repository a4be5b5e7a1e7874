"""Wall time of one 8-run sweep: the sequential backend against Ray with 2 concurrent one-thread trials.

    python benchmarks/sweep_ray.py                    # prints a table, writes benchmarks/results/sweep_ray.json
    python benchmarks/sweep_ray.py --epochs 6 --size 256

The same grid (λ × 4 values, 2 seeds) of a tiny ViT on synthetic images is swept three ways into
fresh folders, in one process: sequentially at torch's default threads (all cores), sequentially
at one thread, and with ``--backend ray`` on a local cluster of 2 CPUs (one-core trials, two at
a time). Ray's start-up (``ray.init`` of a local cluster) is timed on its own and left out of the
Ray sweep's time; the first sequential sweep pays the imports and is run once before timing. The
adapters of the one-thread sequential sweep and of the Ray sweep are compared tensor by tensor.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
from helpers import tiny_recipe_text  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from pace_cli.sweep import plan_sweep, run_sweep  # noqa: E402

GRID = ["pace.lambda=0.05,0.1,0.5,1"]
SEEDS = [0, 1]


def recipe_text(epochs: int, size: int) -> str:
    return tiny_recipe_text(data={"batch_size": 16, "synthetic_classes": 4, "synthetic_size": size},
                            adapter={"rank": 2}, optim={"lr": 0.01, "warmup_epochs": 0},
                            train={"epochs": epochs, "log_every": 10})


def timed_sweep(recipe: Path, folder: Path, backend="sequential") -> float:
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    result = run_sweep(plan_sweep(recipe, folder, grid=GRID, seeds=SEEDS), backend=backend)
    seconds = time.perf_counter() - started
    assert len(result.runs) == len(SEEDS) * 4 and all(o.status == "trained" for o in result.runs)
    return seconds


def same_adapters(a: Path, b: Path) -> bool:
    for run in (a / "runs").iterdir():
        mine, theirs = load_file(run / "adapter.safetensors"), load_file(b / "runs" / run.name / "adapter.safetensors")
        if mine.keys() != theirs.keys() or not all(torch.equal(mine[k], theirs[k]) for k in mine):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024, help="synthetic training images per run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep_ray.json")
    args = parser.parse_args()

    import ray

    from pace_cli.sweep.backends.ray import RayBackend

    work = Path(tempfile.mkdtemp(prefix="sweep_ray_"))
    recipe = work / "recipe.toml"
    recipe.write_text(recipe_text(args.epochs, args.size))
    threads = torch.get_num_threads()
    timed_sweep(recipe, work / "warm-up")  # imports, timm's first model build
    sequential = timed_sweep(recipe, work / "sequential")
    torch.set_num_threads(1)
    sequential_1 = timed_sweep(recipe, work / "sequential-1")
    torch.set_num_threads(threads)

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    startup = time.perf_counter() - started
    ray_seconds = timed_sweep(recipe, work / "ray", RayBackend(cpus_per_trial=1))
    ray.shutdown()

    figures = {
        "runs": len(SEEDS) * 4, "epochs": args.epochs, "train_images": args.size, "torch_threads_sequential": threads,
        "sequential_s": round(sequential, 2), "sequential_1_thread_s": round(sequential_1, 2),
        "ray_2x1_thread_s": round(ray_seconds, 2), "ray_startup_s": round(startup, 2),
        "ratio_sequential_over_ray": round(sequential / ray_seconds, 3),
        "ratio_sequential_1_thread_over_ray": round(sequential_1 / ray_seconds, 3),
        "ray_adapters_equal_sequential_1_thread": same_adapters(work / "ray", work / "sequential-1"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"8-run sweep, {args.epochs} epochs of {args.size} images, this machine:")
    print(f"  sequential, {threads} torch threads : {sequential:7.1f} s")
    print(f"  sequential, 1 torch thread  : {sequential_1:7.1f} s")
    print(f"  ray, 2 trials x 1 thread    : {ray_seconds:7.1f} s  (+ {startup:.1f} s Ray start-up, not included)")
    print(f"  ratio sequential / ray      : {sequential / ray_seconds:7.2f}x  "
          f"(1-thread sequential / ray: {sequential_1 / ray_seconds:.2f}x)")
    print(f"  ray adapters == 1-thread sequential adapters: {figures['ray_adapters_equal_sequential_1_thread']}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
