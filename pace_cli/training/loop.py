"""The training loop: a recipe in, an adapter file, a metrics log and the resolved recipe out.

Read it top to bottom: set-up, the epoch loop (PACE loss, AdamW, warm-up + cosine learning
rate), evaluation, and writing the outputs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pace_cli import distributed
from pace_cli.artifacts.metadata import AdapterMetadata, TrainingRecord
from pace_cli import files
from pace_cli.adapters import InjectionReport, adapter_state_dict, load_adapter_state_dict
from pace_cli.training.checkpoint import (
    CHECKPOINT_FILE, Checkpoint, Position, load_checkpoint, recipe_differences, restoring, save_checkpoint,
)
from pace_cli.builders import (
    build_adapted_model, build_dataset, make_optimizer, maybe_compile, pace_config, resolve_num_classes, timm_kwargs,
)
from pace_cli.data import make_loader
from pace_cli.errors import PaceError
from pace_cli.evaluation import EvalResult, evaluate
from pace_cli.files.lock import output_lock
from pace_cli.models import base_fingerprints
from pace_cli.regularizer.pace import PaceRegularizer, fp_distance
from pace_cli.recipe import Recipe, recipe_to_dict, recipe_to_toml
from pace_cli.files.layout import ADAPTER_FILE, METRICS_FILE, RECIPE_FILE



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


@contextmanager
def _metrics_log(path: Path, keep_up_to_step: int | None):
    """Append-only JSON lines; on resume, drop records past the checkpoint (they will be redone)."""
    if keep_up_to_step is not None and path.is_file():
        kept = [line for line in path.read_text().splitlines() if _logged_step(line) <= keep_up_to_step]
        files.write_text_atomic(path, "".join(line + "\n" for line in kept))
    try:
        # unbuffered: a record that fails to write must not linger in a buffer and be retried on close
        handle = open(path, "ab" if keep_up_to_step is not None else "wb", buffering=0)
    except OSError as error:
        raise files.write_error(path, error) from None
    with handle:
        def log(record: dict[str, Any]) -> None:
            data = memoryview((json.dumps(record) + "\n").encode("utf-8"))
            end = os.fstat(handle.fileno()).st_size
            try:
                while data:
                    data = data[handle.write(data):]
            except OSError as error:
                # cut the torn record off, so the log stays whole lines for --resume
                with contextlib.suppress(OSError):
                    os.ftruncate(handle.fileno(), end)
                raise files.write_error(path, error) from None

        yield log


def _logged_step(line: str) -> float:
    """A record's step; a line that is not a whole record (torn by a crash or a full disk) sorts last."""
    try:
        record = json.loads(line)
    except ValueError:
        return math.inf
    return record.get("step", 0) if isinstance(record, dict) and isinstance(record.get("step", 0), int) else math.inf


def class_names(dataset, num_classes: int) -> list[str]:
    """The data's class names, padded with numbers when the recipe asks for more outputs."""
    names = list(dataset.classes)
    return names + [str(i) for i in range(len(names), num_classes)]


class TrainingInterrupted(PaceError):
    """Raised after a signal stopped training and its checkpoint was saved."""


