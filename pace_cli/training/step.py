"""One training step: the PACE loss, backward, clipping and one AdamW update, over micro-batches.

With ``[train] accumulate = N`` each loaded batch (this process's share of the global batch) is
split into N micro-batches, each forward and backward on its own, so activation memory is that
of B/N images; the gradients add up in ``.grad`` and one clip and one update follow. Every
micro-batch is told where its rows sit in the global batch, so its noise, drop masks, lazy subset
and loss divisions are the ones the whole batch would give it: the update is the whole batch's,
up to the order of floating-point sums. N = 1 is the plain step, operation for operation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from pace_cli import distributed
from pace_cli.distributed import World
from pace_cli.errors import PaceError
from pace_cli.recipe import Recipe, lazy_micro_batch_problem
from pace_cli.regularizer.losses import LossParts, PaceRegularizer
from pace_cli.regularizer.sharpness import second_pass


class StepState(Protocol):
    """What a training step reads of the run (the training loop's set-up provides it)."""

    recipe: Recipe
    world: World
    device: torch.device
    amp_dtype: torch.dtype | None
    regularizer: PaceRegularizer
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def checked_global_batch(recipe: Recipe, world: World, train_samples: int | None = None) -> int:
    """The global batch a step takes (``[data] batch_size``, or all ``train_samples`` when fewer),
    refused unless it splits into equal shares of ``[train] accumulate`` micro-batches on every process
    (and, for the lazy variant, micro-batches of two samples or more)."""
    batch, accumulate = recipe.data.batch_size, recipe.train.accumulate
    if train_samples is None:
        distributed.local_batch_size(batch, world, accumulate)
    else:
        batch = distributed.global_batch_size(batch, train_samples, world, accumulate)
    problem = lazy_micro_batch_problem(recipe.pace.variant, batch, world.size, accumulate)
    if problem:
        raise PaceError(problem)
    return batch


@dataclass(frozen=True)
class MicroBatch:
    """Rows ``rows`` of this process's share, which start at ``offset`` in the global batch of ``global_size``."""

    rows: slice
    offset: int
    global_size: int
    last: bool


def micro_batches(local_size: int, accumulate: int, world: World) -> list[MicroBatch]:
    """This process's share of ``local_size`` rows cut into ``accumulate`` equal micro-batches."""
    size = local_size // accumulate
    if size * accumulate != local_size:  # training set-up refuses such batches; this is a backstop
        raise RuntimeError(f"a share of {local_size} samples does not split into {accumulate} micro-batches")
    start = world.rank * local_size
    return [MicroBatch(slice(i * size, (i + 1) * size), start + i * size, local_size * world.size,
                       last=i == accumulate - 1) for i in range(accumulate)]


def gradient_sync(forward_model: nn.Module, sync: bool):
    """DistributedDataParallel's ``no_sync()`` unless ``sync``: gradients of the earlier micro-batches
    stay local and the last backward all-reduces their sum. A plain model always syncs (nothing to do)."""
    if sync or not hasattr(forward_model, "no_sync"):
        return contextlib.nullcontext()
    return forward_model.no_sync()


def combined(parts: list[LossParts]) -> LossParts:
    """The step's parts from its micro-batches': each is a contribution to the global means, so they
    add; the logits and labels (for train accuracy) are concatenated."""
    if len(parts) == 1:
        return parts[0]

    def total(name: str) -> Tensor:
        return torch.stack([getattr(p, name).detach() for p in parts]).sum()

    return LossParts(total("total"), total("ce"), total("consistency"),
                     torch.cat([p.logits.detach() for p in parts]), torch.cat([p.labels for p in parts]),
                     total("loss"))


def train_step(run: StepState, images: Tensor, labels: Tensor, indices: Tensor, step: int,
               lr: float) -> tuple[LossParts, Tensor]:
    """PACE loss and backward per micro-batch, gradient clipping and one AdamW update; returns the
    step's loss parts and the gradient norm. With ``[regularizer] gp`` or ``sam_rho`` the forward and
    backward passes run twice, the second time at a displaced θ (:mod:`pace_cli.regularizer.sharpness`);
    the parts are the first pass's."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    device = run.device
    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    run.optimizer.zero_grad(set_to_none=True)
    parts = _forward_backward(run, images, labels, indices, step)
    extra = run.recipe.regularizer
    if extra.gp > 0 or extra.sam_rho > 0:  # the recipe refuses fp16 (a scaled gradient) with these
        second_pass(run.params, lambda: _forward_backward(run, images, labels, indices, step),
                    gp=extra.gp, sam_rho=extra.sam_rho)
    run.scaler.unscale_(run.optimizer)  # once, on the summed gradients
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, run.recipe.optim.grad_clip or float("inf"))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return parts, grad_norm


def _forward_backward(run: StepState, images: Tensor, labels: Tensor, indices: Tensor, step: int) -> LossParts:
    """The step's loss and backward, micro-batch by micro-batch; the gradients add up in ``.grad``."""
    device = run.device
    parts = []
    for micro in micro_batches(images.shape[0], run.recipe.train.accumulate, run.world):
        with gradient_sync(run.regularizer.forward_model, micro.last):
            with torch.autocast(device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                part = run.regularizer.loss(images[micro.rows], labels[micro.rows],
                                            None if indices is None else indices[micro.rows], step,
                                            global_size=micro.global_size, offset=micro.offset)
            run.scaler.scale(part.total).backward()  # fp16: every micro-batch scaled by the same factor
        parts.append(part)
    return combined(parts)
