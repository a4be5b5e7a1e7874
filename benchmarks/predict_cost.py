#!/usr/bin/env python
"""`pace predict`'s cost: images/s of the merged model against the plain base, and ONNX Runtime against PyTorch.

    python benchmarks/predict_cost.py                      # 512 PNGs, batch 64, 5 rounds, 1 thread each
    python benchmarks/predict_cost.py --threads 0          # each library's own thread pool
    python benchmarks/predict_cost.py --images 1024 --json

Trains the quick start (the shipped Fashion-MNIST ViT, `lora_mul+vpt_add`) for one epoch on one
digit per class, merges it with `merge_files`, exports the merged file with `export_onnx`
(dynamic batch), and writes ``--images`` 28x28 grey PNGs of the digits test split to a temporary
folder. Then, after a warm-up, in interleaved rounds whose order rotates (medians reported):

- ``predict``: :func:`pace_cli.predict.predict_images` over the files (decode, resize, normalise,
  model, top-5), the library call behind `pace predict`, for the merged file, the plain base
  (`builtin:fmnist_vit` read with the quick-start recipe, its own 10-class head) and the ONNX file;
- ``forward``: the model alone on one preprocessed batch, repeated, to separate the model's cost
  from reading the files.

Each is given per wall-clock second and per CPU second of this process (``_cpu``; every thread
counted, so a busy shared machine disturbs it less).

The ratios the closing note quotes are merged / base (should be 1: a merged file is the base
architecture) and ONNX Runtime / PyTorch, each for both measures, plus the export's max logit and
probability differences.
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

from pace_cli.artifacts import export_onnx, merge_files
from pace_cli.builders import build_dataset
from pace_cli.models import resolve_checkpoint
from pace_cli.predict import load_image_model, predict_images
from pace_cli.recipe import load_recipe
from pace_cli.training import train

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.toml"
MEASURES = ("predict", "predict_cpu", "forward", "forward_cpu")


def write_digits(folder: Path, count: int) -> list[Path]:
    """``count`` test digits as 8-bit grey PNGs (cycling through the split), the input `predict` reads."""
    recipe = load_recipe(QUICKSTART, ["data.mean=''", "data.std=''"])
    split = build_dataset(recipe, "test")
    paths = []
    for i in range(count):
        image = split[i % len(split)][0][0].clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
        path = folder / f"{i:05d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def make_models(folder: Path, threads: int | None) -> dict:
    recipe = load_recipe(QUICKSTART, ["train.epochs=1", "data.shots=1", f"output.dir={folder / 'run'}"])
    adapter = train(recipe).adapter_path
    merged = folder / "merged.safetensors"
    merge_files(resolve_checkpoint("builtin:fmnist_vit"), adapter, merged)
    onnx_report = export_onnx(merged, folder / "model.onnx", dynamic_batch=True)
    models = {
        "merged": load_image_model(weights=merged, device="cpu"),
        "base": load_image_model(weights=resolve_checkpoint("builtin:fmnist_vit"), recipe=load_recipe(QUICKSTART),
                                 device="cpu"),
        "onnx": load_image_model(onnx=folder / "model.onnx", threads=threads),
    }
    return {"models": models, "check": onnx_report.check}


def _rates(images: int, wall: float, cpu: float) -> tuple[float, float]:
    return images / wall, images / cpu


def time_predict(model, paths, batch_size: int, workers: int) -> tuple[float, float]:
    """(images per wall-clock second, per CPU second of this process, every thread counted)."""
    cpu = time.process_time()
    report = predict_images(model, paths, topk=5, batch_size=batch_size, num_workers=workers)
    assert report.failed == 0
    return _rates(len(paths), report.seconds, time.process_time() - cpu)


def time_forward(model, batch: torch.Tensor, repeats: int) -> tuple[float, float]:
    model.logits(batch)  # warm-up (ONNX Runtime plans its first run)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        model.logits(batch)
    return _rates(repeats * len(batch), time.perf_counter() - start, time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=50, help="forward passes per round")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of both PyTorch and ONNX Runtime; 0: each one's own default "
                             "(on shared cores two pools of spinning threads make the figures swing)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = args.threads or None

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_digits(folder, args.images)
        built = make_models(folder, args.threads)
        models = built["models"]
        from pace_cli.data import PredictImages, eval_transform, image_file_dataset

        pre = models["merged"].preprocessing
        transform = eval_transform(pre.image_size, pre.channels, pre.mean, pre.std)
        reader = PredictImages(image_file_dataset(paths[:args.batch_size], folder, transform))
        batch = torch.stack([reader[i][0] for i in range(len(reader))])
        runs: dict[str, dict[str, list[float]]] = {name: {k: [] for k in MEASURES} for name in models}
        for model in models.values():  # warm-up: first-call allocations and ONNX Runtime's planning stay out
            time_predict(model, paths[:args.batch_size], args.batch_size, args.workers)
        order = list(models)
        for round_ in range(args.rounds):
            for name in order[round_ % len(order):] + order[:round_ % len(order)]:  # rotate who goes first
                model = models[name]
                wall, cpu = time_predict(model, paths, args.batch_size, args.workers)
                runs[name]["predict"].append(wall)
                runs[name]["predict_cpu"].append(cpu)
                wall, cpu = time_forward(model, batch, repeats=args.repeats)
                runs[name]["forward"].append(wall)
                runs[name]["forward_cpu"].append(cpu)
    median = {name: {k: statistics.median(v) for k, v in measures.items()} for name, measures in runs.items()}
    check = built["check"]
    result = {
        "images": args.images, "batch_size": args.batch_size, "rounds": args.rounds, "workers": args.workers,
        "torch_threads": torch.get_num_threads(), "images_per_s": median,
        "merged_over_base": {k: median["merged"][k] / median["base"][k] for k in MEASURES},
        "onnx_over_torch": {k: median["onnx"][k] / median["merged"][k] for k in MEASURES},
        "onnx_max_logit_diff": check.max_logit_diff, "onnx_max_prob_diff": check.max_prob_diff,
        "onnx_logit_scale": check.logit_scale,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.images} PNGs, batch {args.batch_size}, {args.rounds} rounds (medians), workers {args.workers}, "
          f"torch threads {result['torch_threads']}")
    print(f"{'images/s':<14}" + "".join(f"{k:>13}" for k in MEASURES) + "   (_cpu: per CPU second)")
    for name, values in median.items():
        print(f"{name:<14}" + "".join(f"{values[k]:>13.0f}" for k in MEASURES))
    for label, ratios in (("merged / base", result["merged_over_base"]), ("ONNX / torch", result["onnx_over_torch"])):
        print(f"{label:<14}" + "".join(f"{ratios[k]:>13.3f}" for k in MEASURES))
    print(f"ONNX export check: max logit diff {check.max_logit_diff:.2e} (logits up to {check.logit_scale:.2f}), "
          f"max prob diff {check.max_prob_diff:.2e}")


if __name__ == "__main__":
    np.random.seed(0)
    main()
