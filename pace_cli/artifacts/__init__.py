"""What pace writes as products: adapter and merged files, the streaming merge, PEFT export/import.

The face of the package: names other packages use, loaded on first access (PEP 562), so
importing one light submodule never pulls in the heavy ones (torch) behind the others.
"""

from importlib import import_module

_EXPORTS = {
    "export_base_weights": "base",
    "ADAPTER_FORMAT": "core",
    "AdapterFile": "core",
    "LazySafetensors": "core",
    "MERGED_FORMAT": "core",
    "MergeReport": "core",
    "adapter_metadata": "core",
    "base_fingerprint": "core",
    "expected_fingerprint": "core",
    "file_role": "core",
    "merge_files": "core",
    "read_adapter": "core",
    "read_file_metadata": "core",
    "describe_file": "inspect",
    "EXPORT_FORMATS": "peft",
    "PACE_METADATA_KEY": "peft",
    "PEFT_CARD_FILE": "peft",
    "PEFT_CONFIG_FILE": "peft",
    "PEFT_EXPORTABLE_KINDS": "peft",
    "PEFT_KEY_PREFIX": "peft",
    "PEFT_PICKLED_WEIGHTS_FILE": "peft",
    "PEFT_WEIGHTS_FILE": "peft",
    "PeftExportReport": "peft",
    "PeftFolder": "peft",
    "PeftImportReport": "peft",
    "check_can_write_folder": "peft",
    "export_peft": "peft",
    "import_peft": "peft",
    "peft_scaling": "peft",
    "read_peft_folder": "peft",
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
