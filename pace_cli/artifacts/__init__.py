"""What pace writes as products: adapter files and their typed metadata, merged files made by the
streaming merge, PEFT export/import, ONNX export.

The face of the package: the names other packages use, each loaded from its submodule on first
access (see :mod:`pace_cli.lazy`).
"""

from pace_cli.lazy import lazy_face

_EXPORTS = {
    "AdapterFile": "adapter_file",
    "MERGED_FORMAT": "adapter_file",
    "file_role": "adapter_file",
    "read_adapter": "adapter_file",
    "read_file_metadata": "adapter_file",
    "export_base_weights": "base",
    "describe_file": "inspect",
    "MergedModel": "merged_file",
    "load_merged_model": "merged_file",
    "merge_first_line": "merged_file",
    "ADAPTER_FORMAT": "metadata",
    "AdapterMetadata": "metadata",
    "TrainingRecord": "metadata",
    "Preprocessing": "preprocessing",
    "RESIZE_MODES": "preprocessing",
    "recipe_preprocessing": "preprocessing",
    "ONNX_INSTALL": "onnx_export",
    "OnnxExportReport": "onnx_export",
    "OnnxModel": "onnx_export",
    "export_onnx": "onnx_export",
    "load_onnx_model": "onnx_export",
    "require_onnx": "onnx_export",
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
    "peft_scaling": "peft_config",
    "read_peft_folder": "peft_import",
    "LazySafetensors": "streaming_merge",
    "MergeReport": "streaming_merge",
    "base_fingerprint": "streaming_merge",
    "merge_files": "streaming_merge",
    "stored_dtype": "streaming_merge",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
