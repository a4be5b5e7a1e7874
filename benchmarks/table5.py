"""A small Table 5: every adapter kind with and without PACE on the quick start, test top-1 side by side.

    python benchmarks/table5.py --json-out benchmarks/results/table5.json
    python benchmarks/table5.py --kinds ia3,dora --json-out more.json      # some kinds only

For each kind, three `pace sweep` calls on recipes/quickstart.toml (8-shot digits, the shipped
tiny backbone) with `--set adapter.kind=KIND`:

1. `off`: the baseline at the recipe's settings, seeds 0, 1, 2, `--final` (test top-1 per seed);
2. the λ/σ search for `pace`: the grid `--lambdas` × `--sigmas` on seed 0 only (the scale of
   this study: one seed's validation top-1 picks the setting);
3. `pace` at the chosen λ, σ, seeds 0, 1, 2, `--final`, in the search's folder, so its seed-0
   run is the search's own.

Under `[data] shots`, `--final` scores the grid runs' own adapters on the test split (the few-shot
protocol keeps the training images), so each arm's test figure is the mean of its three seeds'
runs; the seeds draw the same 8 images per class for both arms. The recipe's own `[adapter] rank`
(8) and `[pace]` keys stay as they are; for the kinds that do not read them pace prints an inert-
key warning and goes on. Everything else is the quick start (lr 5e-3, 30 epochs unless --epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart.toml"
DEFAULT_KINDS = "lora_add,lora_mul,vpt_add,lora_mul+vpt_add,lora_add+vpt_add,bitfit,ssf,head"


EPOCHS = 30  # the quick start's


def pace_sweep(out: Path, kind: str, epochs: int, *args: str) -> dict:
    """Run `pace sweep` in a subprocess (as a user would) and return its sweep.json."""
    command = [sys.executable, "-m", "pace_cli", "sweep", str(RECIPE), "--set", f"adapter.kind={kind}",
               "--set", f"train.epochs={epochs}", "-o", str(out), "--json", *args]
    # One intra-op thread: on a shared machine PyTorch's thread barriers make two threads erratic.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pace sweep failed for {kind}: {done.stderr[-2000:]}")
    return json.loads((out / "sweep.json").read_text())


def test_scores(table: dict) -> dict[int, float]:
    return {run["seed"]: run["test_top1"] for run in table["runs"] if run["phase"] == "final"}


def one_kind(out: Path, kind: str, epochs: int, lambdas: str, sigmas: str, seeds: str) -> dict:
    started = time.perf_counter()
    first_seed = seeds.split(",")[0]
    off = pace_sweep(out / "off", kind, epochs, "--set", "pace.variant=off", "--seeds", seeds, "--final")
    search = pace_sweep(out / "pace", kind, epochs, "--set", "pace.variant=pace", "--grid", f"pace.lambda={lambdas}",
                        "--grid", f"pace.sigma={sigmas}", "--seeds", first_seed)
    best = search["best"]["values"]
    # The same folder: the chosen setting's first-seed run is the search's, skipped as finished.
    chosen = pace_sweep(out / "pace", kind, epochs, "--set", "pace.variant=pace",
                        "--grid", f"pace.lambda={best['pace.lambda']}", "--grid", f"pace.sigma={best['pace.sigma']}",
                        "--seeds", seeds, "--final")
    off_test, pace_test = test_scores(off), test_scores(chosen)
    return {
        "kind": kind,
        "chosen": {"lambda": best["pace.lambda"], "sigma": best["pace.sigma"]},
        "search_val_top1": {f"lambda={s['values']['pace.lambda']} sigma={s['values']['pace.sigma']}":
                            s["val_top1_mean"] for s in search["ranking"]},
        "off_test_top1": off_test, "pace_test_top1": pace_test,
        "off_mean": statistics.mean(off_test.values()), "pace_mean": statistics.mean(pace_test.values()),
        "off_std": statistics.pstdev(off_test.values()), "pace_std": statistics.pstdev(pace_test.values()),
        "seconds": round(time.perf_counter() - started, 1),
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| kind | off test top-1 % | pace test top-1 % (λ, σ chosen) | pace − off | seeds ahead |",
             "|---|---|---|---|---|"]
    for row in rows:
        ahead = sum(row["pace_test_top1"][s] > row["off_test_top1"][s] for s in row["off_test_top1"])
        lines.append(f"| `{row['kind']}` | {100 * row['off_mean']:.1f} ± {100 * row['off_std']:.1f} | "
                     f"{100 * row['pace_mean']:.1f} ± {100 * row['pace_std']:.1f} "
                     f"(λ {row['chosen']['lambda']}, σ {row['chosen']['sigma']}) | "
                     f"{100 * (row['pace_mean'] - row['off_mean']):+.1f} | {ahead}/{len(row['off_test_top1'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", default=DEFAULT_KINDS, help="comma-separated [adapter] kinds")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs of every run")
    parser.add_argument("--lambdas", default="1", help="λ values of the search (seed 0)")
    parser.add_argument("--sigmas", default="0.3,1", help="σ values of the search (seed 0)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the two scored arms")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "table5")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    load = os.getloadavg()
    rows = []
    for kind in args.kinds.split(","):
        out = args.work_dir / kind.replace("+", "_")
        rows.append(one_kind(out, kind, args.epochs, args.lambdas, args.sigmas, args.seeds))
        print(f"{kind}: off {100 * rows[-1]['off_mean']:.1f}, pace {100 * rows[-1]['pace_mean']:.1f} "
              f"({rows[-1]['seconds']} s)", flush=True)
    table = markdown(rows)
    print(table)
    if args.json_out:
        result = {"recipe": "recipes/quickstart.toml",
                  "protocol": f"k = 8 shots, {args.epochs} epochs; off at the recipe's settings; pace at the "
                              "(λ, σ) of the grid with the best seed-0 val top-1; test top-1 over seeds",
                  "lambdas": args.lambdas, "sigmas": args.sigmas, "seeds": args.seeds, "rows": rows,
                  "markdown": table, "seconds": round(time.perf_counter() - started, 1),
                  "load_average_start": load, "load_average_end": os.getloadavg()}
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