@contextmanager
def stop_on_signals(stop: threading.Event):
    """SIGINT/SIGTERM set ``stop`` (the loop saves and exits at the next step boundary)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        stop.signum = signum
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _prepare_output(out: Path, recipe: Recipe, *, resume: bool, overwrite: bool) -> Checkpoint | None:
    adapter_path, checkpoint_path = out / ADAPTER_FILE, out / CHECKPOINT_FILE
    if resume:
        if not checkpoint_path.is_file():
            raise PaceError(f"nothing to resume: no {CHECKPOINT_FILE} in '{out}'; drop --resume to start a new run")
        saved = load_checkpoint(checkpoint_path)
        differences = recipe_differences(saved.recipe, recipe)
        if differences:
            raise PaceError(f"cannot resume '{out}' with a different recipe: {'; '.join(differences)}; "
                            "restore those keys or start a new run in another --output-dir")
        return saved
    if checkpoint_path.is_file() and not adapter_path.is_file() and not overwrite:
        raise PaceError(f"'{out}' holds an unfinished run ({CHECKPOINT_FILE}); pass --resume to continue it, "
                        "or --overwrite to start over")
    files.check_can_write(adapter_path, overwrite)
    return None


# Running sums kept on the device between log points; summed over processes before being read.
_DEVICE_KEYS = ("loss", "ce", "consistency", "grad_norm", "correct")
_HOST_KEYS = ("seen", "steps", "images")


class _RunningSums:
    """Per-step metrics accumulated on the device, read only at log points (no per-step host sync).

    Each process adds its share (loss parts are already shares of the global means; the gradient
    norm, equal on every rank after DistributedDataParallel's all-reduce, is added divided by the
    world size), so the sum over processes is the global figure. Counts known on the host stay
    there. ``first_bad_step`` remembers the first step whose loss was not finite, so a divergence
    is reported at the step it happened even though it is noticed later.
    """

    def __init__(self, device: torch.device, world_size: int):
        self.world_size = world_size
        self.values = torch.zeros(len(_DEVICE_KEYS), dtype=torch.float64, device=device)
        self.host = dict.fromkeys(_HOST_KEYS, 0.0)
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)

    def add(self, parts, grad_norm: torch.Tensor, step: int) -> None:
        correct = (parts.logits.argmax(1) == parts.labels).sum()
        self.values += torch.stack([parts.loss.detach(), parts.ce.detach(), parts.consistency.detach(),
                                    grad_norm.detach() / self.world_size, correct]).double()
        bad = ~torch.isfinite(parts.loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, self.first_bad_step.new_full((), step), self.first_bad_step)
        self.host["seen"] += parts.labels.shape[0]
        self.host["steps"] += 1.0 / self.world_size
        self.host["images"] += parts.labels.shape[0]

    def checked(self, epoch: int) -> dict[str, float]:
        """The global sums; raises if a loss was not finite since the last reset (exit code 3).

        Every rank must call this at the same point: it is a collective.
        """
        sums, bad = self.reduced()
        if bad != -1:
            raise _diverged(bad, epoch)
        return sums

    def reduced(self) -> tuple[dict[str, float], int | None]:
        """The global sums and the first non-finite step (-1: none; None: on another rank)."""
        device = self.values.device
        flag = (self.first_bad_step >= 0).double().view(1)
        host = torch.tensor([self.host[k] for k in _HOST_KEYS], dtype=torch.float64, device=device)
        packed = distributed.all_reduce_sum(torch.cat([self.values, host, flag])).cpu().tolist()
        sums = dict(zip(_DEVICE_KEYS + _HOST_KEYS, packed[:-1]))
        if packed[-1] == 0:
            return sums, -1
        local = int(self.first_bad_step.item())
        return sums, local if local >= 0 else None

    def reset(self, saved: dict[str, float] | None = None) -> None:
        """Start from zero, or from a checkpoint's (global) sums."""
        saved = saved or {}
        self.values.copy_(torch.tensor([float(saved.get(k, 0.0)) for k in _DEVICE_KEYS], dtype=torch.float64))
        self.host = {k: float(saved.get(k, 0.0)) for k in _HOST_KEYS}
        self.first_bad_step.fill_(-1)


def _diverged(step: int | None, epoch: int) -> PaceError:
    where = f"at step {step + 1}" if step is not None else "on another process"
    return PaceError(f"training diverged: the loss became non-finite {where} (epoch {epoch + 1}); "
                     "lower [optim] lr or [pace] lambda/sigma, or use precision = 'fp32'", exit_code=3)


def _probe_images(dataset, count: int = 64) -> torch.Tensor:
    """A fixed batch (the split's first images) for the FP-distance: the same on every process."""
    return torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])


