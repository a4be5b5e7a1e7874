"""Folding adapters into base weights as plain tensor arithmetic, with no model built.

W = W0 + ΔW and b = b0 + Δb, with (ΔW, Δb) from :func:`pace_cli.adapters.adapter_delta`,
computed in float32 and cast back to the base dtype. The result has exactly the base
architecture's keys, with the new head in place of the old one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from pace_cli.adapters.layer import ADAPTER_TENSOR_NAMES, adapter_delta, adapter_tensor_names
from pace_cli.errors import PaceError


def split_adapter_state(adapter: Mapping[str, Tensor]) -> tuple[dict[str, dict[str, Tensor]], dict[str, Tensor]]:
    """Separate an adapter state dict into per-layer adapter tensors and head tensors."""
    layers: dict[str, dict[str, Tensor]] = {}
    head: dict[str, Tensor] = {}
    for key, tensor in adapter.items():
        path, _, local = key.rpartition(".")
        if local in ADAPTER_TENSOR_NAMES and path:
            layers.setdefault(path, {})[local] = tensor
        else:
            head[key] = tensor
    return layers, head


def _check_finite(name: str, tensor: Tensor, what: str) -> None:
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise PaceError(f"{what} tensor {name} contains NaN or inf; refusing to merge (was training unstable?)")


def _check_layer(path: str, kind: str, weight: Tensor, bias: Tensor | None, tensors: Mapping[str, Tensor]) -> None:
    if weight.dim() != 2:
        raise PaceError(f"base tensor {path}.weight has shape {list(weight.shape)}, not a linear layer's; "
                        "the adapter was trained for another base model")
    if bias is None and any(name in tensors for name in ("delta_bias", "prompt_A", "prompt_B")):
        raise PaceError(
            f"base layer {path} has no bias but the adapter changes its bias; the merged model would "
            "need a bias the base architecture lacks (pace never drops it silently)"
        )
    expected = set(adapter_tensor_names(kind, bias is not None))
    if set(tensors) != expected:
        raise PaceError(
            f"adapter for {path} has tensors {sorted(tensors)} but kind {kind!r} needs {sorted(expected)}; "
            "is the file's adapter kind right?"
        )
    d_out, d_in = weight.shape
    lora_rank = tensors["lora_A"].shape[0] if "lora_A" in tensors else None
    prompt_rank = tensors["prompt_A"].shape[0] if "prompt_A" in tensors else None
    shapes = {"lora_A": (lora_rank, d_in), "lora_B": (d_out, lora_rank), "delta_bias": (d_out,),
              "prompt_B": (d_in, prompt_rank), "prompt_A": (prompt_rank, 1)}
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != shapes[name]:
            raise PaceError(
                f"adapter tensor {path}.{name} has shape {list(tensor.shape)} but base weight {path}.weight is "
                f"{list(weight.shape)} (expected {list(shapes[name])}); the adapter was trained for another base model"
            )
        _check_finite(f"{path}.{name}", tensor, "adapter")


def merge_layer(kind: str, weight: Tensor, bias: Tensor | None, tensors: Mapping[str, Tensor],
                path: str = "layer") -> tuple[Tensor, Tensor | None]:
    """Merged (W, b) of one layer, computed in float32 and returned in the base dtype."""
    _check_layer(path, kind, weight, bias, tensors)
    w32 = weight.float()
    b32 = bias.float() if bias is not None else None
    delta_w, delta_b = adapter_delta(kind, w32, b32, {k: v.float() for k, v in tensors.items()})
    merged_w = w32 if delta_w is None else w32 + delta_w
    merged_b = b32 if delta_b is None else b32 + delta_b
    _check_finite(f"{path}.weight", merged_w, "merged")
    if merged_b is not None:
        _check_finite(f"{path}.bias", merged_b, "merged")
    return merged_w.to(weight.dtype), (merged_b.to(bias.dtype) if merged_b is not None else None)


def iter_merged(base: Mapping[str, Tensor], adapter: Mapping[str, Tensor], kind: str) -> Iterator[tuple[str, Tensor]]:
    """Yield the merged state dict one tensor at a time, in the base's key order, then any new head keys.

    ``base`` may be a lazy mapping (e.g. over a safetensors file), so at most one layer's tensors
    are held besides what the caller keeps.
    """
    layers, head = split_adapter_state(adapter)
    base_keys = list(base.keys())
    key_set = set(base_keys)
    for path in layers:
        if f"{path}.weight" not in key_set:
            raise PaceError(
                f"the adapter adapts layer {path}, but the base checkpoint has no {path}.weight; "
                "the adapter was trained for another base model"
            )
    head_dtype = None
    for key in base_keys:
        path, _, local = key.rpartition(".")
        if key in head:
            head_dtype = base[key].dtype
            continue  # the trained head replaces the old one, below
        if path in layers and local in ("weight", "bias"):
            if local == "bias" and f"{path}.weight" in key_set:
                continue  # emitted together with its weight
            bias_key = f"{path}.bias"
            weight, bias = base[f"{path}.weight"], (base[bias_key] if bias_key in key_set else None)
            merged_w, merged_b = merge_layer(kind, weight, bias, layers[path], path)
            yield f"{path}.weight", merged_w
            if merged_b is not None:
                yield bias_key, merged_b
            continue
        yield key, base[key]
    for key, tensor in head.items():
        _check_finite(key, tensor, "adapter head")
        yield key, tensor.to(head_dtype) if head_dtype is not None and tensor.is_floating_point() else tensor


def merge_state_dict(base: Mapping[str, Tensor], adapter: Mapping[str, Tensor], kind: str) -> dict[str, Tensor]:
    """The merged state dict, loadable by the plain timm model of the base architecture."""
    return dict(iter_merged(base, adapter, kind))
