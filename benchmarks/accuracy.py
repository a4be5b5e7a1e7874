#!/usr/bin/env python
"""Accuracy study: does PACE beat the plain adapter baseline on few-shot digits?

The shipped backbone (``builtin:fmnist_vit``, a tiny ViT pre-trained on Fashion-MNIST) is
fine-tuned with the quick-start recipe on k images per class of scikit-learn's digits, for
several k, with four regulariser settings:

    off   the lora_mul+vpt_add adapters alone (no noise, no consistency loss)
    pace  two noisy passes per step, squared-distance consistency loss
    fast  one noisy pass, consistency with the logits stored at the sample's previous visit
    lazy  a PACE step on half the batch every second step, plain noisy steps in between

Protocol (the test split is never used to choose anything):

1. Tuning, seed 0 only, per k and variant, scored on the VALIDATION split:
   ``off`` over a learning-rate x weight-decay grid; each PACE variant over a
   lambda x sigma grid at the recipe's learning rate and weight decay.
   The best validation top-1 wins (ties: lower validation loss, then grid order).
2. Final runs at the chosen setting with seeds 0, 1, 2 (seed = data.seed = train.seed, so both
   the k-shot draw and the initialisation/noise change); TEST top-1 reported as mean +- std.
   The seed-0 final run is the tuning run itself (training is deterministic), so only its
   test accuracy is computed afterwards from its saved adapter.
3. The per-epoch diagnostics from metrics.jsonl (mean gradient norm of the trainable tensors,
   FP-distance to the pre-trained model on a fixed probe batch) of the final runs are
   summarised for the baseline against the PACE variants, and plotted.

Every finished run is appended as one JSON line to the results file; a re-run skips what is
already there, so the study can be interrupted, resumed and extended (more seeds, more k).

    python benchmarks/accuracy.py                      # the whole study (~36 min on 2 shared cores)
    python benchmarks/accuracy.py --report-only        # tables + plot from the results file
    python benchmarks/accuracy.py --lambdas 0.1 0.5 1 2 --sigmas 0.5 1 1.5   # extend to the full grid

Also run: a control (off at the PACE variants' lr/wd, 3 seeds) that separates the effect of the
regulariser from the baseline's learning-rate tuning, and a noise-free end-of-training probe
(clean loss and gradient norm on the k-shot training set and on val) of the diagnostic runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_RESULTS = HERE / "accuracy_results" / "runs.jsonl"
DEFAULT_WORKDIR = HERE / "accuracy_results" / "work"
DEFAULT_PLOT = HERE / "accuracy_diagnostics.png"
DEFAULT_TABLES = HERE / "accuracy_results" / "tables.md"
DEFAULT_SUMMARY = HERE / "accuracy_results" / "summary.json"

VARIANTS = ("off", "pace", "fast", "lazy")


# ---------------------------------------------------------------- run identity


def run_key(cfg: dict) -> str:
    """A stable name for one training run; also its folder name under the work dir."""
    return (f"k{cfg['shots']}-{cfg['variant']}-s{cfg['seed']}-e{cfg['epochs']}"
            f"-lr{cfg['lr']:g}-wd{cfg['wd']:g}-lam{cfg['lam']:g}-sig{cfg['sigma']:g}")


def make_cfg(args, *, shots, variant, seed, lr, wd, lam, sigma) -> dict:
    if variant == "off":  # lambda and sigma do nothing without the regulariser
        lam, sigma = 0.0, 0.0
    return dict(shots=shots, variant=variant, seed=seed, epochs=args.epochs, lr=lr, wd=wd, lam=lam,
                sigma=sigma, recipe=str(args.recipe))


def overrides(cfg: dict) -> list[str]:
    out = [
        f"data.shots={cfg['shots']}", f"data.seed={cfg['seed']}", f"train.seed={cfg['seed']}",
        f"train.epochs={cfg['epochs']}", f"train.eval_every={cfg['epochs']}", "train.device=cpu",
        f"train.log_every=1000000", f"optim.lr={cfg['lr']!r}", f"optim.weight_decay={cfg['wd']!r}",
        f"pace.variant={cfg['variant']}",
    ]
    if cfg["variant"] != "off":
        out += [f"pace.lambda={cfg['lam']!r}", f"pace.sigma={cfg['sigma']!r}"]
    return out


# ---------------------------------------------------------------- worker side


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_job(cfg: dict, workdir: str, do_train: bool, do_test: bool) -> list[dict]:
    """Train (unless only the test score is missing) and/or evaluate one run; returns records."""
    from pace_cli.recipe import load_recipe
    from pace_cli.evaluation import evaluate_recipe
    from pace_cli.training.loop import train

    key = run_key(cfg)
    out = Path(workdir) / key
    recipe = load_recipe(cfg["recipe"], overrides(cfg))
    records = []
    if do_train:
        started = time.perf_counter()
        result = train(recipe, output_dir=out, overwrite=True)
        seconds = time.perf_counter() - started
        epochs = [json.loads(line) for line in open(result.metrics_path)]
        epochs = [e for e in epochs if e.get("type") == "epoch"]
        records.append({
            "kind": "train", "key": key, "cfg": cfg, "val_top1": result.val.top1, "val_loss": result.val.loss,
            "steps": result.steps, "seconds": round(seconds, 2),
            "epochs": [{f: e.get(f) for f in ("epoch", "grad_norm", "fp_distance", "train_top1", "train_ce",
                                              "train_consistency", "lr", "seconds")} for e in epochs],
        })
    if do_test:
        started = time.perf_counter()
        test = evaluate_recipe(recipe, adapter=out / "adapter.safetensors", split="test")
        records.append({"kind": "test", "key": key, "cfg": cfg, "test_top1": test.top1, "test_loss": test.loss,
                        "test_samples": test.samples, "seconds": round(time.perf_counter() - started, 2)})
    return records


def clean_probe(cfg: dict, workdir: str) -> dict:
    """Noise-free loss and gradient norm of a finished run, on its k-shot training set and on val.

    The per-epoch grad_norm in metrics.jsonl is taken on each variant's own training objective
    (noisy passes, plus λ·consistency for PACE), so it does not compare like with like. Here the
    trained adapters are loaded unmerged, the model is put in eval mode (no noise, no drop path)
    and the plain cross-entropy over a whole split is differentiated with respect to the same
    trainable tensors (adapters and head).
    """
    import torch

    from pace_cli.builders import build_dataset
    from pace_cli.data import make_loader
    from pace_cli.recipe import load_recipe
    from pace_cli.evaluation import build_eval_model

    key = run_key(cfg)
    recipe = load_recipe(cfg["recipe"], overrides(cfg))
    model, _ = build_eval_model(recipe, adapter=Path(workdir) / key / "adapter.safetensors", unmerged=True)
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    out = {"kind": "probe", "key": key, "cfg": cfg, "trainable": sum(p.numel() for p in params)}
    for name, dataset in (("train", build_dataset(recipe, recipe.data.train_split, train=True)),
                          ("val", build_dataset(recipe, recipe.data.val_split))):
        model.zero_grad(set_to_none=True)
        total, correct = 0.0, 0
        for images, labels, _ in make_loader(dataset, 256, shuffle=False):
            logits = model(images)
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum") / len(dataset)
            loss.backward()
            total += loss.item()
            correct += (logits.argmax(1) == labels).sum().item()
        grad = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None)).item()
        out[f"{name}_ce"], out[f"{name}_grad_norm"], out[f"{name}_top1"] = total, grad, correct / len(dataset)
    return out


# ---------------------------------------------------------------- driver side


class Results:
    """The append-only JSON-lines file of finished runs."""

    def __init__(self, path: Path):
        self.path = path
        self.train: dict[str, dict] = {}
        self.test: dict[str, dict] = {}
        self.probe: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    self._index(json.loads(line))

    def _index(self, rec: dict) -> None:
        {"train": self.train, "test": self.test, "probe": self.probe}[rec["kind"]][rec["key"]] = rec

    def add(self, rec: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        self._index(rec)


class Runner:
    def __init__(self, args, results: Results):
        self.args = args
        self.results = results
        self.pool = None
        if args.workers > 1:
            import multiprocessing as mp

            self.pool = ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn"),
                                            initializer=_init_worker, initargs=(args.threads,))
        else:
            _init_worker(args.threads)
        self.started = time.perf_counter()
        self.done = 0

    def need(self, cfg: dict, test: bool) -> tuple[bool, bool]:
        key = run_key(cfg)
        has_train = key in self.results.train
        has_test = key in self.results.test
        adapter = Path(self.args.workdir) / key / "adapter.safetensors"
        if test and not has_test:
            return (not has_train or not adapter.exists()), True
        return (not has_train), False

    def run_all(self, jobs: list[tuple[dict, bool]]) -> None:
        todo = []
        for cfg, test in jobs:
            do_train, do_test = self.need(cfg, test)
            if do_train or do_test:
                todo.append((cfg, do_train, do_test))
        if not todo:
            return
        print(f"  {len(todo)} job(s) to run", flush=True)
        if self.pool is None:
            for cfg, do_train, do_test in todo:
                self._record(run_job(cfg, str(self.args.workdir), do_train, do_test))
            return
        pending = {self.pool.submit(run_job, cfg, str(self.args.workdir), tr, te) for cfg, tr, te in todo}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                self._record(fut.result())

    def _record(self, records: list[dict]) -> None:
        for rec in records:
            self.results.add(rec)
            self.done += 1
            elapsed = (time.perf_counter() - self.started) / 60
            score = {"train": lambda: f"val {rec['val_top1']:.4f}", "test": lambda: f"test {rec['test_top1']:.4f}",
                     "probe": lambda: f"clean train grad {rec['train_grad_norm']:.4f}"}[rec["kind"]]()
            print(f"  [{elapsed:5.1f} min] {rec['kind']:5s} {rec['key']}: {score} ({rec.get('seconds', 0):.0f} s)",
                  flush=True)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def tuning_grid(args, shots: int, variant: str) -> list[dict]:
    if variant == "off":
        pairs = [dict(lr=lr, wd=wd, lam=0.0, sigma=0.0) for lr, wd in itertools.product(args.base_lrs, args.base_wds)]
    else:
        pairs = [dict(lr=lr, wd=args.pace_wd, lam=lam, sigma=sigma)
                 for lr, lam, sigma in itertools.product(args.pace_lrs, args.lambdas, args.sigmas)]
    return [make_cfg(args, shots=shots, variant=variant, seed=args.tune_seed, **p) for p in pairs]


def control_cfg(args, shots: int, seed: int) -> dict:
    """The baseline at the PACE variants' learning rate and weight decay (not tuned; a control)."""
    return make_cfg(args, shots=shots, variant="off", seed=seed, lr=args.pace_lr, wd=args.pace_wd, lam=0.0, sigma=0.0)


