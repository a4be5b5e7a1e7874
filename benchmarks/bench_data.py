#!/usr/bin/env python
"""Data loading: images/s from an image folder of JPEGs at 224 px, with and without the decoded-image cache.

    python benchmarks/bench_data.py                      # 512 JPEGs (320x256), batch 32, workers 0 and 2
    python benchmarks/bench_data.py --images 256 --workers 0

Generates the folder in a temporary directory (smooth random images saved as JPEG quality 90,
so decoding costs what a photo's would). For each worker count: one epoch that fills the cache
(first epoch, cache on), then interleaved rounds of an uncached epoch and a cached epoch; the
table gives the median images/s of each and their ratio. Only loading is timed (no model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pace_cli.data import build_dataset, make_loader


def make_folder(root: Path, images: int, classes: int = 8, size=(320, 256)) -> None:
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / "train" / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, size=(size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR).save(folder / f"{i:05d}.jpg", quality=90)


def epoch_images_per_s(loader) -> float:
    start, seen = time.perf_counter(), 0
    for images, _, _ in loader:
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # loading only; the resize is per image
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp), args.images)
        common = dict(root=tmp, image_size=224, mean=[0.5] * 3, std=[0.25] * 3)
        for workers in args.workers:
            plain = build_dataset("imagefolder", "train", cache=False, **common)
            cached = build_dataset("imagefolder", "train", cache=True, **common)
            loaders = {name: make_loader(ds, args.batch, shuffle=True, seed=0, num_workers=workers)
                       for name, ds in (("no cache", plain), ("cache", cached))}
            first = epoch_images_per_s(loaders["cache"])  # decodes and fills the cache
            times = {"no cache": [], "cache": []}
            for _ in range(args.rounds):
                for name, loader in loaders.items():
                    times[name].append(epoch_images_per_s(loader))
            med = {k: statistics.median(v) for k, v in times.items()}
            results[workers] = {"first epoch, filling the cache": first, **med,
                                "cache / no cache": statistics.median(
                                    [c / p for c, p in zip(times["cache"], times["no cache"])]), "raw": times}
            del loaders
    print(f"images/s, {args.images} JPEGs 320x256 -> 224 px, batch {args.batch}, median of {args.rounds} rounds")
    print(f"{'workers':>7} {'no cache':>9} {'cache, 1st epoch':>16} {'cache, later':>12} {'speed-up':>8}")
    for workers, r in results.items():
        print(f"{workers:>7} {r['no cache']:9.0f} {r['first epoch, filling the cache']:16.0f} {r['cache']:12.0f} "
              f"{r['cache / no cache']:7.1f}x")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
