"""The training loop: a recipe in, an adapter file, a metrics log and the resolved recipe out.

Read it top to bottom: set-up, the epoch loop (PACE loss, AdamW, warm-up + cosine learning
rate), evaluation, and writing the outputs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pace_cli import artifacts, io
from pace_cli.adapters import InjectionReport, adapter_state_dict
from pace_cli.builders import (
    build_adapted_model, build_dataset, pace_config, resolve_num_classes, timm_kwargs,
)
from pace_cli.data import make_loader
from pace_cli.errors import PaceError
from pace_cli.evaluate import EvalResult, evaluate
from pace_cli.models import base_state_items, pick_device
from pace_cli.pace import PaceRegularizer, fp_distance
from pace_cli.recipe import Recipe, recipe_to_dict, recipe_to_toml

ADAPTER_FILE = "adapter.safetensors"
METRICS_FILE = "metrics.jsonl"
RECIPE_FILE = "recipe.toml"


class TrainLogger:
    """Receives progress; the CLI renders it with rich. The default does nothing."""

    def start(self, *, total_steps: int, steps_per_epoch: int, report: InjectionReport, device: str,
              train_samples: int) -> None: ...

    def step(self, record: dict[str, Any]) -> None: ...

    def epoch(self, record: dict[str, Any]) -> None: ...

    def finish(self) -> None: ...


@dataclass
class TrainResult:
    output_dir: Path
    adapter_path: Path
    metrics_path: Path
    recipe_path: Path
    steps: int
    seconds: float
    images_per_second: float
    val: EvalResult | None
    report: InjectionReport


def learning_rate(step: int, *, total_steps: int, warmup_steps: int, peak: float, start: float,
                  floor: float) -> float:
    """Linear warm-up from ``start`` to ``peak``, then cosine decay to ``floor``, per step.

    The authors step their scheduler once per epoch; stepping per iteration gives the same curve
    without the staircase, which matters for the short runs this tool is often used for.
    """
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise PaceError("[train] precision = 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def class_names(dataset, num_classes: int) -> list[str]:
    """The data's class names, padded with numbers when the recipe asks for more outputs."""
    names = list(dataset.classes)
    return names + [str(i) for i in range(len(names), num_classes)]