def choose(results: Results, grid: list[dict]) -> tuple[dict, list[dict]]:
    """Best validation top-1; ties go to the lower validation loss, then to the earlier grid point."""
    rows = [results.train[run_key(cfg)] for cfg in grid]
    best = min(range(len(rows)), key=lambda i: (-rows[i]["val_top1"], rows[i]["val_loss"], i))
    return grid[best], rows


def with_seed(cfg: dict, seed: int) -> dict:
    return {**cfg, "seed": seed}


def study(args) -> dict:
    results = Results(args.results)
    runner = Runner(args, results)
    chosen: dict[str, dict[str, dict]] = {}
    try:
        for shots in args.shots:
            print(f"k = {shots}: tuning on val (seed {args.tune_seed})", flush=True)
            grids = {v: tuning_grid(args, shots, v) for v in args.variants}
            runner.run_all([(cfg, False) for v in args.variants for cfg in grids[v]])
            chosen[str(shots)] = {}
            for v in args.variants:
                best, _ = choose(results, grids[v])
                chosen[str(shots)][v] = best
            print(f"k = {shots}: final runs, seeds {args.seeds}", flush=True)
            runner.run_all([(with_seed(chosen[str(shots)][v], s), True) for v in args.variants for s in args.seeds])
            if args.prune:
                prune_workdir(args, results, chosen)
        if args.matched_control and "off" in args.variants:
            print(f"matched-lr control: off at lr {args.pace_lr:g}, wd {args.pace_wd:g}, seeds {args.seeds}",
                  flush=True)
            runner.run_all([(control_cfg(args, shots, s), True) for shots in args.shots for s in args.seeds])
        if str(args.diag_shots) in chosen:
            print(f"k = {args.diag_shots}: clean end-of-training probes of the final runs", flush=True)
            per_variant = {v: {"chosen": {f: cfg[f] for f in ("lr", "wd", "lam", "sigma")}}
                           for v, cfg in chosen[str(args.diag_shots)].items()}
            for cfgs in diag_runs(args, args.diag_shots, per_variant).values():
                for cfg in cfgs:
                    if run_key(cfg) not in results.probe:
                        runner._record([clean_probe(cfg, str(args.workdir))])
    finally:
        runner.close()
    return chosen


