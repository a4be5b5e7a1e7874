"""A small-scale Table 6 (paper §4.4): every ablation row on the quick start, beside the paper's numbers.

Each row is the quick start (8-shot digits on the shipped Fashion-MNIST ViT, ``recipes/quickstart.toml``)
with the row's keys set, a tiny search through ``pace sweep`` (``--grid``, the seeds, ``--final``:
under ``[data] shots`` the grid runs' adapters are scored on test, not retrained), and the chosen
setting's mean test top-1 over the seeds. Beside it: the row's step time over plain ``pace``'s,
measured in this process, the rows' steps interleaved round by round so that a load change on a
shared machine hits every row alike.

This is not the paper's scale (CIFAR-100 VTAB-1K on ViT-B/16, 300 epochs, a full grid): a 10-class
toy task with a 128-wide, 6-block backbone, where PACE-like regularisers may not order as they
do there. The recipes for the paper's scale are ``recipes/ablations/``.

    python benchmarks/table6.py                                   # the recorded run (its JSON says its scale)
    python benchmarks/table6.py --epochs 30 --settings 2 --seeds 0,1,2   # the quick start's own length
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.toml"
# name, paper CIFAR-100 top-1 (Table 6), the row's keys on the quick start, its search (one axis).
ROWS = [
    ("baseline", 74.9, ["pace.variant=off"], ("optim.lr", ["5e-3"])),
    ("+Noise", 77.4, ["pace.variant=noise_only"], ("pace.sigma", ["0.5", "1"])),
    ("+PACE", 79.0, [], ("pace.sigma", ["0.5", "1"])),
    ("+PACE_add", 75.7, ["pace.noise=additive"], ("pace.sigma", ["0.05", "0.2"])),
    ("+PACE_h", 75.9, ["pace.perturb=output"], ("pace.sigma", ["0.05", "0.2"])),
    ("+PACE_drop", 78.3, ["pace.noise=dropout"], ("pace.sigma", ["0.5", "1"])),
    ("+PACE_σ=", 77.9, ["pace.sigma_profile=constant"], ("pace.sigma", ["0.5", "1"])),
    ("+PACE_σ↑", 77.3, ["pace.sigma_profile=increasing"], ("pace.sigma", ["0.5", "1"])),
    ("+FPA", 76.6, ["pace.variant=off"], ("regularizer.fpa", ["0.1", "1"])),
    ("+SAM", 75.4, ["pace.variant=off"], ("regularizer.sam_rho", ["0.02", "0.1"])),
    ("+GP", 75.8, ["pace.variant=off"], ("regularizer.gp", ["0.01", "0.1"])),
    ("+FPA+GP", 74.9, ["pace.variant=off", "regularizer.fpa=0.1"], ("regularizer.gp", ["0.01", "0.1"])),
    ("+ℓ1", 75.2, ["pace.variant=off"], ("regularizer.l1", ["1e-4", "1e-3"])),
]


def pace_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pace_cli", *args], cwd=ROOT, env=env, capture_output=True, text=True)


def sweep_row(name: str, keys: list[str], search: tuple[str, list[str]], scale: list[str], seeds: str,
              settings: int, out: Path) -> dict:
    key, values = search
    sets = [arg for k in keys + scale for arg in ("--set", k)]
    folder = out / name.replace("+", "").replace("σ=", "sigma_const").replace("σ↑", "sigma_up").replace("ℓ", "l")
    started = time.perf_counter()
    done = pace_cli("sweep", str(QUICKSTART), *sets, "--grid", f"{key}={','.join(values[:settings])}",
                    "--seeds", seeds, "--final", "-o", str(folder), "--json")
    if done.returncode != 0:
        raise SystemExit(f"{name}: pace sweep failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    tests = [r["test_top1"] for r in result["runs"] if r["phase"] == "final" and r["test_top1"] is not None]
    return {"row": name, "keys": keys, "search": {key: values[:settings]}, "chosen": result["best"]["values"],
            "val_top1_mean": result["best"]["val_top1_mean"], "test_top1": tests,
            "test_top1_mean": statistics.mean(tests), "test_top1_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
            "sweep_seconds": round(time.perf_counter() - started, 1)}


def step_times(rows, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per training step of each row at its first search value, rows interleaved per round."""
    from pace_cli.distributed import World
    from pace_cli.recipe import load_recipe
    from pace_cli.training.loop import _set_up
    from pace_cli.training.step import train_step

    runs = {}
    for name, _, keys, (key, values) in rows:
        recipe = load_recipe(QUICKSTART, keys + [f"{key}={values[0]}", "train.device=cpu"])
        run = _set_up(recipe, World(), ROOT / "runs" / "table6-timing", None)
        runs[name] = (run, next(iter(run.loader)))
        train_step(run, *runs[name][1], 0, lr=1e-3)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (run, batch) in runs.items():
            started = time.perf_counter()
            for step in range(steps):
                train_step(run, *batch, step + 1, lr=1e-3)
            times[name].append((time.perf_counter() - started) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per run (the quick start has 30)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--settings", type=int, default=2, help="search values per row (at most 2)")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (each row's steps once per round)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per row and round")
    parser.add_argument("--jobs", type=int, default=1, help="rows swept at once (each a `pace sweep` process)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "table6.json")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "table6")
    args = parser.parse_args()
    torch.manual_seed(0)
    scale = [f"train.epochs={args.epochs}", f"train.eval_every={args.epochs}", "train.device=cpu"]
    started = time.perf_counter()
    timing = step_times(ROWS, args.rounds, args.steps)
    rows = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        swept = [pool.submit(sweep_row, name, keys, search, scale, args.seeds, args.settings, args.runs)
                 for name, _, keys, search in ROWS]
    for (name, paper, _, _), future in zip(ROWS, swept):
        row = future.result()
        row.update(paper_top1=paper, step_time_s=round(timing[name], 4),
                   step_time_vs_pace=round(timing[name] / timing["+PACE"], 2))
        rows.append(row)
        print(f"{name:12s} paper {paper:5.1f}  here {100 * row['test_top1_mean']:5.1f} ± {100 * row['test_top1_std']:.1f}"
              f"  chosen {row['chosen']}  step x{row['step_time_vs_pace']:.2f} of pace", flush=True)
    paper_order = [r["row"] for r in sorted(rows, key=lambda r: -r["paper_top1"])]
    here_order = [r["row"] for r in sorted(rows, key=lambda r: -r["test_top1_mean"])]
    report = {
        "benchmark": "small-scale Table 6 on the quick start", "recipe": "recipes/quickstart.toml",
        "scale": {"task": "8-shot digits (10 classes, 80 training images)", "backbone": "builtin:fmnist_vit",
                  "epochs": args.epochs, "seeds": args.seeds, "search_values_per_row": args.settings,
                  "timing": f"{args.rounds} rounds x {args.steps} steps per row",
                  "paper": "CIFAR-100 VTAB-1K, ViT-B/16, 300 epochs, full grid"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "note": "a CPU shared with other jobs: step times are ratios measured interleaved"},
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows, "paper_order": paper_order, "order_here": here_order,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
