"""Data sets: the source registry (sources.py), one module per source, loaders and the decoded-image cache.

The face of the package: the names other packages use, each loaded from its submodule on first
access (see :mod:`pace_cli.lazy`).
"""

from pace_cli.lazy import lazy_face

_EXPORTS = {
    "SampleAugment": "augment",
    "build_dataset": "build",
    "ArrayDataset": "datasets",
    "CropFileDataset": "datasets",
    "FileDataset": "datasets",
    "PaceDataset": "datasets",
    "RESIZE_RATIO": "datasets",
    "FASHION_MNIST_CLASSES": "fashion_mnist",
    "FEWSHOT_LAYOUTS": "fewshot",
    "fewshot_list": "fewshot",
    "FGVC_IMAGE_DIRS": "fgvc",
    "IMAGE_EXTENSIONS": "images",
    "PredictImages": "images",
    "collect_image_paths": "images",
    "image_file_dataset": "images",
    "CACHE_AUTO_BYTES": "loader",
    "cache_wanted": "loader",
    "default_num_workers": "loader",
    "make_loader": "loader",
    "BatchMix": "mixing",
    "batch_mix": "mixing",
    "SOURCES": "sources",
    "SourceRequest": "sources",
    "SourceSpec": "sources",
    "get_source": "sources",
    "Transform": "transforms",
    "eval_transform": "build",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
