"""Evaluation: accuracy of a model on a split, the eval model built from a recipe, and the
recipe's test split plus every ``[[eval.targets]]`` set scored in one run.

Scoring one model on the recipe's test split and on every ``[[eval.targets]]`` set in one run.

A target is another test set seen through the same head: a shifted domain (ImageNet-Sketch,
-V2, -A, -R for a model trained on ImageNet) or any labelled folder. Its classes find their
head outputs by name or by index (``class_map``), and it is scored either over all the head's
logits or over the logits of the classes it holds (``restrict_logits``; ImageNet-A and -R hold
200 of ImageNet's 1000 classes and are commonly scored that way). The model is built once; each
set goes through :func:`evaluate` unchanged: restriction is a thin module
around the model and a relabelled view of the data set.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pace_cli import distributed, files
from pace_cli.adapters import (
    AdapterConfig, head_module_name, inject_adapters, layer_modes, load_adapter_state_dict, merge_state_dict,
)
from pace_cli.artifacts import read_adapter, read_file_metadata
from pace_cli.builders import build_base_model, build_dataset, build_target_dataset
from pace_cli.data import PaceDataset, make_loader
from pace_cli.errors import PaceError
from pace_cli.models import base_state_items, load_state_into
from pace_cli.recipe.schema import EvalTarget, Recipe
from pace_cli.regularizer import float32_forward


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
    # The head in float32 under autocast, as the regulariser runs it in training.
    head = float32_forward(model.get_submodule(head_module_name(model))) if autocast_dtype else None
    start = time.perf_counter()
    try:  # a failed batch (an unreadable image) leaves the model as it was given
        _count_batches(model, loader, counts, num_classes, device, autocast_dtype)
        if sharded:
            from pace_cli import distributed

            distributed.all_reduce_sum(counts)
    finally:
        if head is not None:
            head.remove()
        model.train(was_training)
    counts = counts.cpu()
    seconds = time.perf_counter() - start
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


def _names(class_names: Sequence[str], dataset, num_classes: int) -> list[str]:
    names = list(class_names or dataset.classes)
    return (names + [str(i) for i in range(len(names), num_classes)])[:num_classes]


def build_eval_model(recipe: Recipe, *, weights: Path | None = None, adapter: Path | None = None,
                     unmerged: bool = False, fallback_classes: int | None = None) -> tuple[torch.nn.Module, list[str]]:
    """The model to evaluate and the class names its file records (empty when it records none).

    A full checkpoint is loaded strictly; an adapter goes onto the recipe's base. Its weights are
    folded in memory by the same merge used for files, unless ``unmerged`` asks for the adapter
    layers to run as they do in training (eval mode).
    """
    if weights is not None:
        metadata = read_file_metadata(weights) if weights.suffix == ".safetensors" and weights.is_file() else {}
        state = files.load_state_dict(weights)
        num_classes = int(metadata.get("num_classes") or recipe.model.num_classes or fallback_classes)
        model = build_base_model(recipe, num_classes, load_weights=False)
        load_state_into(model, state, source=str(weights), allow_new_head=False)
        return model, list(metadata.get("class_names") or [])
    adapter_file = read_adapter(adapter)
    meta = adapter_file.metadata
    model = build_base_model(recipe, meta.num_classes)
    # The base went into a float32 model, so whichever rounding of the right base the recipe names matches.
    if meta.records_base and not meta.matches_base(files.fingerprint(base_state_items(model))):
        raise PaceError(
            f"the recipe's base weights are not the ones '{adapter}' was trained on (fingerprint differs)",
            remedy="point [model] checkpoint at the right base",
        )
    if unmerged:
        targets = tuple(meta.layers or meta.targets)
        input_scaled = tuple(path for path, mode in layer_modes(adapter_file.tensors, meta.kind).items()
                             if mode == "input")
        inject_adapters(model, AdapterConfig(kind=meta.kind, rank=meta.rank, targets=targets,
                                             feedforward=input_scaled))
        load_adapter_state_dict(model, adapter_file.tensors)
    else:
        merged = merge_state_dict(model.state_dict(), adapter_file.tensors, meta.kind)
        load_state_into(model, merged, source=str(adapter), allow_new_head=False)
    return model, meta.class_names

def _count_batches(model: nn.Module, loader: DataLoader, counts: torch.Tensor, num_classes: int,
                   device: torch.device, autocast_dtype: torch.dtype | None) -> None:
    """Add each batch's per-class hits and totals, top-5 hits and summed loss to ``counts``."""
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


