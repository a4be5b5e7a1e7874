"""What DistributedDataParallel costs: N Gloo processes at B/N each against one process at B.

    python benchmarks/bench_ddp.py [--rounds 3] [--nproc 2] [--json-out ddp.json]

Each configuration is a real `pace train` command (synthetic data, no validation split), run as
one process and as `--nproc N`, alternating, `--rounds` times; the figure is the training loop's
images/s that `pace train --json` reports, and the ratio is time per global step with N processes
over time with one, taken per round (median over rounds). One process gets all the cores as
intra-op threads, each of N processes gets cores/N, so the comparison is at equal hardware.

On a CPU the processes share the same cores, so this measures the price of the synchronisation
(gradient all-reduce, the per-step stop-flag all-reduce, the `fast` variant's all-gather) and of
splitting the work, not a speed-up. It also prints the all-reduce payload per step for ViT-B/16 at
rank 10, which is what scales on GPUs.
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
    "tiny ViT (shipped backbone shape, 28 px)": (
        'name = "vit_tiny_patch16_224"\nimg_size = 28\nin_chans = 1\n'
        'kwargs = { patch_size = 7, embed_dim = 128, depth = 6, num_heads = 4 }', 32, 4),
    "ViT-S/16 at 112 px": ('name = "vit_small_patch16_224"\nimg_size = 112', 16, 1),
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


def run_train(recipe: Path, out: Path, nproc: int) -> float:
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // nproc)), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "pace_cli", "train", str(recipe), "-o", str(out), "--overwrite", "--json"]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"pace train failed ({done.returncode}): {done.stderr[-2000:]}")
    start = done.stdout.index("{")
    return json.loads(done.stdout[start:done.stdout.rindex("}") + 1])["images_per_second"]


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
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    results = {"nproc": args.nproc, "cores": os.cpu_count(), "load_start": os.getloadavg(), "configs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, batch, epochs) in CONFIGS.items():
            for variant in args.variants:
                recipe = Path(tmp) / f"{variant}.toml"
                recipe.write_text(recipe_text(model, batch, epochs, variant))
                one, many, ratios = [], [], []
                for _ in range(args.rounds):
                    a = run_train(recipe, Path(tmp) / "one", 1)
                    b = run_train(recipe, Path(tmp) / "many", args.nproc)
                    one.append(a)
                    many.append(b)
                    ratios.append(a / b)  # time per image with N processes / with one
                key = f"{name}, {variant}, global batch {batch}"
                results["configs"][key] = {"one_process_img_s": one, "n_process_img_s": many,
                                           "ratio_median": statistics.median(ratios)}
                print(f"{key}: 1 process {statistics.median(one):.1f} img/s, {args.nproc} processes "
                      f"{statistics.median(many):.1f} img/s, time ratio {statistics.median(ratios):.2f}x", flush=True)
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
