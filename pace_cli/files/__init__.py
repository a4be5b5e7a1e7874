"""Low-level files: tensor-file I/O (atomic writes, validated headers, no pickle), the output lock, run-folder names.

The face of the package: names other packages use, loaded on first access (PEP 562), so
importing one light submodule never pulls in the heavy ones (torch) behind the others.
"""

from importlib import import_module

_EXPORTS = {
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
    "FORMAT_VERSION": "tensors",
    "STATE_DICT_SUFFIXES": "tensors",
    "TORCH_SUFFIXES": "tensors",
    "WriteError": "tensors",
    "atomic_dir": "tensors",
    "atomic_path": "tensors",
    "check_can_write": "tensors",
    "fingerprint": "tensors",
    "human_size": "tensors",
    "iter_tensors": "tensors",
    "load_state_dict": "tensors",
    "load_tensors": "tensors",
    "read_metadata": "tensors",
    "read_tensor": "tensors",
    "save_tensors": "tensors",
    "save_tensors_streaming": "tensors",
    "tensor_info": "tensors",
    "tensor_layout": "tensors",
    "write_error": "tensors",
    "write_text_atomic": "tensors",
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
