"""Adapters: the one delta function, the kind registry, the adapted layer and its training paths, merge.

The face of the package: names other packages use, loaded on first access (PEP 562), so
importing one light submodule never pulls in the heavy ones (torch) behind the others.
"""

from importlib import import_module

_EXPORTS = {
    "low_rank_linear": "factored",
    "CHUNK_ELEMENTS": "fused",
    "MIN_TOKENS_PER_SAMPLE": "fused",
    "noisy_linear": "fused",
    "worth_fusing": "fused",
    "KINDS": "kinds",
    "KindSpec": "kinds",
    "ADAPTER_KINDS": "layer",
    "ADAPTER_TENSOR_NAMES": "layer",
    "AdaptedLinear": "layer",
    "AdapterConfig": "layer",
    "DEFAULT_TARGETS": "layer",
    "InjectionReport": "layer",
    "LORA_TENSORS": "layer",
    "PROMPT_TENSORS": "layer",
    "adapted_layers": "layer",
    "adapter_delta": "layer",
    "adapter_state_dict": "layer",
    "adapter_tensor_names": "layer",
    "adapters_disabled": "layer",
    "draw_noise": "layer",
    "find_target_layers": "layer",
    "head_module_name": "layer",
    "inject_adapters": "layer",
    "kind_parts": "layer",
    "load_adapter_state_dict": "layer",
    "noise_for": "layer",
    "sample_noise": "layer",
    "iter_merged": "merge",
    "merge_layer": "merge",
    "merge_state_dict": "merge",
    "split_adapter_state": "merge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # not cached in this module: a test that patches the submodule's name must reach every caller
    return getattr(import_module(f"{__name__}.{module}"), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
