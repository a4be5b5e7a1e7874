#!/usr/bin/env python
"""Pre-train the tiny ViT backbone shipped in ``pace_cli/assets/fmnist_vit.safetensors``.

The backbone is a small timm ViT (~1.2M parameters, 4x4 = 16 patch tokens of
7x7 pixels) trained from scratch on the real Fashion-MNIST data set, as packaged
by Debian (``dataset-fashion-mnist``: gzipped idx files in
``/usr/share/datasets/fashion-mnist``). The quick start fine-tunes it on the
sklearn digits data set.

This script is self-contained (it does not import ``pace_cli``); it needs only
torch, timm, numpy and safetensors. It runs on CPU and is deterministic for a
given seed, torch version and thread count.

Reproduce the committed asset (from the repository root)::

    python scripts/pretrain_backbone.py --epochs 6 --seed 0 \
        --out pace_cli/assets/fmnist_vit.safetensors

Recipe: AdamW (lr 1e-3, weight decay 0.05, no decay on biases/norms/pos-embed/
cls-token), batch 256, label smoothing 0.1, 1 epoch linear warm-up then cosine
decay to 0 (per step), stochastic depth 0.1, augmentation = random shifts of up
to 2 px (zero-pad 2 + random 28x28 crop) and horizontal flips. Pixels are
scaled to [0, 1] then normalised with mean 0.286 and std 0.353.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import timm
from safetensors.torch import load_file, save_file

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUT = "pace_cli/assets/fmnist_vit.safetensors"

TIMM_MODEL = "vit_tiny_patch16_224"
# Architecture kwargs stored in the file's metadata (everything needed to
# rebuild the backbone, except the head size and the training-only drop path).
TIMM_KWARGS = {
    "img_size": 28,
    "patch_size": 7,
    "in_chans": 1,
    "embed_dim": 128,
    "depth": 6,
    "num_heads": 4,
}
NUM_CLASSES = 10
DROP_PATH_RATE = 0.1
CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MEAN = [0.286]
STD = [0.353]

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


# --------------------------------------------------------------------------- data
def read_idx(path: Path) -> np.ndarray:
    """Parse a (optionally gzipped) idx file into a numpy array.

    idx format: 2 zero bytes, 1 byte dtype code, 1 byte ndim, then ndim
    big-endian uint32 dimension sizes, then the data (big-endian).
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic)")
    dtype_code, ndim = raw[2], raw[3]
    dtypes = {
        0x08: np.dtype(np.uint8),
        0x09: np.dtype(np.int8),
        0x0B: np.dtype(">i2"),
        0x0C: np.dtype(">i4"),
        0x0D: np.dtype(">f4"),
        0x0E: np.dtype(">f8"),
    }
    if dtype_code not in dtypes:
        raise ValueError(f"{path}: unknown idx dtype code 0x{dtype_code:02x}")
    dtype = dtypes[dtype_code]
    header = 4 + 4 * ndim
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: payload is {len(raw) - header} bytes, expected {expected} for shape {shape}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def load_fashion_mnist(data_dir: Path):
    arrays = {}
    for key, name in FILES.items():
        p = data_dir / name
        if not p.exists() and (data_dir / name[:-3]).exists():
            p = data_dir / name[:-3]  # uncompressed variant
        if not p.exists():
            raise FileNotFoundError(
                f"missing {p}; install the Debian package 'dataset-fashion-mnist' "
                f"or pass --data pointing at the idx files"
            )
        arrays[key] = read_idx(p)
    xtr, ytr = arrays["train_images"], arrays["train_labels"]
    xte, yte = arrays["test_images"], arrays["test_labels"]
    assert xtr.shape == (60000, 28, 28) and ytr.shape == (60000,), (xtr.shape, ytr.shape)
    assert xte.shape == (10000, 28, 28) and yte.shape == (10000,), (xte.shape, yte.shape)
    # uint8 tensors, shape (N, 1, 28, 28); normalisation happens per batch.
    to_x = lambda a: torch.from_numpy(a.copy()).unsqueeze(1)  # noqa: E731
    to_y = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return to_x(xtr), to_y(ytr), to_x(xte), to_y(yte)


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    x = x_uint8.float().div_(255.0)
    return x.sub_(MEAN[0]).div_(STD[0])


