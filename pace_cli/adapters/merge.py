"""Folding adapters into base weights as plain tensor arithmetic, with no model built.

W = W0 + ΔW and b = b0 + Δb, with (ΔW, Δb) from :func:`pace_cli.adapters.adapter_delta`,
computed in float32 and cast back to the base dtype. The result has exactly the base
architecture's keys, with the new head in place of the old one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from pace_cli.adapters.delta import merged_weight_and_bias
from pace_cli.adapters.kinds import kind_spec, registered_tensor_names
from pace_cli.errors import PaceError


def split_adapter_state(adapter: Mapping[str, Tensor]) -> tuple[dict[str, dict[str, Tensor]], dict[str, Tensor]]:
    """Separate an adapter state dict into per-layer adapter tensors and head tensors."""
    adapter_names = registered_tensor_names()
    layers: dict[str, dict[str, Tensor]] = {}
    head: dict[str, Tensor] = {}
    for key, tensor in adapter.items():
        path, _, local = key.rpartition(".")
        if local in adapter_names and path:
            layers.setdefault(path, {})[local] = tensor
        else:
            head[key] = tensor
    return layers, head


def layer_modes(adapter: Mapping[str, Tensor], kind: str) -> dict[str, str]:
    """Each adapted layer's mode, read off its tensor names (``ia3_in``: input scaling); {} for a kind without modes."""
    spec = kind_spec(kind)
    if not spec.modes:
        return {}
    layers, _ = split_adapter_state(adapter)
    return {path: spec.mode_of(tensors) for path, tensors in layers.items()}


def _check_finite(name: str, tensor: Tensor, what: str) -> None:
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise PaceError(f"{what} tensor {name} contains NaN or inf",
                        remedy="refusing to merge (was training unstable?)")


def _check_layer(path: str, kind: str, weight: Tensor, bias: Tensor | None, tensors: Mapping[str, Tensor]) -> None:
    spec = kind_spec(kind)
    other_base = "the adapter was trained for another base model"
    if weight.dim() != 2:
        raise PaceError(f"base tensor {path}.weight has shape {list(weight.shape)}, not a linear layer's",
                        remedy=other_base)
    moves_bias = spec.needs_bias or any(t.only_with_bias and t.name in tensors for t in spec.tensors)
    if bias is None and moves_bias:
        raise PaceError(f"base layer {path} has no bias but the adapter changes its bias",
                        remedy="the merged model would need a bias the base architecture lacks "
                               "(pace never drops it silently)")
    expected = set(spec.tensor_names(bias is not None, spec.mode_of(tensors)))
    if set(tensors) != expected:
        raise PaceError(f"adapter for {path} has tensors {sorted(tensors)} but kind {kind!r} needs {sorted(expected)}",
                        remedy="is the file's adapter kind right?")
    d_out, d_in = weight.shape
    shapes = spec.shapes(d_in, d_out, spec.rank_of(tensors))
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != shapes[name]:
            raise PaceError(f"adapter tensor {path}.{name} has shape {list(tensor.shape)} but base weight "
                            f"{path}.weight is {list(weight.shape)} (expected {list(shapes[name])})", remedy=other_base)
        _check_finite(f"{path}.{name}", tensor, "adapter")


def merge_layer(kind: str, weight: Tensor, bias: Tensor | None, tensors: Mapping[str, Tensor],
                path: str = "layer") -> tuple[Tensor, Tensor | None]:
    """Merged (W, b) of one layer, computed in float32 and returned in the base dtype."""
    _check_layer(path, kind, weight, bias, tensors)
    merged_w, merged_b = merged_weight_and_bias(kind, weight.float(), bias.float() if bias is not None else None,
                                                {k: v.float() for k, v in tensors.items()})
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
            raise PaceError(f"the adapter adapts layer {path}, but the base checkpoint has no {path}.weight",
                            remedy="the adapter was trained for another base model")
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