def prune_workdir(args, results: Results, chosen: dict) -> None:
    """Delete run folders that no final score needs (the records keep everything measured)."""
    keep = {run_key(with_seed(cfg, s)) for per_k in chosen.values() for cfg in per_k.values() for s in args.seeds}
    for folder in Path(args.workdir).glob("k*-*"):
        if folder.name not in keep and folder.name in results.train:
            shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- report


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_hp(cfg: dict) -> str:
    if cfg["variant"] == "off":
        return f"lr {cfg['lr']:g}, wd {cfg['wd']:g}"
    return f"λ {cfg['lam']:g}, σ {cfg['sigma']:g} (lr {cfg['lr']:g}, wd {cfg['wd']:g})"


def report(args) -> dict:
    results = Results(args.results)
    summary: dict = {"shots": {}, "diagnostics": {}}
    lines: list[str] = []

    # chosen settings and final scores
    hp_rows, acc_rows, grid_rows = [], [], []
    for shots in args.shots:
        per_variant = {}
        for v in args.variants:
            grid = tuning_grid(args, shots, v)
            if not all(run_key(c) in results.train for c in grid):
                continue
            best, rows = choose(results, grid)
            finals = [with_seed(best, s) for s in args.seeds]
            tests = [results.test[run_key(c)]["test_top1"] for c in finals if run_key(c) in results.test]
            vals = [results.train[run_key(c)]["val_top1"] for c in finals if run_key(c) in results.train]
            entry = {"chosen": {k: best[k] for k in ("lr", "wd", "lam", "sigma")},
                     "tuning_val_top1": {run_key(c): r["val_top1"] for c, r in zip(grid, rows)},
                     "test_top1": tests, "final_val_top1": vals}
            if tests:
                entry["test_mean"], entry["test_std"] = mean_std(tests)
            per_variant[v] = entry
            grid_vals = [r["val_top1"] for r in rows]
            hp_rows.append(f"| {shots} | {v} | {fmt_hp(best)} | {max(grid_vals):.3f} | "
                           f"{min(grid_vals):.3f}–{max(grid_vals):.3f} ({len(grid)} settings) |")
        summary["shots"][str(shots)] = per_variant
        if per_variant:
            cells = []
            base = per_variant.get("off", {}).get("test_mean")
            for v in args.variants:
                e = per_variant.get(v)
                if not e or "test_mean" not in e:
                    cells.append("–")
                    continue
                cell = f"{100 * e['test_mean']:.1f} ± {100 * e['test_std']:.1f} (n={len(e['test_top1'])})"
                if v != "off" and base is not None:
                    cell += f" [{100 * (e['test_mean'] - base):+.1f}]"
                cells.append(cell)
            acc_rows.append(f"| {shots} | " + " | ".join(cells) + " |")

    lines += ["## Test top-1 (%), mean ± std over seeds; [difference to off]", "",
              "| k | " + " | ".join(args.variants) + " |", "|---|" + "---|" * len(args.variants)] + acc_rows + [""]
    control_rows = []
    for shots in args.shots:
        tests = [results.test[k]["test_top1"] for k in (run_key(control_cfg(args, shots, s)) for s in args.seeds)
                 if k in results.test]
        pace = summary["shots"].get(str(shots), {}).get("pace", {})
        if tests:
            m, sd = mean_std(tests)
            summary["shots"][str(shots)]["off_at_pace_lr"] = {"test_top1": tests, "test_mean": m, "test_std": sd}
            diff = f"{100 * (pace['test_mean'] - m):+.1f}" if "test_mean" in pace else "–"
            control_rows.append(f"| {shots} | {100 * m:.1f} ± {100 * sd:.1f} (n={len(tests)}) | {diff} |")
    if control_rows:
        lines += [f"## Control: off at the PACE variants' lr {args.pace_lr:g} / wd {args.pace_wd:g} (not tuned), "
                  "test top-1 (%)", "", "| k | off at PACE's lr | pace minus this |", "|---|---|---|"] \
            + control_rows + [""]
    # paired differences: the same seed draws the same k-shot training set for every variant
    paired_rows = []
    for shots in args.shots:
        per_variant = summary["shots"].get(str(shots), {})
        refs = {"off": per_variant.get("off", {}).get("test_top1"),
                control_name(args): per_variant.get("off_at_pace_lr", {}).get("test_top1")}
        cells = []
        for v in [v for v in args.variants if v != "off"]:
            for ref_name, ref in refs.items():
                mine = per_variant.get(v, {}).get("test_top1")
                if not mine or not ref or len(mine) != len(ref):
                    cells.append("–")
                    continue
                diffs = [100 * (a - b) for a, b in zip(mine, ref)]
                m, sd = mean_std(diffs)
                wins = sum(d > 0 for d in diffs)
                cells.append(f"{m:+.1f} ± {sd:.1f} ({wins}/{len(diffs)})")
        paired_rows.append(f"| {shots} | " + " | ".join(cells) + " |")
    heads = [f"{v} − {r}" for v in args.variants if v != "off" for r in ("off", control_name(args))]
    lines += ["## Paired test differences (points), mean ± std over seeds (seeds where the variant is ahead)", "",
              "| k | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)] + paired_rows + [""]
    lines += ["## Chosen settings (validation, seed 0)", "",
              "| k | variant | chosen | val top-1 (chosen) | val top-1 range over the grid |",
              "|---|---|---|---|---|"] + hp_rows + [""]

    # per-seed test scores
    lines += ["## Per-seed test top-1 (%)", "", "| k | variant | " + " | ".join(f"seed {s}" for s in args.seeds) + " |",
              "|---|---|" + "---|" * len(args.seeds)]
    for shots in args.shots:
        for v in args.variants:
            e = summary["shots"].get(str(shots), {}).get(v)
            if not e:
                continue
            cells = []
            for s in args.seeds:
                key = run_key(with_seed(make_cfg(args, shots=shots, variant=v, seed=s, **e["chosen"]), s))
                cells.append(f"{100 * results.test[key]['test_top1']:.1f}" if key in results.test else "–")
            lines.append(f"| {shots} | {v} | " + " | ".join(cells) + " |")
    lines.append("")

    # full validation grids
    lines += ["## Validation top-1 (%) of every tuning run (seed 0)", ""]
    for shots in args.shots:
        for v in args.variants:
            grid = tuning_grid(args, shots, v)
            if not all(run_key(c) in results.train for c in grid):
                continue
            if v == "off":
                head, rows_, cols_ = "lr \\ wd", args.base_lrs, args.base_wds
                pick = lambda r, c: dict(lr=r, wd=c, lam=0.0, sigma=0.0)  # noqa: E731
            else:
                head, rows_, cols_ = "lr, λ \\ σ", list(itertools.product(args.pace_lrs, args.lambdas)), args.sigmas
                pick = lambda r, c: dict(lr=r[0], wd=args.pace_wd, lam=r[1], sigma=c)  # noqa: E731
            lines += [f"k = {shots}, {v}:", "", f"| {head} | " + " | ".join(f"{c:g}" for c in cols_) + " |",
                      "|---|" + "---|" * len(cols_)]
            for r in rows_:
                cells = []
                for c in cols_:
                    key = run_key(make_cfg(args, shots=shots, variant=v, seed=args.tune_seed, **pick(r, c)))
                    cells.append(f"{100 * results.train[key]['val_top1']:.1f}")
                label = f"{r:g}" if v == "off" else f"{r[0]:g}, {r[1]:g}"
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")

    # diagnostics at the chosen settings
    diag = diagnostics(args, results, summary)
    if diag:
        lines += diag
    text = "\n".join(lines) + "\n"
    args.tables.parent.mkdir(parents=True, exist_ok=True)
    args.tables.write_text(text)
    args.summary.write_text(json.dumps(summary, indent=1) + "\n")
    print(text)
    return summary


def control_name(args) -> str:
    return f"off@lr{args.pace_lr:g}"


def diag_runs(args, shots: int, per_variant: dict) -> dict[str, list[dict]]:
    """The final runs whose curves are shown: each variant at its chosen setting, plus the control."""
    out = {v: [with_seed(make_cfg(args, shots=shots, variant=v, seed=0, **per_variant[v]["chosen"]), s)
               for s in args.seeds] for v in args.variants if per_variant.get(v)}
    if args.matched_control and "off" in out:
        out[control_name(args)] = [control_cfg(args, shots, s) for s in args.seeds]
    return out


def diagnostics(args, results: Results, summary: dict) -> list[str]:
    shots = args.diag_shots
    per_variant = summary["shots"].get(str(shots), {})
    runs_of = diag_runs(args, shots, per_variant)
    curves = {}
    for name, cfgs in runs_of.items():
        runs = [results.train[run_key(c)]["epochs"] for c in cfgs if run_key(c) in results.train]
        if runs:
            curves[name] = runs
    if "off" not in curves:
        return []
    n_epochs = min(len(r) for runs in curves.values() for r in runs)

    def avg(v, field, i):
        return statistics.fmean(r[i][field] for r in curves[v])

    shown = [v for v in runs_of if v in curves]
    summary["diagnostics"] = {
        "shots": shots,
        "seeds": {v: len(curves[v]) for v in shown},
        "per_epoch": {v: {f: [avg(v, f, i) for i in range(n_epochs)]
                          for f in ("grad_norm", "fp_distance", "train_top1", "train_ce", "train_consistency")}
                      for v in shown},
    }
    lines = [f"## Diagnostics at k = {shots}, chosen settings, mean over {min(len(c) for c in curves.values())} seeds",
             "", "Gradient norm = mean over the epoch's steps of the global L2 norm of the trainable tensors' "
             "gradient of the training loss (CE + λ·consistency for PACE variants). FP-distance = mean "
             "squared L2 distance between the logits with and without the adapters (same head) on a fixed "
             "batch of 64 validation images, after the epoch.", "",
             "| epoch | " + " | ".join(f"grad norm {v}" for v in shown) + " | "
             + " | ".join(f"FP-dist {v}" for v in shown) + " | " + " | ".join(f"train top-1 {v}" for v in shown) + " |",
             "|---|" + "---|" * (3 * len(shown))]
    for i in range(n_epochs):
        cells = [f"{avg(v, 'grad_norm', i):.3f}" for v in shown] + [f"{avg(v, 'fp_distance', i):.2f}" for v in shown] \
            + [f"{avg(v, 'train_top1', i):.2f}" for v in shown]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines.append("")
    probes = {v: [results.probe[run_key(c)] for c in runs_of[v] if run_key(c) in results.probe] for v in shown}
    if any(probes.values()):
        fields = [("train_ce", "clean train CE"), ("train_grad_norm", "clean train grad norm"),
                  ("val_ce", "val CE"), ("val_grad_norm", "val grad norm")]
        summary["diagnostics"]["clean_probe"] = {v: {f: [r[f] for r in probes[v]] for f, _ in fields} for v in shown}
        lines += [f"## End of training, noise-free (eval mode), k = {shots}: mean ± std over seeds", "",
                  "Cross-entropy over the whole split and the L2 norm of its gradient with respect to the "
                  "trainable tensors (adapters + head); no noise, no consistency term, no drop path.", "",
                  "| variant | n | " + " | ".join(label for _, label in fields) + " | final FP-distance |",
                  "|---|---|" + "---|" * (len(fields) + 1)]
        for v in shown:
            if not probes[v]:
                continue
            cells = []
            for f, _ in fields:
                m, sd = mean_std([r[f] for r in probes[v]])
                cells.append(f"{m:.4f} ± {sd:.4f}")
            m, sd = mean_std([r[-1]["fp_distance"] for r in curves[v]])
            lines.append(f"| {v} | {len(probes[v])} | " + " | ".join(cells) + f" | {m:.2f} ± {sd:.2f} |")
        lines.append("")
    plot(args, curves, shown, n_epochs)
    return lines


def plot(args, curves: dict, shown: list[str], n_epochs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"off": "black", "pace": "tab:red", "fast": "tab:blue", "lazy": "tab:green", control_name(args): "grey"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    epochs = list(range(1, n_epochs + 1))
    for ax, field, title in ((axes[0], "grad_norm", "gradient norm (trainable tensors)"),
                             (axes[1], "fp_distance", "FP-distance to the pre-trained model")):
        for v in shown:
            per_seed = [[r[i][field] for i in range(n_epochs)] for r in curves[v]]
            mean = [statistics.fmean(col) for col in zip(*per_seed)]
            lo = [min(col) for col in zip(*per_seed)]
            hi = [max(col) for col in zip(*per_seed)]
            style = "-" if v in ("off", "pace") else (":" if v == control_name(args) else "--")
            ax.plot(epochs, mean, style, color=colours.get(v), label=f"{v} ({len(per_seed)} seeds)")
            ax.fill_between(epochs, lo, hi, color=colours.get(v), alpha=0.12)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"digits, k = {args.diag_shots} shots per class, chosen settings (mean, band = min..max over seeds)")
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    print(f"wrote {args.plot}")


# ---------------------------------------------------------------- CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recipe", type=Path, default=REPO / "recipes" / "quickstart.toml")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the final runs")
    p.add_argument("--tune-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30, help="epochs of every run, whatever k")
    # The grid is lambda {0.1, 0.5, 1, 2} x sigma {0.5, 1, 1.5}; the default is its 3 x 2
    # corner subset, the same size as the baseline's grid, to fit the study in ~35 CPU minutes.
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 0.5, 2.0])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.5])
    p.add_argument("--pace-lrs", type=float, nargs="+", default=[5e-3],
                   help="learning rates tried for the PACE variants (jointly with λ and σ); the first is "
                        "also the matched-lr control's")
    p.add_argument("--pace-wd", type=float, default=1e-4, help="weight decay of the PACE variants")
    p.add_argument("--base-lrs", type=float, nargs="+", default=[2e-3, 5e-3, 1e-2])
    p.add_argument("--base-wds", type=float, nargs="+", default=[1e-4, 1e-2])
    p.add_argument("--diag-shots", type=int, default=8, help="k of the diagnostics table and plot")
    p.add_argument("--workers", type=int, default=2, help="training processes in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="run folders (adapters, metrics)")
    p.add_argument("--tables", type=Path, default=DEFAULT_TABLES)
    p.add_argument("--summary", type=Path, default=DEFAULT_SUMMARY)
    p.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    p.add_argument("--no-matched-control", dest="matched_control", action="store_false",
                   help="skip the control runs of off at the PACE variants' lr/wd")
    p.add_argument("--prune", action="store_true", help="delete run folders no final score needs")
    p.add_argument("--report-only", action="store_true", help="no training; tables and plot from the results file")
    args = p.parse_args(argv)
    args.pace_lr = args.pace_lrs[0]  # the matched-lr control's
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(REPO)  # the recipe's builtin checkpoint and relative paths resolve from the repository
    if not args.report_only:
        t0 = time.perf_counter()
        study(args)
        print(f"study done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
