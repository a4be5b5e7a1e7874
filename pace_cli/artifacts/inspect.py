"""What `pace inspect` reports about a pace file (adapter, merged or base)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pace_cli import files
from pace_cli.adapters.kinds import KINDS
from pace_cli.artifacts.adapter_file import file_role, read_file_metadata
from pace_cli.artifacts.metadata import AdapterMetadata


def describe_file(path: Path) -> dict[str, Any]:
    metadata = read_file_metadata(path)
    tensors = files.tensor_info(path)
    size = path.stat().st_size
    parameters = sum(_numel(shape) for _, shape in tensors.values())
    role = file_role(metadata)
    common = {"role": role, "file_bytes": size, "file_size": files.human_size(size), "tensors": len(tensors),
              "parameters": parameters}
    if role == "adapter":
        meta = AdapterMetadata.from_metadata(metadata, source=str(path))
        return {
            **common, "kind": meta.kind, "rank": meta.rank, "targets": meta.targets,
            "trainable_parameters": parameters, "pace": meta.pace, "timm_model": meta.timm_model,
            "timm_kwargs": meta.timm_kwargs, "num_classes": meta.num_classes,
            "class_names": meta.class_names, "base_fingerprint": meta.base_fingerprint,
            "base_checkpoint": meta.base_checkpoint, "val_top1": meta.training.val_top1 if meta.training else None,
            "format_version": metadata.get("format_version"), "created_by": meta.created_by,
            "layers": meta.layers, **_modes(meta.kind, tensors), "recipe": meta.recipe,
        }
    dtypes = Counter(dtype for dtype, _ in tensors.values())
    return {**common, "dtypes": dict(dtypes), "metadata": metadata,
            **{k: metadata[k] for k in ("timm_model", "num_classes", "merged_from", "adapter") if k in metadata}}


def _modes(kind: str, tensors) -> dict[str, Any]:
    """{"modes": {mode: [layers]}} for a kind whose layers have modes ((IA)³: the tensor name says which)."""
    spec = KINDS.get(kind)
    if spec is None or not spec.modes:
        return {}
    names: dict[str, set[str]] = {}
    for key in tensors:
        path, _, local = key.rpartition(".")
        names.setdefault(path, set()).add(local)
    modes: dict[str, list[str]] = {mode: [] for mode in spec.modes}
    for path, local in names.items():
        if any(t.name in local for t in spec.tensors):
            modes[spec.mode_of(local)].append(path)
    return {"modes": modes}


def _numel(shape) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count
