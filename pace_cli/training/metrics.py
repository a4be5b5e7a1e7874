"""What the loop measures: running sums kept on the device, and the step and epoch records made from them.

The records are what metrics.jsonl holds (and `pace report` and `pace sweep` read): a step
record every ``[train] log_every`` steps, an epoch record at every epoch end.
"""

from __future__ import annotations

from typing import Any

import torch

from pace_cli import distributed
from pace_cli.errors import PaceError

# Running sums kept on the device between log points; summed over processes before being read.
_DEVICE_KEYS = ("loss", "ce", "consistency", "grad_norm", "correct")
_HOST_KEYS = ("seen", "steps", "images")


class RunningSums:
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
        # soft targets (mixup, label smoothing) count as their strongest class
        labels = parts.labels.argmax(1) if parts.labels.dim() == 2 else parts.labels
        correct = (parts.logits.argmax(1) == labels).sum()
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
            raise diverged(bad, epoch)
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


def diverged(step: int | None, epoch: int) -> PaceError:
    where = f"at step {step + 1}" if step is not None else "on another process"
    return PaceError(f"training diverged: the loss became non-finite {where} (epoch {epoch + 1})",
                     remedy="lower [optim] lr or [pace] lambda/sigma, or use precision = 'fp32'", exit_code=3)


def step_record(sums: dict[str, float], *, epoch: int, step: int, lr: float, seconds: float) -> dict[str, Any]:
    """The means over the steps since the last log point (``sums`` from a reset :class:`RunningSums`)."""
    count = max(sums["steps"], 1e-12)
    return {
        "type": "step", "epoch": epoch + 1, "step": step, "loss": sums["loss"] / count,
        "ce": sums["ce"] / count, "consistency": sums["consistency"] / count, "lr": lr,
        "grad_norm": sums["grad_norm"] / count,
        "images_per_s": sums["images"] / max(seconds, 1e-9),
    }


def epoch_record(sums: dict[str, float], *, epoch: int, step: int, steps_per_epoch: int, lr: float,
                 fp_distance: float, seconds: float) -> dict[str, Any]:
    """An epoch's means (``sums`` over the whole epoch); validation, when run, adds :func:`validation_fields`.

    ``lr`` is the rate the epoch's last step trained at; ``grad_norm`` is the training gradient's
    norm (before clipping), which `pace report` plots.
    """
    return {
        "type": "epoch", "epoch": epoch + 1, "step": step,
        "train_loss": sums["loss"] / steps_per_epoch,
        "train_ce": sums["ce"] / steps_per_epoch,
        "train_consistency": sums["consistency"] / steps_per_epoch,
        "train_top1": sums["correct"] / max(1, sums["seen"]),
        "grad_norm": sums["grad_norm"] / steps_per_epoch,
        "lr": lr,
        "fp_distance": fp_distance,
        "seconds": seconds,
    }


def validation_fields(result, *, grad_norm: float | None = None) -> dict[str, Any]:
    """What an evaluated epoch adds to its record: top-1 and mean loss on the validation split,
    and ``val_grad_norm`` (the norm of that loss's gradient, :mod:`.val_grad`) when it was measured."""
    fields: dict[str, Any] = {"val_top1": result.top1, "val_loss": result.loss}
    if grad_norm is not None:
        fields["val_grad_norm"] = grad_norm
    return fields