def train(recipe: Recipe, *, output_dir: str | Path | None = None, logger: TrainLogger | None = None,
          overwrite: bool = False) -> TrainResult:
    logger = logger or TrainLogger()
    out = Path(output_dir or recipe.output.dir)
    adapter_path, metrics_path, recipe_path = out / ADAPTER_FILE, out / METRICS_FILE, out / RECIPE_FILE
    io.check_can_write(adapter_path, overwrite)

    # --- set-up: seed, device, data, model, regulariser, optimiser -------------------------------
    torch.manual_seed(recipe.train.seed)
    device = pick_device(recipe.train.device)
    amp_dtype = autocast_dtype(recipe.train.precision, device)
    train_set = build_dataset(recipe, recipe.data.train_split, train=True)
    val_set = build_dataset(recipe, recipe.data.val_split) if recipe.data.val_split else None
    num_classes = resolve_num_classes(recipe, train_set)
    model, report = build_adapted_model(recipe, num_classes)
    fingerprint = io.fingerprint(base_state_items(model))
    model.to(device)
    regularizer = PaceRegularizer(model, pace_config(recipe), num_train_samples=len(train_set),
                                  num_classes=num_classes)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.optim.lr, weight_decay=recipe.optim.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    batch_size = min(recipe.data.batch_size, len(train_set))
    loader = make_loader(train_set, batch_size, shuffle=True, seed=recipe.train.seed, drop_last=True,
                         num_workers=recipe.data.num_workers)
    val_loader = (make_loader(val_set, recipe.data.eval_batch_size, shuffle=False,
                              num_workers=recipe.data.num_workers) if val_set else None)
    probe_images = next(iter(val_loader or loader))[0][:64].to(device)  # fixed batch for the FP-distance
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * recipe.train.epochs
    schedule = dict(total_steps=total_steps, warmup_steps=steps_per_epoch * recipe.optim.warmup_epochs,
                    peak=recipe.optim.lr, start=recipe.optim.warmup_start_lr, floor=recipe.optim.min_lr)
    out.mkdir(parents=True, exist_ok=True)
    recipe_path.write_text(recipe_to_toml(recipe))
    logger.start(total_steps=total_steps, steps_per_epoch=steps_per_epoch, report=report,
                 device=str(device), train_samples=len(train_set))

    # --- the epoch loop ---------------------------------------------------------------------------
    step = 0
    val_result: EvalResult | None = None
    started = time.perf_counter()
    images_seen = 0
    with open(metrics_path, "w") as metrics:
        def log(record: dict[str, Any]) -> None:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()

        for epoch in range(recipe.train.epochs):
            model.train()
            epoch_start = time.perf_counter()
            sums = {"loss": 0.0, "ce": 0.0, "consistency": 0.0, "grad_norm": 0.0, "correct": 0, "seen": 0}
            for images, labels, indices in loader:
                step_start = time.perf_counter()
                lr = learning_rate(step, **schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    parts = regularizer.loss(images, labels, indices, step)
                if not torch.isfinite(parts.total):
                    raise PaceError(
                        f"training diverged: the loss became {parts.total.item()} at step {step} (epoch {epoch + 1}); "
                        "lower [optim] lr or [pace] lambda/sigma, or use precision = 'fp32'", exit_code=3)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(parts.total).backward()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, recipe.optim.grad_clip or float("inf")).item()
                scaler.step(optimizer)
                scaler.update()

                batch = images.shape[0]
                images_seen += batch
                sums["loss"] += parts.total.item()
                sums["ce"] += parts.ce.item()
                sums["consistency"] += parts.consistency.item()
                sums["grad_norm"] += grad_norm
                sums["correct"] += (parts.logits.argmax(1) == parts.labels).sum().item()
                sums["seen"] += parts.labels.shape[0]
                record = {"type": "step", "epoch": epoch + 1, "step": step + 1, "loss": parts.total.item(),
                          "ce": parts.ce.item(), "consistency": parts.consistency.item(), "lr": lr,
                          "grad_norm": grad_norm, "images_per_s": batch / (time.perf_counter() - step_start)}
                logger.step(record)
                if (step + 1) % recipe.train.log_every == 0:
                    log(record)
                step += 1

            epoch_record: dict[str, Any] = {
                "type": "epoch", "epoch": epoch + 1, "step": step,
                "train_loss": sums["loss"] / steps_per_epoch,
                "train_ce": sums["ce"] / steps_per_epoch,
                "train_consistency": sums["consistency"] / steps_per_epoch,
                "train_top1": sums["correct"] / max(1, sums["seen"]),
                "grad_norm": sums["grad_norm"] / steps_per_epoch,
                "lr": learning_rate(max(step - 1, 0), **schedule),
                "fp_distance": fp_distance(model, probe_images),
                "seconds": time.perf_counter() - epoch_start,
            }
            last = epoch + 1 == recipe.train.epochs
            if val_loader and ((epoch + 1) % recipe.train.eval_every == 0 or last):
                val_result = evaluate(model, val_loader, class_names=class_names(train_set, num_classes),
                                      split=val_set.split, device=device, autocast_dtype=amp_dtype)
                epoch_record.update(val_top1=val_result.top1, val_loss=val_result.loss)
            log(epoch_record)
            logger.epoch(epoch_record)

    # --- outputs ----------------------------------------------------------------------------------
    seconds = time.perf_counter() - started
    p = recipe.pace
    metadata = artifacts.adapter_metadata(
        kind=recipe.adapter.kind, rank=recipe.adapter.rank, targets=list(recipe.adapter.targets),
        layers=report.adapted_layers, head=report.head_name,
        pace={"variant": p.variant, "lambda": p.lambda_, "sigma": p.sigma, "lazy_interval": p.lazy_interval,
              "noise_free_blocks": p.noise_free_blocks},
        timm_model=recipe.model.name, timm_kwargs=timm_kwargs(recipe), num_classes=num_classes,
        class_names=class_names(train_set, num_classes), base_fingerprint=fingerprint, base_checkpoint=recipe.model.checkpoint,
        recipe_toml=recipe_to_toml(recipe), trainable_parameters=report.trainable_parameters,
        extra={"val_top1": val_result.top1 if val_result else None, "epochs": recipe.train.epochs, "steps": step,
               "recipe_json": recipe_to_dict(recipe)},
    )
    io.save_tensors(adapter_path, adapter_state_dict(model), metadata)
    regularizer.remove()
    logger.finish()
    return TrainResult(out, adapter_path, metrics_path, recipe_path, step, seconds,
                       images_seen / seconds if seconds else 0.0, val_result, report)
