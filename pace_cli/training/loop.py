"""The training loop: a recipe in, an adapter file, a metrics log and the resolved recipe out.

:func:`train` reads top to bottom: set-up (seed, device, data, model, regulariser, optimiser,
loaders, resume), the epochs (each a run of training steps with log points and checkpoints,
closed by an epoch record), and writing the outputs. One step (micro-batches, backward, update)
is in :mod:`.step`, the learning-rate schedule in :mod:`.schedule`, the measurements in
:mod:`.metrics`, where records go in :mod:`.loggers`, and stopping on a signal in :mod:`.stop`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pace_cli import distributed, files
from pace_cli.adapters import InjectionReport, adapter_state_dict, load_adapter_state_dict
from pace_cli.artifacts.metadata import AdapterMetadata, TrainingRecord
from pace_cli.builders import (
    build_adapted_model, build_dataset, make_optimizer, maybe_compile, pace_config, resolve_num_classes, timm_kwargs,
)
from pace_cli.data import make_loader
from pace_cli.data.mixing import BatchMix, batch_mix
from pace_cli.errors import PaceError, one_line
from pace_cli.evaluation import EvalResult, evaluate
from pace_cli.files.layout import ADAPTER_FILE, CHECKPOINT_FILE, METRICS_FILE, RECIPE_FILE
from pace_cli.files.lock import output_lock
from pace_cli.models import base_fingerprints
from pace_cli.recipe import Recipe, recipe_to_dict, recipe_to_toml
from pace_cli.regularizer.losses import PaceRegularizer, fp_distance
from pace_cli.training.checkpoint import (
    Checkpoint, Position, load_checkpoint, recipe_differences, restoring, save_checkpoint,
)
from pace_cli.training.loggers.base import MetricLogger
from pace_cli.training.loggers.registry import check_trackers_installed, metric_loggers
from pace_cli.training.metrics import RunningSums, epoch_record, step_record, validation_fields
from pace_cli.training.schedule import LearningRateSchedule
from pace_cli.training.step import checked_global_batch, train_step
from pace_cli.training.stop import StopRequest, TrainingInterrupted, stop_on_signals
from pace_cli.training.val_grad import validation_gradient_norm

# Where every run's records go, before the trackers [log] names.
_METRIC_LOGGERS = ("jsonl",)


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


def _resume_command(recipe_label: str, out: Path) -> str:
    return f"pace train {recipe_label} --resume --output-dir {out}"


def train(recipe: Recipe, *, output_dir: str | Path | None = None, logger: TrainLogger | None = None,
          overwrite: bool = False, resume: bool = False, stop: StopRequest | threading.Event | None = None,
          recipe_label: str = "RECIPE") -> TrainResult:
    """Train adapters with PACE as the recipe says; ``resume`` continues from the output dir's checkpoint.

    A checkpoint is saved every ``[train] checkpoint_every`` steps, at every epoch end, and when
    a stop is requested (SIGINT/SIGTERM request one): then :class:`TrainingInterrupted` is raised.
    ``stop`` may also be a :class:`threading.Event`; setting it requests a stop.

    Under torchrun every process calls this; they train one model with DistributedDataParallel,
    each on its share of every global batch, and only rank 0 writes files and reports progress.
    The writer holds the output folder's lock (:mod:`pace_cli.files.lock`) for the whole run, so a
    second run into the same folder is refused at start. A failed write (a full disk) keeps the
    last checkpoint and says how to continue from it: with ``pace train <recipe_label> --resume``.
    """
    check_trackers_installed(recipe.log.trackers)  # a missing package is one line before anything starts
    world = distributed.init_from_environment(recipe.train.device)
    out = Path(output_dir or recipe.output.dir)
    with output_lock(out) if world.is_writer else contextlib.nullcontext():
        try:
            return _train(recipe, world, out, logger=logger, overwrite=overwrite, resume=resume,
                          stop=StopRequest.of(stop), recipe_label=recipe_label)
        except files.WriteError as error:
            if not (out / CHECKPOINT_FILE).is_file():
                raise
            raise PaceError(f"{error.reason} while writing '{error.path}'; the last checkpoint in '{out}' is kept: "
                            f"{error.remedy} and continue with: {_resume_command(recipe_label, out)}") from None


def _train(recipe: Recipe, world: distributed.World, out: Path, *, logger: TrainLogger | None, overwrite: bool,
           resume: bool, stop: StopRequest, recipe_label: str) -> TrainResult:
    progress = (logger or TrainLogger()) if world.is_writer else TrainLogger()
    saved = _prepare_output(out, recipe, resume=resume, overwrite=overwrite)
    run = _set_up(recipe, world, out, saved)
    if world.is_writer:
        out.mkdir(parents=True, exist_ok=True)
        files.write_text_atomic(out / RECIPE_FILE, recipe_to_toml(recipe))
    progress.start(total_steps=run.schedule.total_steps, steps_per_epoch=run.steps_per_epoch, report=run.report,
                   device=_describe_device(run.device, world), train_samples=len(run.train_set))
    names = (*_METRIC_LOGGERS, *recipe.log.trackers) if world.is_writer else ()
    with metric_loggers(names, out, resumed_at_step=run.position.step if saved else None, log=recipe.log) as loggers, \
            stop_on_signals(stop), _peer_failures(world, out, recipe_label):
        for metric_logger in loggers:
            metric_logger.log_config(recipe_to_dict(recipe))
        epochs = _Epochs(run, progress=progress, loggers=loggers, stop=stop, recipe_label=recipe_label)
        for epoch in range(run.position.epoch, recipe.train.epochs):
            epochs.train_epoch(epoch)
    return _write_outputs(run, epochs, progress)


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


# ---------------------------------------------------------------- set-up


@dataclass
class _Run:
    """What set-up builds from the recipe: everything the training steps and the records use."""

    recipe: Recipe
    world: distributed.World
    out: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    train_set: Any
    val_set: Any | None
    num_classes: int
    model: nn.Module
    report: InjectionReport
    fingerprints: dict[str, str]
    regularizer: PaceRegularizer
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    probe_images: torch.Tensor
    schedule: LearningRateSchedule
    position: Position  # where training starts: the checkpoint's position on resume
    epoch_sums: dict[str, float] | None  # the interrupted epoch's sums so far, on resume
    mixer: BatchMix | None = None  # [augment]'s mixup / CutMix / label smoothing of each loaded batch

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def class_names(self) -> list[str]:
        return class_names(self.train_set, self.num_classes)


def _set_up(recipe: Recipe, world: distributed.World, out: Path, saved: Checkpoint | None) -> _Run:
    """Seed, device, data, model, regulariser, optimiser and loaders, then the checkpoint's state on resume.

    The order is part of reproducibility: every step that draws random numbers does so in the
    same order in a fresh run and in the run it resumes.
    """
    torch.manual_seed(recipe.train.seed)
    device = distributed.resolve_device(recipe.train.device, world)
    amp_dtype = autocast_dtype(recipe.train.precision, device)
    train_set = build_dataset(recipe, recipe.data.train_split, train=True)
    val_set = build_dataset(recipe, recipe.data.val_split) if recipe.data.val_split else None
    num_classes = resolve_num_classes(recipe, train_set)
    global_batch = checked_global_batch(recipe, world, len(train_set))  # refused before any model is built
    mixer = batch_mix(recipe.augment.batch_mix_options(), num_classes=num_classes, seed=recipe.train.seed,
                      global_batch=global_batch)
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
    loader, val_loader = _loaders(recipe, world, train_set, val_set, global_batch)
    run = _Run(recipe=recipe, world=world, out=out, device=device, amp_dtype=amp_dtype, train_set=train_set,
               val_set=val_set, num_classes=num_classes, model=model, report=report, fingerprints=fingerprints,
               regularizer=regularizer, params=params, optimizer=optimizer, scaler=scaler, loader=loader,
               val_loader=val_loader, probe_images=_probe_images(val_set or train_set).to(device),
               schedule=LearningRateSchedule.for_run(recipe.optim, steps_per_epoch=len(loader),
                                                     epochs=recipe.train.epochs),
               position=Position(), epoch_sums=None, mixer=mixer)
    if saved is not None:
        _restore(run, saved, out / CHECKPOINT_FILE)
    return run


def _loaders(recipe: Recipe, world: distributed.World, train_set, val_set, global_batch: int):
    """The shuffled training loader (this rank's share of each global batch) and this rank's share of val."""
    loader = make_loader(train_set, global_batch, shuffle=True, seed=recipe.train.seed, drop_last=True,
                         num_workers=recipe.data.num_workers, world=world)
    val_loader = None
    if val_set is not None:
        val_share = torch.utils.data.Subset(val_set, distributed.shard_range(len(val_set), world))
        val_loader = make_loader(val_share, recipe.data.eval_batch_size, shuffle=False,
                                 num_workers=recipe.data.num_workers)
    return loader, val_loader


def _probe_images(dataset, count: int = 64) -> torch.Tensor:
    """A fixed batch (the split's first images) for the FP-distance: the same on every process."""
    return torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])