def augment(x_uint8: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random shift of up to ``pad`` px (zero pad + random crop) and random h-flip."""
    b, c, h, w = x_uint8.shape
    padded = F.pad(x_uint8, (pad, pad, pad, pad))  # zeros == background
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (b, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (b, 1, w)
    flip = torch.rand(b, generator=gen) < 0.5
    cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
    bidx = torch.arange(b)[:, None, None]
    out = padded[:, 0][bidx, rows, cols]  # (b, h, w)
    return out.unsqueeze(1)


# --------------------------------------------------------------------------- model
def build_model(drop_path_rate: float = DROP_PATH_RATE) -> torch.nn.Module:
    return timm.create_model(
        TIMM_MODEL,
        pretrained=False,
        num_classes=NUM_CLASSES,
        drop_path_rate=drop_path_rate,
        **TIMM_KWARGS,
    )


def param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in ("pos_embed", "cls_token", "reg_token"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        logits = model(normalise(x[i : i + batch]))
        correct += (logits.argmax(-1) == y[i : i + batch]).sum().item()
    return correct / x.shape[0]


# --------------------------------------------------------------------------- save
def save_atomic(state: dict, metadata: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=6, help="training epochs (default 6)")
    ap.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"output file (default {DEFAULT_OUT})")
    ap.add_argument("--data", type=Path, default=Path(DEFAULT_DATA), help=f"folder with the idx(.gz) files (default {DEFAULT_DATA})")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = ap.parse_args(argv)
    if args.epochs < 1:
        ap.error("--epochs must be >= 1")

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(args.seed)

    t_start = time.perf_counter()
    xtr, ytr, xte, yte = load_fashion_mnist(args.data)
    print(
        f"data: {args.data} train={tuple(xtr.shape)} test={tuple(xte.shape)} "
        f"({time.perf_counter() - t_start:.1f}s)",
        flush=True,
    )

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {TIMM_MODEL} {json.dumps(TIMM_KWARGS)} num_classes={NUM_CLASSES} "
        f"drop_path_rate={DROP_PATH_RATE} params={n_params:,}",
        flush=True,
    )
    print(
        f"torch {torch.__version__} timm {timm.__version__} threads={torch.get_num_threads()} "
        f"seed={args.seed} epochs={args.epochs} batch={args.batch_size} lr={args.lr} wd={args.weight_decay}",
        flush=True,
    )

    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999))
    n = xtr.shape[0]
    steps_per_epoch = math.ceil(n / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = min(steps_per_epoch, total_steps)  # 1 epoch linear warm-up

    def lr_factor(step: int) -> float:  # step = index of the step about to run
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    t_train = time.perf_counter()
    test_acc = float("nan")
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(0, n, args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb = normalise(augment(xtr[idx], gen))
            yb = ytr[idx]
            logits = model(xb)
            loss = criterion(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bs = yb.shape[0]
            loss_sum += loss.item() * bs
            correct += (logits.argmax(-1) == yb).sum().item()
            seen += bs
        test_acc = evaluate(model, xte, yte)
        print(
            f"epoch {epoch}/{args.epochs} loss {loss_sum / seen:.4f} "
            f"train_acc {correct / seen:.4f} test_acc {test_acc:.4f} "
            f"lr {opt.param_groups[0]['lr']:.2e} elapsed {time.perf_counter() - t_train:.0f}s",
            flush=True,
        )
    train_seconds = time.perf_counter() - t_train

    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {
        "pace.kind": "base",
        "timm_model": TIMM_MODEL,
        "timm_kwargs": json.dumps(TIMM_KWARGS),
        "num_classes": str(NUM_CLASSES),
        "class_names": json.dumps(CLASS_NAMES),
        "mean": json.dumps(MEAN),
        "std": json.dumps(STD),
        "test_top1": f"{test_acc:.4f}",
        "trained_by": "scripts/pretrain_backbone.py",
        "epochs": str(args.epochs),
        "seed": str(args.seed),
    }
    save_atomic(state, metadata, args.out)

    # Verify: the file reloads strictly into a fresh model and reproduces the accuracy.
    fresh = timm.create_model(
        TIMM_MODEL, pretrained=False, num_classes=NUM_CLASSES, **json.loads(metadata["timm_kwargs"])
    )
    fresh.load_state_dict(load_file(str(args.out)), strict=True)
    reload_acc = evaluate(fresh, xte, yte)
    ok = abs(reload_acc - test_acc) < 1e-9
    size_mb = args.out.stat().st_size / 1e6
    print(
        f"saved {args.out} ({size_mb:.2f} MB, {len(state)} tensors) test_top1 {test_acc:.4f} "
        f"reloaded_top1 {reload_acc:.4f} {'OK' if ok else 'MISMATCH'} "
        f"train_time {train_seconds:.0f}s total {time.perf_counter() - t_start:.0f}s",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
