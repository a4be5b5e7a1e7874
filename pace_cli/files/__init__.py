"""Low-level files: atomic writes, tensor files (validated headers, no pickle), the output lock, run-folder names.

The face of the package: names other packages use, loaded on first access (PEP 562), so
importing one light submodule never pulls in the heavy ones (torch) behind the others.
"""

from importlib import import_module

_EXPORTS = {
    "WriteError": "atomic",
    "atomic_dir": "atomic",
    "atomic_path": "atomic",
    "check_can_write": "atomic",
    "write_error": "atomic",
    "write_text_atomic": "atomic",
    "read_metadata": "header",
    "tensor_info": "header",
    "tensor_layout": "header",
    "ADAPTER_FILE": "layout",
    "CHECKPOINT_FILE": "layout",
    "FINAL_FOLDER": "layout",
    "GRID_FOLDER": "layout",
    "LOCK_FILE": "layout",
    "METRICS_FILE": "layout",
    "RECIPE_FILE": "layout",
    "SWEEP_CSV": "layout",
    "SWEEP_JSON": "layout",
    "TEST_FILE": "layout",
    "output_lock": "lock",
    "human_size": "sizes",
    "FORMAT_VERSION": "tensors",
    "STATE_DICT_SUFFIXES": "tensors",
    "TORCH_SUFFIXES": "tensors",
    "fingerprint": "tensors",
    "iter_tensors": "tensors",
    "load_state_dict": "tensors",
    "load_tensors": "tensors",
    "read_tensor": "tensors",
    "save_tensors": "tensors",
    "save_tensors_streaming": "tensors",
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