def _restore(run: _Run, saved: Checkpoint, checkpoint_path: Path) -> None:
    with restoring(checkpoint_path):  # a damaged file is named, with the way out, never a traceback
        load_adapter_state_dict(run.model, saved.model_state())
        saved.restore_optimizer(run.optimizer)
        run.regularizer.load_state_dict(saved.pace_state())
        saved.restore_global_rng()
        # the shuffle generator as it was when the interrupted epoch began
        run.loader.generator.set_state(saved.tensors["rng.loader_epoch_start"])
    run.position, run.epoch_sums = saved.position, saved.epoch_sums


# ---------------------------------------------------------------- the epochs


class _Epochs:
    """The epochs of one run: training steps, log points, checkpoints and a stop, then the epoch record."""

    def __init__(self, run: _Run, *, progress: TrainLogger, loggers: list[MetricLogger], stop: StopRequest,
                 recipe_label: str):
        self.run, self.progress, self.loggers, self.stop = run, progress, loggers, stop
        self.recipe_label = recipe_label
        self.step = run.position.step
        self.val_result: EvalResult | None = None
        self.started = time.perf_counter()
        self.images_seen = 0
        self.epoch_totals = RunningSums(run.device, run.world.size)  # this epoch so far
        self.window = RunningSums(run.device, run.world.size)  # since the last logged step
        self.window_start = self.started
        self.last_logged: dict[str, Any] = {"ce": 0.0, "consistency": 0.0, "lr": 0.0, "images_per_s": 0.0}

    def train_epoch(self, epoch: int) -> None:
        run = self.run
        run.model.train()
        epoch_start = self.window_start = time.perf_counter()
        # batches of this epoch trained before the interruption: same order, same RNG, so skipped
        skip = run.position.batches_done if epoch == run.position.epoch else 0
        # On resume the saved sums are global; rank 0 carries them so the sum over ranks stays right.
        self.epoch_totals.reset(run.epoch_sums if skip and run.world.is_writer else None)
        if hasattr(run.train_set, "set_epoch"):
            # random crops keyed by (seed, epoch, sample): the same for any worker or process count
            run.train_set.set_epoch(epoch)
        loader_state_at_epoch_start = run.loader.generator.get_state()
        for batch_index, (images, labels, indices) in enumerate(run.loader):
            if batch_index < skip:
                continue
            if run.mixer is not None:  # the whole loaded share, so both PACE copies see the same mixed image
                images, labels = run.mixer(images.to(run.device), labels.to(run.device), self.step)
            lr = run.schedule.at(self.step)
            parts, grad_norm = train_step(run, images, labels, indices, self.step, lr)
            self.epoch_totals.add(parts, grad_norm, self.step)
            self.window.add(parts, grad_norm, self.step)
            self.images_seen += images.shape[0] * run.world.size
            self.step += 1
            if self.step % run.recipe.train.log_every == 0:
                self._log_window(epoch, lr)
            self.progress.step({**self.last_logged, "epoch": epoch + 1, "step": self.step, "lr": lr})
            self._checkpoint_or_stop(epoch, batch_index, loader_state_at_epoch_start)
        self._end_epoch(epoch, epoch_start)

    def _log(self, record: dict[str, Any]) -> None:
        for metric_logger in self.loggers:
            metric_logger.log_dict(record, record["step"])

    def _log_window(self, epoch: int, lr: float) -> None:
        sums = self.window.checked(epoch)
        self.last_logged = step_record(sums, epoch=epoch, step=self.step, lr=lr,
                                       seconds=time.perf_counter() - self.window_start)
        self._log(self.last_logged)
        self.window.reset()
        self.window_start = time.perf_counter()

    def _checkpoint_or_stop(self, epoch: int, batch_index: int, loader_state_at_epoch_start) -> None:
        run = self.run
        stopping = distributed.any_rank(self.stop.requested)
        every = run.recipe.train.checkpoint_every
        if stopping or (every and self.step % every == 0 and batch_index + 1 < run.steps_per_epoch):
            sums = self.epoch_totals.checked(epoch)  # never checkpoint a diverged state
            self._save(Position(self.step, epoch, batch_index + 1), sums, loader_state_at_epoch_start)
        if stopping:
            # a rank stopped by another rank never saw the signal: it reports a launcher's SIGTERM
            default = signal.SIGTERM if run.world.distributed else signal.SIGINT
            raise TrainingInterrupted(f"interrupted at step {self.step} (epoch {epoch + 1}); checkpoint saved in "
                                      f"'{run.out}'", remedy=f"continue with: {_resume_command(self.recipe_label, run.out)}",
                                      exit_code=self.stop.exit_code(default))

    def _end_epoch(self, epoch: int, epoch_start: float) -> None:
        run = self.run
        sums = self.epoch_totals.checked(epoch)
        record = epoch_record(sums, epoch=epoch, step=self.step, steps_per_epoch=run.steps_per_epoch,
                              lr=run.schedule.at(max(self.step - 1, 0)),
                              fp_distance=fp_distance(run.model, run.probe_images),
                              seconds=time.perf_counter() - epoch_start)
        last = epoch + 1 == run.recipe.train.epochs
        if run.val_loader and ((epoch + 1) % run.recipe.train.eval_every == 0 or last):
            self.val_result = evaluate(run.model, run.val_loader, class_names=run.class_names(),
                                       split=run.val_set.split, device=run.device, autocast_dtype=run.amp_dtype,
                                       sharded=run.world.distributed)
            grad_norm = validation_gradient_norm(
                run.model, run.val_loader, run.params, device=run.device, autocast_dtype=run.amp_dtype,
                sharded=run.world.distributed) if run.recipe.train.val_grad_norm else None
            record.update(validation_fields(self.val_result, grad_norm=grad_norm))
        self._log(record)
        # saved before the logger hears of the epoch: a sweep scheduler may pause or stop the run there
        self._save(Position(self.step, epoch + 1, 0), {}, run.loader.generator.get_state())
        self.progress.epoch(record)

    def _save(self, next_position: Position, sums: dict[str, float], generator_state) -> None:
        run = self.run
        if run.world.is_writer:
            save_checkpoint(run.out / CHECKPOINT_FILE, model_state=adapter_state_dict(run.model),
                            optimizer=run.optimizer, pace_state=run.regularizer.state_dict(),
                            loader_generator_at_epoch_start=generator_state, position=next_position,
                            epoch_sums=sums, recipe=run.recipe)
        distributed.barrier()  # nobody runs ahead (or exits) while rank 0 is still writing


