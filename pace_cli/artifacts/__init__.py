"""What pace writes as products: adapter files and their typed metadata, merged files made by the
streaming merge, PEFT export/import.

The face of the package: names other packages use, loaded on first access (PEP 562), so
importing one light submodule never pulls in the heavy ones (torch) behind the others.
"""

from importlib import import_module

_EXPORTS = {
    "AdapterFile": "adapter_file",
    "MERGED_FORMAT": "adapter_file",
    "file_role": "adapter_file",
    "read_adapter": "adapter_file",
    "read_file_metadata": "adapter_file",
    "export_base_weights": "base",
    "describe_file": "inspect",
    "ADAPTER_FORMAT": "metadata",
    "AdapterMetadata": "metadata",
    "TrainingRecord": "metadata",
    "PeftExportReport": "peft_export",
    "check_can_write_folder": "peft_export",
    "export_peft": "peft_export",
    "EXPORT_FILES": "peft_format",
    "EXPORT_FORMATS": "peft_format",
    "PACE_METADATA_KEY": "peft_format",
    "PEFT_CARD_FILE": "peft_format",
    "PEFT_CONFIG_FILE": "peft_format",
    "PEFT_KEY_PREFIX": "peft_format",
    "PEFT_PICKLED_WEIGHTS_FILE": "peft_format",
    "PEFT_WEIGHTS_FILE": "peft_format",
    "PeftFolder": "peft_import",
    "PeftImportReport": "peft_import",
    "import_peft": "peft_import",
    "peft_scaling": "peft_import",
    "read_peft_folder": "peft_import",
    "LazySafetensors": "streaming_merge",
    "MergeReport": "streaming_merge",
    "base_fingerprint": "streaming_merge",
    "merge_files": "streaming_merge",
    "stored_dtype": "streaming_merge",
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
