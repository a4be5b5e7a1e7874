"""What DistributedDataParallel costs: N Gloo processes at B/N each against one process.

    python benchmarks/bench_ddp.py [--rounds 3] [--nproc 2] [--mode overhead|equal] [--json-out ddp.json]

Each configuration is a real `pace train` command (synthetic data, no validation split), run as
one process and as `--nproc N`, alternating, `--rounds` times; the figure is the training loop's
images/s that `pace train --json` reports; ratios are per round, the median is printed.

- ``--mode overhead`` (default): every process has one intra-op thread, and the one process trains
  on B/N images a step, exactly one rank's share. Each rank then does the single process's work,
  so the ratio of step times (N processes at global batch B / one process at B/N) is what the
  distributed machinery adds: the gradient all-reduce, the per-step stop-flag all-reduce, the
  `fast` variant's logit all-gather, plus whatever the processes cost each other on shared
  caches. It is robust to other load on the machine.
- ``--mode concurrent``: like ``overhead``, but the comparison runs N independent one-process
  trainings at B/N *at the same time*, so both sides suffer the same competition for cores and
  caches (on a 2-vCPU machine the two may be hyper-threads of one core) and the ratio is the
  communication and synchronisation alone.
- ``--mode equal``: one process with all cores as threads at batch B against N processes with
  cores/N threads each: the end-to-end comparison on equal hardware (on a CPU, no speed-up is to
  be expected; on a busy machine the multi-threaded single process suffers from thread barriers).

It also prints the all-reduce payload per step for ViT-B/16 at rank 10, which is what scales on GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {
    # name: (model section, batch, epochs)
    "tiny-vit-28px": (  # the shipped backbone's shape
        'name = "vit_tiny_patch16_224"\nimg_size = 28\nin_chans = 1\n'
        'kwargs = { patch_size = 7, embed_dim = 128, depth = 6, num_heads = 4 }', 32, 4),
    "vit-s16-112px": ('name = "vit_small_patch16_224"\nimg_size = 112', 16, 1),
}


def recipe_text(model: str, batch: int, epochs: int, variant: str) -> str:
    channels = 1 if "in_chans = 1" in model else 3
    return f"""
[model]
{model}
drop_path_rate = 0.1
[data]
source = "synthetic"
synthetic_size = {batch * 6}
channels = {channels}
val_split = ""
test_split = ""
batch_size = {batch}
[adapter]
kind = "lora_mul+vpt_add"
rank = 10
[pace]
variant = "{variant}"
[train]
epochs = {epochs}
device = "cpu"
log_every = 1000
"""


def run_train(recipe: Path, out: Path, nproc: int, threads: int, copies: int = 1) -> float:
    """images/s of `pace train` (N processes with ``nproc``); with ``copies`` > 1, that many
    independent one-process trainings run at once and their mean images/s is returned."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    commands = []
    for copy in range(copies):
        command = [sys.executable, "-m", "pace_cli", "train", str(recipe), "-o", f"{out}-{copy}", "--overwrite",
                   "--json"]
        commands.append(command + (["--nproc", str(nproc)] if nproc > 1 else []))
    running = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for c in commands]
    figures = []
    for process in running:
        stdout, stderr = process.communicate()
        if process.returncode:
            raise SystemExit(f"pace train failed ({process.returncode}): {stderr[-2000:]}")
        figures.append(json.loads(stdout[stdout.index("{"):stdout.rindex("}") + 1])["images_per_second"])
    return statistics.mean(figures)


def allreduce_payload() -> dict[str, float]:
    """Trainable tensors of ViT-B/16 (10-class head) per adapter kind at rank 10, built on the meta device."""
    import timm
    import torch

    from pace_cli.adapters import AdapterConfig, inject_adapters

    sizes = {}
    for kind in ("lora_mul+vpt_add", "lora_add"):
        with torch.device("meta"):
            model = timm.create_model("vit_base_patch16_224", num_classes=10)
        report = inject_adapters(model, AdapterConfig(kind=kind, rank=10), num_classes=10)
        sizes[kind] = {"trainable_parameters": report.trainable_parameters,
                       "fp32_MiB": report.trainable_parameters * 4 / 2**20,
                       "share_of_model": report.trainable_parameters / report.total_parameters}
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["off", "pace", "fast"])
    parser.add_argument("--mode", choices=["overhead", "concurrent", "equal"], default="overhead")
    parser.add_argument("--models", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    results = {"nproc": args.nproc, "cores": cores, "mode": args.mode, "load_start": os.getloadavg(), "configs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, batch, epochs = CONFIGS[name]
            for variant in args.variants:
                recipe = Path(tmp) / f"{variant}.toml"
                recipe.write_text(recipe_text(model, batch, epochs, variant))
                copies = args.nproc if args.mode == "concurrent" else 1
                if args.mode in ("overhead", "concurrent"):
                    # the one process trains on one rank's share, for as many steps as the N processes
                    single = Path(tmp) / f"{variant}-share.toml"
                    single.write_text(recipe_text(model, batch // args.nproc, epochs, variant).replace(
                        f"synthetic_size = {batch // args.nproc * 6}", f"synthetic_size = {batch * 6}"))
                    one_batch, one_threads, many_threads = batch // args.nproc, 1, 1
                else:
                    single, one_batch, one_threads, many_threads = recipe, batch, cores, max(1, cores // args.nproc)
                one, many, ratios = [], [], []
                for _ in range(args.rounds):
                    a = run_train(single, Path(tmp) / "one", 1, one_threads, copies)
                    b = run_train(recipe, Path(tmp) / "many", args.nproc, many_threads)
                    one.append(a)
                    many.append(b)
                    ratios.append((batch / b) / (one_batch / a))  # step time, N processes / one
                key = f"{name}, {variant}, global batch {batch}"
                results["configs"][key] = {"one_process_img_s": one, "n_process_img_s": many,
                                           "ratio_median": statistics.median(ratios)}
                print(f"{key} ({args.mode}): 1 process at batch {one_batch} {statistics.median(one):.1f} img/s, "
                      f"{args.nproc} processes {statistics.median(many):.1f} img/s, step-time ratio "
                      f"{statistics.median(ratios):.3f}x (rounds: {', '.join(f'{r:.3f}' for r in ratios)})", flush=True)
    results["allreduce_vit_b16_rank10"] = allreduce_payload()
    for kind, size in results["allreduce_vit_b16_rank10"].items():
        print(f"ViT-B/16 {kind} rank 10: {size['trainable_parameters']:,} trainable parameters = "
              f"{size['fp32_MiB']:.2f} MiB fp32 all-reduced per step ({100 * size['share_of_model']:.2f}% of the model)")
    results["load_end"] = os.getloadavg()
    results["date"] = time.strftime("%Y-%m-%d")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
