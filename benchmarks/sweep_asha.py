"""What `--scheduler asha` saves on the quick start's λ × σ grid, and what it chooses, against the full grid.

    python benchmarks/sweep_asha.py            # 3 λ x 3 σ x 3 seeds (the README's quick start grid)
    python benchmarks/sweep_asha.py --full     # the paper's 6 λ x 5 σ x 3 seeds (90 runs of each sweep)

Both sweeps run `pace sweep recipes/quickstart.toml --backend ray --max-concurrent 2` (one-core
trials, two at a time, on a local Ray cluster of 2 CPUs) with `--final`, into fresh folders: once
with the default scheduler (the full grid, the paper's protocol) and once with `--scheduler asha`
at its defaults (grace = the recipe's eval_every = 5 epochs, R = 3: rungs at epochs 5 and 15 of
30). Under the quick start's `shots`, `--final` scores the chosen setting's grid runs on the test
split, so both choices are scored by the same protocol. Training epochs are counted from every
run's metrics.jsonl. ASHA's surviving runs should be the full grid's runs exactly (a run stopped
at a rung and resumed is bit for bit the same): their validation figures are compared.
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
sys.path[:0] = [str(ROOT)]

from pace_cli.sweep import plan_sweep, run_sweep  # noqa: E402

RECIPE = ROOT / "recipes" / "quickstart.toml"
REDUCED = ["pace.lambda=0.1,0.5,1", "pace.sigma=0.5,1,1.5"]
FULL = ["pace.lambda=0.02,0.05,0.1,0.2,0.5,1", "pace.sigma=0.1,0.5,1,1.5,2"]
SEEDS = [0, 1, 2]


def epochs_trained(sweep: Path) -> int:
    total = 0
    for metrics in (sweep / "runs").glob("*/metrics.jsonl"):
        total += sum(json.loads(line).get("type") == "epoch" for line in metrics.read_text().splitlines() if line)
    return total


def sweep(folder: Path, grid: list[str], max_concurrent: int, scheduler: str) -> tuple[dict, float]:
    from pace_cli.sweep.backends.ray import RayBackend

    started = time.perf_counter()
    result = run_sweep(plan_sweep(RECIPE, folder, grid=grid, seeds=SEEDS, final=True),
                       backend=RayBackend(cpus_per_trial=1, max_concurrent=max_concurrent, scheduler=scheduler))
    seconds = time.perf_counter() - started
    assert result.complete and all(o.status != "failed" for o in result.runs), [o.reason for o in result.runs]
    return result.to_dict(), seconds


def summary(table: dict, folder: Path, seconds: float) -> dict:
    best = table["best"]
    statuses = [run["status"] for run in table["runs"] if run["phase"] == "grid"]
    return {"seconds": round(seconds, 1), "epochs_trained": epochs_trained(folder),
            "grid_runs": len(statuses), "stopped_runs": statuses.count("stopped"),
            "settings_ranked": len(table["ranking"]), "chosen": best["setting"],
            "chosen_val_top1_mean": best["val_top1_mean"], "chosen_test_top1_mean": table["final_test_top1_mean"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the paper's 6 x 5 grid instead of the README's 3 x 3")
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    grid = FULL if args.full else REDUCED
    out = args.out or ROOT / "benchmarks" / "results" / f"sweep_asha{'_full' if args.full else ''}.json"

    import ray

    ray.init(num_cpus=args.max_concurrent, include_dashboard=False, log_to_driver=False, configure_logging=False)
    work = Path(tempfile.mkdtemp(prefix="sweep_asha_"))
    full_table, full_s = sweep(work / "full", grid, args.max_concurrent, "fifo")
    asha_table, asha_s = sweep(work / "asha", grid, args.max_concurrent, "asha")
    ray.shutdown()

    full, asha = summary(full_table, work / "full", full_s), summary(asha_table, work / "asha", asha_s)
    full_val = {(r["setting"], r["seed"]): r["val_top1"] for r in full_table["runs"] if r["phase"] == "grid"}
    survivors = [r for r in asha_table["runs"] if r["phase"] == "grid" and r["status"] != "stopped"]
    full_rank = {s["setting"]: s["rank"] for s in full_table["ranking"]}
    figures = {
        "grid": grid, "seeds": SEEDS, "reduced_grid": not args.full, "recipe": "recipes/quickstart.toml",
        "backend": f"ray, {args.max_concurrent} concurrent one-thread trials", "scheduler": "asha, grace 5 (eval_every), R 3",
        "full_grid": full, "asha": asha,
        "epoch_fraction_asha_over_full": round(asha["epochs_trained"] / full["epochs_trained"], 4),
        "wall_fraction_asha_over_full": round(asha_s / full_s, 4),
        "same_choice": asha["chosen"] == full["chosen"],
        "asha_choice_rank_in_full_grid": full_rank.get(asha["chosen"]),
        "asha_survivors_equal_full_grid_runs": all(full_val[(r["setting"], r["seed"])] == r["val_top1"]
                                                   for r in survivors),
        "asha_ranking": [(s["setting"], round(s["val_top1_mean"], 4)) for s in asha_table["ranking"]],
        "full_ranking_top5": [(s["setting"], round(s["val_top1_mean"], 4)) for s in full_table["ranking"][:5]],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