def evaluate_recipe(recipe: Recipe, *, weights: Path | None = None, adapter: Path | None = None,
                    split: str | None = None, unmerged: bool = False) -> EvalResult:
    """Score one split (default: the test split) without the recipe's eval targets."""
    report = evaluate_targets(recipe, weights=weights, adapter=adapter, split=split, unmerged=unmerged, targets=[])
    return report.sets[0].result


@dataclass
class SetResult:
    """The score of one evaluated set: the recipe's own split (``kind = "recipe"``) or a target."""

    name: str
    kind: str
    source: str
    split: str
    restrict_logits: bool
    scored_classes: int
    head_classes: int
    result: EvalResult

    def to_dict(self) -> dict:
        out = self.result.to_dict()
        # Per-class accuracy of classes the set does not hold is NaN, which JSON cannot carry.
        out["per_class"] = {k: v for k, v in out["per_class"].items() if not math.isnan(v)}
        return {"name": self.name, "kind": self.kind, "source": self.source, "restrict_logits": self.restrict_logits,
                "scored_classes": self.scored_classes, "head_classes": self.head_classes, **out}


@dataclass
class TargetsReport:
    sets: list[SetResult]

    @property
    def targets(self) -> list[SetResult]:
        return [s for s in self.sets if s.kind == "target"]

    def mean(self, metric: str) -> float | None:
        values = [getattr(s.result, metric) for s in self.targets]
        if not values or any(v is None for v in values):
            return None
        return sum(values) / len(values)

    def to_dict(self) -> dict:
        return {"results": [s.to_dict() for s in self.sets], "targets": len(self.targets),
                "mean_target_top1": self.mean("top1"), "mean_target_top5": self.mean("top5")}


# ---------------------------------------------------------------- the pieces (tested on their own)


def head_indices(dataset: PaceDataset, head_names: Sequence[str], class_map: str, target: str) -> list[int]:
    """The head output of each class of ``dataset`` (``-1`` never: an unmatched class is an error)."""
    num_outputs = len(head_names)
    if class_map == "index_labels":  # the recipe's own split: its labels are the head's indices already
        return list(range(len(dataset.classes)))
    if class_map == "index":
        # fewshot/fgvc relabel their raw ids to 0..n-1; the raw ids are the indices meant here.
        raw = list(getattr(dataset, "class_ids", None) or range(len(dataset.classes)))
        bad = next((i for i in raw if not 0 <= i < num_outputs), None)
        if bad is not None:
            raise PaceError(f"target '{target}': label {bad} is outside the head's {num_outputs} classes "
                            "(class_map = \"index\"); is this the right data for these weights?")
        return [int(i) for i in raw]
    position = {name: i for i, name in enumerate(head_names)}
    out = []
    for name in dataset.classes:
        if name not in position:
            shown = ", ".join(list(head_names)[:5]) + (", ..." if num_outputs > 5 else "")
            raise PaceError(f"target '{target}': class '{name}' is not one of the head's {num_outputs} classes "
                            f"({shown}); fix the target's class names or set class_map = \"index\"")
        out.append(position[name])
    return out


def restricted_view(head_of_class: Sequence[int], labels: Sequence[int], num_outputs: int,
                    restrict: bool) -> tuple[list[int], list[int]]:
    """``(kept head outputs in order, each sample's label among them)``.

    Unrestricted, every output is kept and a label is its head index. Restricted, only the
    outputs of classes that occur in ``labels`` are kept (sorted), and a label is its position
    among them, so ``logits[:, kept]`` and the new labels are what top-k is computed on.
    """
    head_labels = [head_of_class[label] for label in labels]
    if not restrict:
        return list(range(num_outputs)), head_labels
    kept = sorted(set(head_labels))
    where = {h: i for i, h in enumerate(kept)}
    return kept, [where[h] for h in head_labels]


