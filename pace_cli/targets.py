"""Scoring one model on the recipe's test split and on every ``[[eval.targets]]`` set in one run.

A target is another test set seen through the same head: a shifted domain (ImageNet-Sketch,
-V2, -A, -R for a model trained on ImageNet) or any labelled folder. Its classes find their
head outputs by name or by index (``class_map``), and it is scored either over all the head's
logits or over the logits of the classes it holds (``restrict_logits``; ImageNet-A and -R hold
200 of ImageNet's 1000 classes and are commonly scored that way). The model is built once; each
set goes through :func:`pace_cli.evaluate.evaluate` unchanged: restriction is a thin module
around the model and a relabelled view of the data set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from pace_cli import distributed
from pace_cli.builders import build_dataset, build_target_dataset
from pace_cli.data import PaceDataset, make_loader
from pace_cli.errors import PaceError
from pace_cli.evaluate import EvalResult, evaluate
from pace_cli.recipe import EvalTarget, Recipe
from pace_cli.session import _names, build_eval_model


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
    model, metadata = build_eval_model(recipe, weights=weights, adapter=adapter, unmerged=unmerged,
                                       fallback_classes=len(own.classes))
    device = distributed.resolve_device(recipe.train.device, world)
    model.to(device)
    num_classes = model.get_classifier().out_features
    if max(own.labels, default=0) >= num_classes:
        raise PaceError(f"split '{split}' has labels up to {max(own.labels)} but the model has "
                        f"{num_classes} outputs; is this the right data for these weights?")
    head_names = _names(metadata, own, num_classes)
    common = dict(batch_size=recipe.data.eval_batch_size, num_workers=recipe.data.num_workers, device=device,
                  world=world)
    # The recipe's own split keeps its labels as head indices, exactly as a plain `pace eval`.
    sets = [score_set(model, own, head_names, name=split, kind="recipe", source=recipe.data.source,
                      restrict=False, class_map="index_labels", **common)]
    for target, dataset in target_sets:
        sets.append(score_set(model, dataset, head_names, name=target.name, kind="target", source=target.source,
                              restrict=target.restrict_logits, class_map=target.class_map, **common))
    return TargetsReport(sets)
