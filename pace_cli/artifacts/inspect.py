"""What `pace inspect` reports about a pace file (adapter, merged or base)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pace_cli import files
from pace_cli.artifacts.core import file_role, read_file_metadata


def describe_file(path: Path) -> dict[str, Any]:
    metadata = read_file_metadata(path)
    tensors = files.tensor_info(path)
    size = path.stat().st_size
    parameters = sum(_numel(shape) for _, shape in tensors.values())
    role = file_role(metadata)
    common = {"role": role, "file_bytes": size, "file_size": files.human_size(size), "tensors": len(tensors),
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
