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
             device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None) -> EvalResult:
    """Run the model in eval mode over the loader (no noise, no dropout)."""
    was_training = model.training
    model.eval()
    num_classes = len(class_names)
    correct = torch.zeros(num_classes, dtype=torch.long)
    totals = torch.zeros(num_classes, dtype=torch.long)
    top5_hits = 0
    loss_sum = 0.0
    device = torch.device(device)
    start = time.perf_counter()
    for images, labels, _ in loader:
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        predicted = logits.argmax(dim=1)
        hit = (predicted == labels).cpu()
        labels_cpu = labels.cpu()
        totals += torch.bincount(labels_cpu, minlength=num_classes)[:num_classes]
        correct += torch.bincount(labels_cpu[hit], minlength=num_classes)[:num_classes]
        if logits.shape[1] >= 5:
            top5 = logits.topk(5, dim=1).indices
            top5_hits += (top5 == labels[:, None]).any(dim=1).sum().item()
    seconds = time.perf_counter() - start
    model.train(was_training)
    samples = int(totals.sum())
    per_class = {name: (correct[i] / totals[i]).item() if totals[i] else float("nan")
                 for i, name in enumerate(class_names)}
    return EvalResult(
        split=split, samples=samples, top1=correct.sum().item() / max(samples, 1),
        top5=top5_hits / max(samples, 1) if num_classes >= 5 else None,
        loss=loss_sum / max(samples, 1), per_class=per_class, seconds=seconds,
    )
