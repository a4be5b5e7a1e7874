#!/usr/bin/env python
"""[augment]'s cost: training images/s of a fewshot split of JPEGs at 224 px, with and without it.

    python benchmarks/augment_cost.py                    # 256 JPEGs (400x300), batch 64, workers 0
    python benchmarks/augment_cost.py --workers 2 --json

Writes a NOAH-style few-shot folder (annotations/train_meta.list.num_shot_16.seed_0, 16 classes x
16 images, smooth random images saved as JPEG quality 90, so decoding costs what a photo's
would) in a temporary directory and loads its training split through the real data set and
loader, three ways, in interleaved rounds (the table gives the median of each, per wall-clock
second and per CPU second of the loading process):

- ``source``: the fewshot source's own training images (shorter side to 256, random 224 crop, flip);
- ``timm``: ``[augment] transform = "timm"`` with NOAH's ImageNet settings (RandomResizedCrop,
  flip, RandAugment rand-m9-mstd0.5-inc1, bicubic, random erasing 0.25 pixel), each sample under
  its own keyed generators;
- ``timm + mix``: the same, then Mixup 0.8 / CutMix 1.0 with label smoothing 0.1 on every batch.

Only loading (and mixing) is timed; no model runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pace_cli.data import batch_mix, build_dataset, make_loader

NOAH_TRANSFORM = {"auto_augment": "rand-m9-mstd0.5-inc1", "interpolation": "bicubic", "re_prob": 0.25,
                  "re_mode": "pixel", "re_count": 1}
NOAH_MIX = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mix_prob": 1.0, "switch_prob": 0.5, "label_smoothing": 0.1}
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_fewshot(root: Path, images: int, classes: int, size=(400, 300)) -> int:
    """``images`` JPEGs over ``classes`` classes in the fgvc layout; returns the shots per class."""
    rng = np.random.default_rng(0)
    shots = images // classes
    lines = []
    for i in range(shots * classes):
        coarse = rng.integers(0, 256, size=(size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        path = root / "images" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR).save(path, quality=90)
        lines.append(f"{path.name} {i % classes}\n")
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"train_meta.list.num_shot_{shots}.seed_0").write_text("".join(lines))
    return shots


def epoch_images_per_s(loader, dataset, epoch: int, mix=None) -> tuple[float, float]:
    """Images per wall-clock second and per CPU second of this process (the fairer figure on a shared
    machine; with workers > 0 their CPU time is not counted, so read the wall-clock one)."""
    dataset.set_epoch(epoch)
    wall, cpu, seen = time.perf_counter(), time.process_time(), 0
    for step, (images, labels, _) in enumerate(loader):
        if mix is not None:
            images, labels = mix(images, labels, step)
        seen += images.shape[0]
    return seen / (time.perf_counter() - wall), seen / (time.process_time() - cpu)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # loading only; every transform is per image
    with tempfile.TemporaryDirectory() as tmp:
        shots = make_fewshot(Path(tmp), args.images, args.classes)
        common = dict(root=tmp, list_shots=shots, image_size=224, mean=MEAN, std=STD, train=True)
        source = build_dataset("fewshot", "train", **common)
        timm = build_dataset("fewshot", "train", augment=NOAH_TRANSFORM, augment_seed=0, **common)
        mix = batch_mix(NOAH_MIX, num_classes=args.classes, seed=0, global_batch=args.batch)
        ways = {"source": (source, None), "timm": (timm, None), "timm + mix": (timm, mix)}
        loaders = {name: make_loader(ds, args.batch, shuffle=True, seed=0, drop_last=True, num_workers=args.workers)
                   for name, (ds, _) in ways.items()}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for round_ in range(args.rounds):
            for name, (ds, batch_mixer) in ways.items():
                times[name].append(epoch_images_per_s(loaders[name], ds, round_, batch_mixer))
    wall = {name: statistics.median(w for w, _ in values) for name, values in times.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in times.items()}
    result = {"images": shots * args.classes, "image_size": "400x300 JPEG -> 224", "batch": args.batch,
              "workers": args.workers, "rounds": args.rounds, "images_per_s": wall, "images_per_cpu_s": cpu,
              "ratio_to_source": {name: wall[name] / wall["source"] for name in ways},
              "cpu_ratio_to_source": {name: cpu[name] / cpu["source"] for name in ways},
              "raw": {name: [list(pair) for pair in values] for name, values in times.items()}}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"training images/s, {result['images']} JPEGs 400x300 -> 224 px, batch {args.batch}, "
          f"{args.workers} workers, median of {args.rounds} rounds")
    print(f"{'':>12} {'images/s':>9} {'x source':>8} {'per CPU s':>9} {'x source':>8}")
    for name in ways:
        print(f"{name:>12} {wall[name]:9.1f} {wall[name] / wall['source']:8.2f} {cpu[name]:9.1f} "
              f"{cpu[name] / cpu['source']:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