# ---------------------------------------------------------------- outputs


def _write_outputs(run: _Run, epochs: _Epochs, progress: TrainLogger) -> TrainResult:
    """The adapter file with its metadata (rank 0), then the hooks removed and the result."""
    seconds = time.perf_counter() - epochs.started
    out = run.out
    if run.world.is_writer:
        metadata = _adapter_metadata(run.recipe, run.report, run.fingerprints, run.class_names(),
                                     epochs.val_result, epochs.step, run.world)
        files.save_tensors(out / ADAPTER_FILE, adapter_state_dict(run.model), metadata)
    distributed.barrier()
    run.regularizer.remove()
    progress.finish()
    return TrainResult(out, out / ADAPTER_FILE, out / METRICS_FILE, out / RECIPE_FILE, epochs.step, seconds,
                       epochs.images_seen / seconds if seconds else 0.0, epochs.val_result, run.report)


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
def _peer_failures(world, out: Path, recipe_label: str):
    """A collective that failed because another process died becomes one line saying so."""
    try:
        yield
    except RuntimeError as error:
        text = one_line(error)
        from_peer = isinstance(error, torch.distributed.DistError) or any(
            word in text for word in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out"))
        if not (world.distributed and from_peer):
            raise
        raise PaceError(f"rank {world.rank}: another process of this run failed or vanished ({text[:160]}); "
                        f"the last checkpoint in '{out}' is kept: continue with "
                        f"{_resume_command(recipe_label, out)}", exit_code=1) from error


def _describe_device(device: torch.device, world) -> str:
    if not world.distributed:
        return str(device)
    backend = "NCCL" if device.type == "cuda" else "Gloo"
    return f"{device.type} x {world.size} processes ({backend})"
