"""What the `eval`, `inspect` and `export-base` commands do, as library calls the CLI only renders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from pace_cli import distributed, io
from pace_cli.adapters import AdapterConfig, inject_adapters, load_adapter_state_dict
from pace_cli.artifacts import file_role, read_adapter, read_file_metadata
from pace_cli.builders import build_base_model, build_dataset, timm_kwargs
from pace_cli.data import make_loader
from pace_cli.errors import PaceError
from pace_cli.evaluate import EvalResult, evaluate
from pace_cli.merge import merge_state_dict
from pace_cli.models import base_state_items, load_state_into
from pace_cli.recipe import Recipe


def _names(metadata: dict[str, Any], dataset, num_classes: int) -> list[str]:
    names = list(metadata.get("class_names") or dataset.classes)
    return (names + [str(i) for i in range(len(names), num_classes)])[:num_classes]


def build_eval_model(recipe: Recipe, *, weights: Path | None = None, adapter: Path | None = None,
                     unmerged: bool = False, fallback_classes: int | None = None) -> tuple[torch.nn.Module, dict]:
    """The model to evaluate: a full checkpoint loaded strictly, or the recipe's base plus an adapter.

    With an adapter the weights are folded in memory by the same merge used for files, unless
    ``unmerged`` asks for the adapter layers to run as they do in training (eval mode).
    """
    if weights is not None:
        metadata = read_file_metadata(weights) if weights.suffix == ".safetensors" and weights.is_file() else {}
        state = io.load_state_dict(weights)
        num_classes = int(metadata.get("num_classes") or recipe.model.num_classes or fallback_classes)
        model = build_base_model(recipe, num_classes, load_weights=False)
        load_state_into(model, state, source=str(weights), allow_new_head=False)
        return model, metadata
    adapter_file = read_adapter(adapter)
    metadata = adapter_file.metadata
    num_classes = int(metadata["num_classes"])
    model = build_base_model(recipe, num_classes)
    expected = {metadata.get("base_fingerprint"), *(metadata.get("base_fingerprints") or {}).values()} - {None, ""}
    if expected and io.fingerprint(base_state_items(model)) not in expected:
        raise PaceError(
            f"the recipe's base weights are not the ones '{adapter}' was trained on (fingerprint differs); "
            "point [model] checkpoint at the right base"
        )
    if unmerged:
        spec = metadata["adapter"]
        inject_adapters(model, AdapterConfig(kind=spec["kind"], rank=int(spec["rank"]),
                                             targets=tuple(spec.get("layers") or spec["targets"])))
        load_adapter_state_dict(model, adapter_file.tensors)
    else:
        merged = merge_state_dict(model.state_dict(), adapter_file.tensors, adapter_file.kind)
        load_state_into(model, merged, source=str(adapter), allow_new_head=False)
    return model, metadata


def evaluate_recipe(recipe: Recipe, *, weights: Path | None = None, adapter: Path | None = None,
                    split: str | None = None, unmerged: bool = False) -> EvalResult:
    split = split or recipe.data.test_split
    if not split:
        raise PaceError("no split to evaluate: pass --split or set [data] test_split")
    world = distributed.init_from_environment(recipe.train.device)
    dataset = build_dataset(recipe, split)
    model, metadata = build_eval_model(recipe, weights=weights, adapter=adapter, unmerged=unmerged,
                                       fallback_classes=len(dataset.classes))
    device = distributed.resolve_device(recipe.train.device, world)
    model.to(device)
    num_classes = model.get_classifier().out_features
    if max(dataset.labels, default=0) >= num_classes:
        raise PaceError(f"split '{split}' has labels up to {max(dataset.labels)} but the model has "
                        f"{num_classes} outputs; is this the right data for these weights?")
    # Under torchrun each process scores its share of the split and the counts are summed.
    share = torch.utils.data.Subset(dataset, distributed.shard_range(len(dataset), world)) if world.distributed else dataset
    loader = make_loader(share, recipe.data.eval_batch_size, shuffle=False, num_workers=recipe.data.num_workers)
    return evaluate(model, loader, class_names=_names(metadata, dataset, num_classes), split=split, device=device,
                    sharded=world.distributed)


def describe_file(path: Path) -> dict[str, Any]:
    metadata = read_file_metadata(path)
    tensors = io.tensor_info(path)
    size = path.stat().st_size
    parameters = sum(_numel(shape) for _, shape in tensors.values())
    role = file_role(metadata)
    common = {"role": role, "file_bytes": size, "file_size": io.human_size(size), "tensors": len(tensors),
              "parameters": parameters}
    if role == "adapter":
        spec = metadata.get("adapter", {})
        return {
            **common, "kind": spec.get("kind"), "rank": spec.get("rank"), "targets": spec.get("targets"),
            "trainable_parameters": parameters, "pace": metadata.get("pace"), "timm_model": metadata.get("timm_model"),
            "timm_kwargs": metadata.get("timm_kwargs"), "num_classes": metadata.get("num_classes"),
            "class_names": metadata.get("class_names"), "base_fingerprint": metadata.get("base_fingerprint"),
            "base_checkpoint": metadata.get("base_checkpoint"), "val_top1": metadata.get("val_top1"),
            "format_version": metadata.get("format_version"), "created_by": metadata.get("created_by"),
            "layers": spec.get("layers", []), "recipe": metadata.get("recipe"),
        }
    dtypes = Counter(dtype for dtype, _ in tensors.values())
    return {**common, "dtypes": dict(dtypes), "metadata": metadata,
            **{k: metadata[k] for k in ("timm_model", "num_classes", "merged_from", "adapter") if k in metadata}}


def _numel(shape) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def export_base_weights(recipe: Recipe, output: Path, *, overwrite: bool = False) -> Path:
    io.check_can_write(output, overwrite)
    # The head is irrelevant to merging, but timm's random init depends on it, and a recipe without
    # base weights must export the same seeded random base that `train` used.
    num_classes = recipe.model.num_classes or len(build_dataset(recipe, recipe.data.train_split).classes)
    model = build_base_model(recipe, num_classes)
    io.save_tensors(output, model.state_dict(), {
        "format": "pace-base", "format_version": io.FORMAT_VERSION, "timm_model": recipe.model.name,
        "timm_kwargs": timm_kwargs(recipe), "source": recipe.model.checkpoint or "timm hub",
    })
    return output
