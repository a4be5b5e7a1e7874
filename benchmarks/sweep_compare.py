"""Seed-by-seed test comparison of two `pace sweep --final` results: PACE against the baseline.

    python benchmarks/sweep_compare.py benchmarks/sweep_results > benchmarks/sweep_results/comparison.md

Reads RESULTS/k<k>/pace/sweep.json and RESULTS/k<k>/off/sweep.json for every k folder found and
prints markdown: the chosen settings, every setting's validation score, and the final runs' test
top-1 per seed with the paired difference (same seed = same k images for both).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def describe(values: dict) -> str:
    return ", ".join(f"{key.split('.')[-1]} {value}" for key, value in values.items()) or "base"


def finals(table: dict) -> dict[int, float]:
    return {run["seed"]: run["test_top1"] for run in table["runs"] if run["phase"] == "final"}


def main(results: Path) -> None:
    ks = sorted((int(p.name[1:]) for p in results.glob("k*") if p.is_dir() and p.name[1:].isdigit()))
    print("## Chosen settings (mean validation top-1 over seeds 0, 1, 2)\n")
    print("| k | arm | setting | val top-1 % | every setting: val top-1 % (mean) |")
    print("|---|---|---|---|---|")
    for k in ks:
        for arm in ("off", "pace"):
            table = load(results / f"k{k}" / arm / "sweep.json")
            best = table["best"]
            others = "; ".join(f"{describe(s['values'])}: {100 * s['val_top1_mean']:.1f}" for s in table["ranking"])
            print(f"| {k} | {arm} | {describe(best['values'])} | {100 * best['val_top1_mean']:.1f} "
                  f"± {100 * best['val_top1_std']:.1f} | {others} |")
    print("\n## Test top-1 % of the chosen settings retrained on train + val, seed by seed\n")
    print("| k | seed | off (tuned) | pace (tuned) | pace − off | PACE ahead? |")
    print("|---|---|---|---|---|---|")
    for k in ks:
        off, pace = (finals(load(results / f"k{k}" / arm / "sweep.json")) for arm in ("off", "pace"))
        diffs = []
        for seed in sorted(off):
            diff = 100 * (pace[seed] - off[seed])
            diffs.append(diff)
            verdict = "yes" if diff > 0 else ("tie" if diff == 0 else "no")
            print(f"| {k} | {seed} | {100 * off[seed]:.2f} | {100 * pace[seed]:.2f} | {diff:+.2f} | {verdict} |")
        mean_off = 100 * sum(off.values()) / len(off)
        mean_pace = 100 * sum(pace.values()) / len(pace)
        ahead = sum(d > 0 for d in diffs)
        print(f"| {k} | mean | {mean_off:.2f} | {mean_pace:.2f} | {mean_pace - mean_off:+.2f} | {ahead}/{len(diffs)} seeds |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/sweep_results"))