def train(recipe: Recipe, *, output_dir: str | Path | None = None, logger: TrainLogger | None = None,
          overwrite: bool = False, resume: bool = False, stop: threading.Event | None = None) -> TrainResult:
    """Train adapters with PACE as the recipe says; ``resume`` continues from the output dir's checkpoint.

    A checkpoint is saved every ``[train] checkpoint_every`` steps, at every epoch end, and when
    ``stop`` is set (SIGINT/SIGTERM set it): then :class:`TrainingInterrupted` is raised.

    Under torchrun every process calls this; they train one model with DistributedDataParallel,
    each on its share of every global batch, and only rank 0 writes files and reports progress.
    The writer holds the output folder's lock (:mod:`pace_cli.files.lock`) for the whole run, so a
    second run into the same folder is refused at start. A failed write (a full disk) keeps the
    last checkpoint and says how to continue from it.
    """
    world = distributed.init_from_environment(recipe.train.device)
    out = Path(output_dir or recipe.output.dir)
    with output_lock(out) if world.is_writer else contextlib.nullcontext():
        try:
            return _train(recipe, world, out, logger=logger, overwrite=overwrite, resume=resume, stop=stop)
        except files.WriteError as error:
            if not (out / CHECKPOINT_FILE).is_file():
                raise
            raise PaceError(f"{error.reason} while writing '{error.path}'; the last checkpoint in '{out}' is kept: "
                            f"{error.remedy} and continue with: pace train RECIPE --resume --output-dir {out}") from None


