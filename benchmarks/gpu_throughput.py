#!/usr/bin/env python
"""A short GPU throughput table: train-step and eval images/s per adapter kind, PACE variant and precision.

    python benchmarks/gpu_throughput.py                   # ViT-B/16 at 224, batch 64, on CUDA
    python benchmarks/gpu_throughput.py --device cpu --model tiny --steps 2   # smoke run without a GPU

Random weights and data (no downloads). Each figure: warm-up steps, then ``--steps`` timed steps
between two synchronisations. With PEFT installed its LoRA step is timed alongside as the
reference a user would compare with. Part of the GPU self-check (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import sys
import time

import timm
import torch

from pace_cli.adapters import AdapterConfig, inject_adapters
from pace_cli.regularizer import PaceConfig, PaceRegularizer

MODELS = {
    "vit_b": ("vit_base_patch16_224", {}, (3, 224, 224)),
    "vit_s": ("vit_small_patch16_224", {}, (3, 224, 224)),
    "tiny": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2), (3, 32, 32)),
}
TARGETS = ["qkv", "proj", "fc1", "fc2"]
CLASSES = 10
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(args, kind):
    name, kwargs, _ = MODELS[args.model]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)
    if kind == "peft":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=TARGETS,
                                                modules_to_save=["head"]))
    inject_adapters(model, AdapterConfig(kind=kind, rank=args.rank, targets=tuple(TARGETS)), num_classes=CLASSES)
    return model


def train_images_per_s(args, device, kind, variant, precision):
    model = _model(args, kind).to(device).train()
    batch = args.batch
    images = torch.randn((batch,) + MODELS[args.model][2], device=device)
    labels = torch.randint(0, CLASSES, (batch,), device=device)
    if kind == "peft":
        loss_fn = lambda step: torch.nn.functional.cross_entropy(model(images).float(), labels)  # noqa: E731
    else:
        reg = PaceRegularizer(model, PaceConfig(variant=variant), num_train_samples=batch, num_classes=CLASSES)
        indices = torch.arange(batch)
        loss_fn = lambda step: reg.loss(images, labels, indices, step).total  # noqa: E731
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    dtype = DTYPES[precision]

    def step(i):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(i)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for i in range(args.warmup):
        step(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    _sync(device)
    return batch * args.steps / (time.perf_counter() - start)


def eval_images_per_s(args, device, precision):
    name, kwargs, shape = MODELS[args.model]
    model = timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs).to(device).eval()
    images = torch.randn((args.batch,) + shape, device=device)
    dtype = DTYPES[precision]
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for _ in range(args.warmup):
            model(images)
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            model(images)
        _sync(device)
    return args.batch * args.steps / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_b", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (use --device cpu for a smoke run)", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what fp32 training on a GPU would normally use
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    try:
        import peft  # noqa: F401
        cases = [("peft", "off")]
    except ImportError:
        cases = []
        print("(peft not installed: no PEFT LoRA reference row; pip install -e .[bench])")
    cases += [("lora_add", "off"), ("lora_add", "fast"), ("lora_add", "pace"),
              ("lora_mul+vpt_add", "off"), ("lora_mul+vpt_add", "fast"), ("lora_mul+vpt_add", "pace")]
    precisions = args.precisions.split(",")
    print(f"\ntrain images/s, {MODELS[args.model][0]}, batch {args.batch}, rank {args.rank} on {', '.join(TARGETS)}")
    print(f"{'adapter':>18} {'variant':>7} " + " ".join(f"{p:>9}" for p in precisions))
    for kind, variant in cases:
        row = [train_images_per_s(args, device, kind, variant, p) for p in precisions]
        print(f"{kind:>18} {variant:>7} " + " ".join(f"{v:9.1f}" for v in row))
    row = [eval_images_per_s(args, device, p) for p in precisions]
    print(f"\neval images/s (plain / merged model): " + "  ".join(f"{p} {v:.1f}" for p, v in zip(precisions, row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