class RestrictedLogits(nn.Module):
    """The model with only some of its logits, in the given order."""

    def __init__(self, model: nn.Module, keep: Sequence[int]):
        super().__init__()
        self.model = model
        self.register_buffer("keep", torch.as_tensor(list(keep), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).index_select(1, self.keep)


class Relabelled(Dataset):
    """A view of a data set with new labels; a plain class so worker processes can pickle it."""

    def __init__(self, dataset: PaceDataset, labels: Sequence[int]):
        self.dataset = dataset
        self.labels = [int(v) for v in labels]
        self.split = dataset.split

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, _, index = self.dataset[i]
        return image, self.labels[i], index


# ---------------------------------------------------------------- one run over every set


def score_set(model: nn.Module, dataset: PaceDataset, head_names: Sequence[str], *, name: str, kind: str,
              source: str, restrict: bool, class_map: str, batch_size: int, num_workers: int,
              device: torch.device, world: distributed.World | None = None) -> SetResult:
    heads = head_indices(dataset, head_names, class_map, name)
    kept, labels = restricted_view(heads, dataset.labels, len(head_names), restrict)
    scored_model = RestrictedLogits(model, kept).to(device) if restrict else model
    view: Dataset = Relabelled(dataset, labels)
    sharded = world is not None and world.distributed
    if sharded:  # under torchrun each process scores its share and evaluate() sums the counts
        view = torch.utils.data.Subset(view, distributed.shard_range(len(view), world))
    loader = make_loader(view, batch_size, shuffle=False, num_workers=num_workers)
    result = evaluate(scored_model, loader, class_names=[head_names[h] for h in kept], split=dataset.split,
                      device=device, sharded=sharded)
    return SetResult(name=name, kind=kind, source=source, split=dataset.split, restrict_logits=restrict,
                     scored_classes=len(kept), head_classes=len(head_names), result=result)


def evaluate_targets(recipe: Recipe, *, weights: Path | None = None, adapter: Path | None = None,
                     split: str | None = None, unmerged: bool = False,
                     targets: Sequence[EvalTarget] | None = None) -> TargetsReport:
    """Score the recipe's test split (or ``split``) and every target with one model.

    ``targets`` defaults to the recipe's ``[[eval.targets]]``. Every target's data is opened
    before the model is built, so a bad target fails fast.
    """
    split = split or recipe.data.test_split
    if not split:
        raise PaceError("no split to evaluate: pass --split or set [data] test_split")
    targets = list(recipe.eval.targets if targets is None else targets)
    world = distributed.init_from_environment(recipe.train.device)
    own = build_dataset(recipe, split)
    target_sets = [(t, build_target_dataset(recipe, t)) for t in targets]
    model, class_names = build_eval_model(recipe, weights=weights, adapter=adapter, unmerged=unmerged,
                                          fallback_classes=len(own.classes))
    device = distributed.resolve_device(recipe.train.device, world)
    model.to(device)
    num_classes = model.get_classifier().out_features
    if max(own.labels, default=0) >= num_classes:
        raise PaceError(f"split '{split}' has labels up to {max(own.labels)} but the model has "
                        f"{num_classes} outputs; is this the right data for these weights?")
    head_names = _names(class_names, own, num_classes)
    common = dict(batch_size=recipe.data.eval_batch_size, num_workers=recipe.data.num_workers, device=device,
                  world=world)
    # The recipe's own split keeps its labels as head indices, exactly as a plain `pace eval`.
    sets = [score_set(model, own, head_names, name=split, kind="recipe", source=recipe.data.source,
                      restrict=False, class_map="index_labels", **common)]
    for target, dataset in target_sets:
        sets.append(score_set(model, dataset, head_names, name=target.name, kind="target", source=target.source,
                              restrict=target.restrict_logits, class_map=target.class_map, **common))
    return TargetsReport(sets)