def _train(recipe: Recipe, world: distributed.World, out: Path, *, logger: TrainLogger | None, overwrite: bool,
           resume: bool, stop: threading.Event | None) -> TrainResult:
    writer = world.is_writer
    logger = (logger or TrainLogger()) if writer else TrainLogger()
    stop = stop or threading.Event()
    adapter_path, metrics_path, recipe_path = out / ADAPTER_FILE, out / METRICS_FILE, out / RECIPE_FILE
    checkpoint_path = out / CHECKPOINT_FILE
    saved = _prepare_output(out, recipe, resume=resume, overwrite=overwrite)

    # --- set-up: seed, device, data, model, regulariser, optimiser -------------------------------
    torch.manual_seed(recipe.train.seed)
    device = distributed.resolve_device(recipe.train.device, world)
    amp_dtype = autocast_dtype(recipe.train.precision, device)
    train_set = build_dataset(recipe, recipe.data.train_split, train=True)
    val_set = build_dataset(recipe, recipe.data.val_split) if recipe.data.val_split else None
    num_classes = resolve_num_classes(recipe, train_set)
    global_batch = min(recipe.data.batch_size, len(train_set))
    distributed.local_batch_size(global_batch, world)  # a clear error before any model is built
    model, report = build_adapted_model(recipe, num_classes)
    fingerprints = base_fingerprints(model)
    model.to(device)
    regularizer = PaceRegularizer(model, pace_config(recipe), num_train_samples=len(train_set),
                                  num_classes=num_classes, seed=recipe.train.seed, world=world)
    maybe_compile(model, recipe)  # in place: state-dict keys and PACE's hooks stay as they are
    regularizer.forward_model = distributed.wrap_model(model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, recipe, device)  # fused AdamW on CUDA
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    loader = make_loader(train_set, global_batch, shuffle=True, seed=recipe.train.seed, drop_last=True,
                         num_workers=recipe.data.num_workers, world=world)
    val_loader = None
    if val_set is not None:
        val_share = torch.utils.data.Subset(val_set, distributed.shard_range(len(val_set), world))
        val_loader = make_loader(val_share, recipe.data.eval_batch_size, shuffle=False,
                                 num_workers=recipe.data.num_workers)
    probe_images = _probe_images(val_set or train_set).to(device)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * recipe.train.epochs
    schedule = dict(total_steps=total_steps, warmup_steps=steps_per_epoch * recipe.optim.warmup_epochs,
                    peak=recipe.optim.lr, start=recipe.optim.warmup_start_lr, floor=recipe.optim.min_lr)
    position = Position()
    epoch_sums: dict[str, float] | None = None
    if saved is not None:
        with restoring(checkpoint_path):  # a damaged file is named, with the way out, never a traceback
            load_adapter_state_dict(model, saved.model_state())
            saved.restore_optimizer(optimizer)
            regularizer.load_state_dict(saved.pace_state())
            saved.restore_global_rng()
            # the shuffle generator as it was when the interrupted epoch began
            loader.generator.set_state(saved.tensors["rng.loader_epoch_start"])
        position, epoch_sums = saved.position, saved.epoch_sums
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        files.write_text_atomic(recipe_path, recipe_to_toml(recipe))
    logger.start(total_steps=total_steps, steps_per_epoch=steps_per_epoch, report=report,
                 device=_describe_device(device, world), train_samples=len(train_set))

    def save(next_position: Position, sums: dict[str, float], generator_state) -> None:
        if writer:
            save_checkpoint(checkpoint_path, model_state=adapter_state_dict(model), optimizer=optimizer,
                            pace_state=regularizer.state_dict(), loader_generator_at_epoch_start=generator_state,
                            position=next_position, epoch_sums=sums, recipe=recipe)
        distributed.barrier()  # nobody runs ahead (or exits) while rank 0 is still writing

    # --- the epoch loop ---------------------------------------------------------------------------
    step = position.step
    val_result: EvalResult | None = None
    started = time.perf_counter()
    images_seen = 0
    epoch_totals = _RunningSums(device, world.size)  # this epoch so far
    window = _RunningSums(device, world.size)  # since the last logged step
    last_logged: dict[str, Any] = {"ce": 0.0, "consistency": 0.0, "lr": 0.0, "images_per_s": 0.0}
    metrics = _metrics_log(metrics_path, keep_up_to_step=step if saved else None) if writer else _no_log()
    with metrics as log, stop_on_signals(stop), _peer_failures(world, out):
        for epoch in range(position.epoch, recipe.train.epochs):
            model.train()
            epoch_start = window_start = time.perf_counter()
            resuming_mid_epoch = saved is not None and epoch == position.epoch and position.batches_done > 0
            # On resume the saved sums are global; rank 0 carries them so the sum over ranks stays right.
            epoch_totals.reset(epoch_sums if resuming_mid_epoch and writer else None)
            if hasattr(train_set, "set_epoch"):
                # random crops keyed by (seed, epoch, sample): the same for any worker or process count
                train_set.set_epoch(epoch)
            loader_state_at_epoch_start = loader.generator.get_state()
            skip = position.batches_done if resuming_mid_epoch else 0
            for batch_index, (images, labels, indices) in enumerate(loader):
                if batch_index < skip:
                    continue  # already trained on before the interruption; same order, same RNG
                lr = learning_rate(step, **schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    parts = regularizer.loss(images, labels, indices, step)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(parts.total).backward()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, recipe.optim.grad_clip or float("inf"))
                scaler.step(optimizer)
                scaler.update()
                epoch_totals.add(parts, grad_norm, step)
                window.add(parts, grad_norm, step)
                images_seen += images.shape[0] * world.size
                step += 1

                if step % recipe.train.log_every == 0:
                    sums = window.checked(epoch)
                    count = max(sums["steps"], 1e-12)
                    last_logged = {
                        "type": "step", "epoch": epoch + 1, "step": step, "loss": sums["loss"] / count,
                        "ce": sums["ce"] / count, "consistency": sums["consistency"] / count, "lr": lr,
                        "grad_norm": sums["grad_norm"] / count,
                        "images_per_s": sums["images"] / max(time.perf_counter() - window_start, 1e-9),
                    }
                    log(last_logged)
                    window.reset()
                    window_start = time.perf_counter()
                logger.step({**last_logged, "epoch": epoch + 1, "step": step, "lr": lr})

                stopping = distributed.any_rank(stop.is_set())
                every = recipe.train.checkpoint_every
                if stopping or (every and step % every == 0 and batch_index + 1 < steps_per_epoch):
                    sums = epoch_totals.checked(epoch)  # never checkpoint a diverged state
                    save(Position(step, epoch, batch_index + 1), sums, loader_state_at_epoch_start)
                if stopping:
                    signum = getattr(stop, "signum", signal.SIGTERM if world.distributed else signal.SIGINT)
                    raise TrainingInterrupted(
                        f"interrupted at step {step} (epoch {epoch + 1}); checkpoint saved in '{out}'; "
                        f"continue with: pace train RECIPE --resume --output-dir {out}",
                        exit_code=128 + int(signum))

            sums = epoch_totals.checked(epoch)
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
                                      split=val_set.split, device=device, autocast_dtype=amp_dtype,
                                      sharded=world.distributed)
                epoch_record.update(val_top1=val_result.top1, val_loss=val_result.loss)
            log(epoch_record)
            logger.epoch(epoch_record)
            save(Position(step, epoch + 1, 0), {}, loader.generator.get_state())

    # --- outputs ----------------------------------------------------------------------------------
    seconds = time.perf_counter() - started
    if writer:
        metadata = _adapter_metadata(recipe, report, fingerprints, class_names(train_set, num_classes),
                                     val_result, step, world)
        files.save_tensors(adapter_path, adapter_state_dict(model), metadata)
    distributed.barrier()
    regularizer.remove()
    logger.finish()
    return TrainResult(out, adapter_path, metrics_path, recipe_path, step, seconds,
                       images_seen / seconds if seconds else 0.0, val_result, report)


