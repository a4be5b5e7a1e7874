"""Low-level files: atomic writes, tensor files (validated headers, no pickle), the output lock, run-folder names.

The face of the package: the names other packages use, each loaded from its submodule on first
access (see :mod:`pace_cli.lazy`).
"""

from pace_cli.lazy import lazy_face

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

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
