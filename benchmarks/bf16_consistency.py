"""PACE's consistency term under bf16 autocast against fp32, at several noise strengths (issue 18).

    PYTHONPATH=. python benchmarks/bf16_consistency.py [--sigmas 1 0.1 0.01] [--seeds 0 1 2] [--json]

The term is ``PaceRegularizer.loss``'s consistency: the mean over samples of ||f1 − f2||², f1
and f2 the logits of the two noisy copies of a sample. For each model seed and step the same
model, batch and step noise keys are run once in fp32 and once under CPU bf16 autocast (what
``[train] precision = "bf16"`` does in the training loop), and the table gives the relative
error |c_bf16 − c_fp32| / c_fp32, averaged over every (seed, step), and its signed mean (a
positive bias is bf16's rounding putting a floor under f1 − f2). Rows ``all`` have PACE's noise
everywhere, the head's (σ/G) included; rows ``body`` leave the head's out, to show the share of
the term that the body's bf16 rounding reaches (with the head in float32, the head noise's own
share, about 2 (σ/G)² ||f||², is exact).

The model is built by the library as training builds it (``build_adapted_model`` from a recipe,
``PaceRegularizer`` with ``pace_config``), a toy ViT (timm ``vit_tiny_patch16_224``, width 192,
patch 8, ``--depth`` blocks, ``noise_free_blocks = 1`` and drop-path 0.1 as in the paper recipes)
with random base weights. Fresh adapters are exactly zero (ΔW = Δb = 0) and only the head's noise
would differ between the copies, so the zero-initialised adapter factors are drawn from
N(0, ``--adapter-std``²) to stand for a trained adapter. At ``--img-sizes 32`` a sample has 17
tokens and ``lora_mul`` runs the two-matmul noisy layer; at 64 (65 tokens) it takes the fused
per-sample-weight path, as ViT-B at 224 px does.

CPU autocast runs layer norms in bf16 too, where CUDA autocast keeps them in fp32, so a GPU's
error may be smaller; no GPU was measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from pace_cli.adapters import adapted_layers
from pace_cli.builders import build_adapted_model, pace_config
from pace_cli.recipe import parse_recipe
from pace_cli.regularizer import PaceRegularizer

RECIPE = """
[model]
name = "vit_tiny_patch16_224"
img_size = {img_size}
drop_path_rate = 0.1
kwargs = {{ patch_size = 8, depth = {depth} }}
[data]
source = "synthetic"
[adapter]
kind = "{kind}"
rank = {rank}
[pace]
variant = "pace"
lambda = 1.0
sigma = {sigma}
noise_free_blocks = 1
[train]
seed = {seed}
device = "cpu"
precision = "bf16"
"""

# The factors a kind initialises to zero (KINDS' "zeros" tensors); the others keep their Xavier init.
ZERO_INIT = ("lora_B", "prompt_B", "delta_bias")


def build(args, img_size: int, sigma: float, seed: int, head_noise: bool = True):
    recipe = parse_recipe(RECIPE.format(img_size=img_size, depth=args.depth, kind=args.kind, rank=args.rank,
                                        sigma=sigma, seed=seed))
    model, _ = build_adapted_model(recipe, args.num_classes)
    adapter_draws = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            for name, tensor in layer.adapter_tensors().items():
                if name in ZERO_INIT:
                    tensor.copy_(torch.randn(tensor.shape, generator=adapter_draws) * args.adapter_std)
    model.train()
    regularizer = PaceRegularizer(model, pace_config(recipe), seed=seed)
    if not head_noise:
        model.get_submodule(regularizer.head_name).pace_sigma = 0.0
    return model, regularizer


def consistency(regularizer: PaceRegularizer, images, labels, step: int, bf16: bool) -> float:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return regularizer.loss(images, labels, step=step).consistency.item()


def measure(args, img_size: int, sigma: float, head_noise: bool) -> dict:
    relative, signed, fp32_values = [], [], []
    for seed in args.seeds:
        model, regularizer = build(args, img_size, sigma, seed, head_noise)
        for step in range(args.steps):
            data = torch.Generator().manual_seed(seed * 1_000 + step)
            images = torch.randn(args.batch_size, 3, img_size, img_size, generator=data)
            labels = torch.randint(0, args.num_classes, (args.batch_size,), generator=data)
            reference = consistency(regularizer, images, labels, step, bf16=False)
            half = consistency(regularizer, images, labels, step, bf16=True)
            relative.append(abs(half - reference) / reference)
            signed.append((half - reference) / reference)
            fp32_values.append(reference)
        regularizer.remove()
    tokens = (img_size // 8) ** 2 + 1
    return {"noise": "all" if head_noise else "body", "img_size": img_size, "tokens": tokens, "sigma": sigma,
            "samples": len(relative),
            "mean_relative_error": statistics.fmean(relative), "max_relative_error": max(relative),
            "mean_signed_error": statistics.fmean(signed), "mean_fp32_consistency": statistics.fmean(fp32_values)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 0.1, 0.01])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model seeds (base, head, adapters)")
    parser.add_argument("--steps", type=int, default=4, help="batches per seed, each with its own step noise")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--img-sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--kind", default="lora_mul+vpt_add")
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--adapter-std", type=float, default=0.1,
                        help="std of the zero-initialised adapter factors (lora_B, prompt_B, delta_bias)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="also write the results as JSON to PATH (stdout without one)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = [measure(args, img_size, sigma, head_noise) for head_noise in (True, False)
            for img_size in args.img_sizes for sigma in args.sigmas]
    table_out = sys.stderr if args.json == "-" else sys.stdout  # stdout stays pure JSON with a bare --json
    print(f"{args.kind} rank {args.rank}, depth {args.depth}, batch {args.batch_size}, adapter std "
          f"{args.adapter_std}, seeds {args.seeds} x {args.steps} steps", file=table_out)
    header = (f"{'noise':>5} {'img':>4} {'tokens':>6} {'sigma':>6} {'c_fp32':>10} {'mean |rel err|':>15} "
              f"{'max':>8} {'signed':>8}")
    lines = [header] + [
        f"{r['noise']:>5} {r['img_size']:>4} {r['tokens']:>6} {r['sigma']:>6g} {r['mean_fp32_consistency']:>10.3e} "
        f"{100 * r['mean_relative_error']:>14.2f}% {100 * r['max_relative_error']:>7.2f}% "
        f"{100 * r['mean_signed_error']:>+7.2f}%" for r in rows]
    print("\n".join(lines), file=table_out)
    if args.json:
        document = {"config": {k: v for k, v in vars(args).items() if k != "json"}, "rows": rows,
                    "torch": torch.__version__, "machine": platform.machine(),
                    "seconds": round(time.perf_counter() - started, 1)}
        text = json.dumps(document, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as out:
                out.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