def _adapter_metadata(recipe: Recipe, report: InjectionReport, fingerprints: dict[str, str], names: list[str],
                      val_result: EvalResult | None, steps: int, world: distributed.World) -> dict[str, Any]:
    """What the adapter file says about how it was made."""
    p = recipe.pace
    return AdapterMetadata(
        kind=recipe.adapter.kind, rank=recipe.adapter.rank, targets=list(recipe.adapter.targets),
        layers=report.adapted_layers, head=report.head_name, timm_model=recipe.model.name,
        num_classes=len(names), base_fingerprint=fingerprints["float32"],
        trainable_parameters=report.trainable_parameters,
        pace={"variant": p.variant, "lambda": p.lambda_, "sigma": p.sigma, "lazy_interval": p.lazy_interval,
              "noise_free_blocks": p.noise_free_blocks},
        timm_kwargs=timm_kwargs(recipe), class_names=names, base_checkpoint=recipe.model.checkpoint or "",
        recipe=recipe_to_toml(recipe), base_fingerprints=fingerprints,
        training=TrainingRecord(val_top1=val_result.top1 if val_result else None, epochs=recipe.train.epochs,
                                steps=steps, recipe_json=recipe_to_dict(recipe), world_size=world.size),
    ).to_metadata()


@contextmanager
def _peer_failures(world, out: Path):
    """A collective that failed because another process died becomes one line saying so."""
    try:
        yield
    except RuntimeError as error:
        text = " ".join(str(error).split())
        from_peer = isinstance(error, torch.distributed.DistError) or any(
            word in text for word in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out"))
        if not (world.distributed and from_peer):
            raise
        raise PaceError(f"rank {world.rank}: another process of this run failed or vanished ({text[:160]}); "
                        f"the last checkpoint in '{out}' is kept: continue with pace train RECIPE --resume "
                        f"--output-dir {out}", exit_code=1) from error


@contextmanager
def _no_log():
    yield lambda record: None


def _describe_device(device: torch.device, world) -> str:
    if not world.distributed:
        return str(device)
    backend = "NCCL" if device.type == "cuda" else "Gloo"
    return f"{device.type} x {world.size} processes ({backend})"
