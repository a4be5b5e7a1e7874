"""Accuracy of a model on a split: top-1, top-5, per class."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader


@dataclass
class EvalResult:
    split: str
    samples: int
    top1: float
    top5: float | None
    loss: float
    per_class: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["images_per_second"] = self.images_per_second
        return out


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, class_names: list[str], split: str,
             device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None,
             sharded: bool = False) -> EvalResult:
    """Run the model in eval mode over the loader (no noise, no dropout).

    Counts stay on the device until the end (no host synchronisation per batch). With ``sharded``
    the loader holds this process's share of the split and the counts are summed over processes,
    so every rank returns the result for the whole split.
    """
    was_training = model.training
    model.eval()
    num_classes = len(class_names)
    device = torch.device(device)
    # per class: hits, totals; then top-5 hits and the summed loss (float64 so counts stay exact)
    counts = torch.zeros(2 * num_classes + 2, dtype=torch.float64, device=device)
    start = time.perf_counter()
    for images, labels, _ in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images)
        logits = logits.float()
        labels_in_range = labels.clamp(max=num_classes - 1)
        hit = logits.argmax(dim=1) == labels
        counts[:num_classes] += torch.bincount(labels_in_range[hit], minlength=num_classes)[:num_classes]
        counts[num_classes:2 * num_classes] += torch.bincount(labels_in_range, minlength=num_classes)[:num_classes]
        if logits.shape[1] >= 5:
            counts[-2] += (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).sum()
        counts[-1] += nn.functional.cross_entropy(logits, labels, reduction="sum")
    if sharded:
        from pace_cli import distributed

        distributed.all_reduce_sum(counts)
    counts = counts.cpu()
    seconds = time.perf_counter() - start
    model.train(was_training)
    correct, totals = counts[:num_classes].long(), counts[num_classes:2 * num_classes].long()
    top5_hits, loss_sum = counts[-2].item(), counts[-1].item()
    samples = int(totals.sum())
    per_class = {name: (correct[i] / totals[i]).item() if totals[i] else float("nan")
                 for i, name in enumerate(class_names)}
    return EvalResult(
        split=split, samples=samples, top1=correct.sum().item() / max(samples, 1),
        top5=top5_hits / max(samples, 1) if num_classes >= 5 else None,
        loss=loss_sum / max(samples, 1), per_class=per_class, seconds=seconds,
    )
