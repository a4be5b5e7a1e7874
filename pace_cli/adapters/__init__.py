"""Adapters: the kind registry, the one delta function, the adapted layer and its training paths,
injection into timm models, PACE noise, merge.

The face of the package: the names other packages use, each loaded from its submodule on first
access (see :mod:`pace_cli.lazy`).
"""

from pace_cli.lazy import lazy_face

_EXPORTS = {
    "adapter_delta": "delta",
    "low_rank_linear": "factored",
    "dora_row_norm": "rescale",
    "CHUNK_ELEMENTS": "fused",
    "MIN_TOKENS_PER_SAMPLE": "fused",
    "noisy_linear": "fused",
    "worth_fusing": "fused",
    "AdapterConfig": "inject",
    "DEFAULT_TARGETS": "inject",
    "InjectionReport": "inject",
    "adapted_layers": "inject",
    "adapter_state_dict": "inject",
    "adapters_disabled": "inject",
    "feedforward_layers": "inject",
    "find_target_layers": "inject",
    "head_module_name": "inject",
    "inject_adapters": "inject",
    "load_adapter_state_dict": "inject",
    "KINDS": "kinds",
    "KindSpec": "kinds",
    "TensorSpec": "kinds",
    "kind_spec": "kinds",
    "registered_tensor_names": "kinds",
    "AdaptedLinear": "layer",
    "iter_merged": "merge",
    "layer_modes": "merge",
    "merge_layer": "merge",
    "merge_state_dict": "merge",
    "split_adapter_state": "merge",
    "NoiseMode": "noise",
    "PACE_NOISE": "noise",
    "add_noisy": "noise",
    "dropout_keep": "noise",
    "draw_noise": "noise",
    "noise_dtype": "noise",
    "noise_for": "noise",
    "noise_mode": "noise",
    "sample_noise": "noise",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
