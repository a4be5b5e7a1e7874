"""Data sets: the source registry (sources.py), one module per source, loaders and the decoded-image cache.

The face of the package: names other packages use, loaded on first access (PEP 562), so
importing one light submodule never pulls in the heavy ones (torch) behind the others.
"""

from importlib import import_module

_EXPORTS = {
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
    "IMAGE_EXTENSIONS": "imagefolder",
    "CACHE_AUTO_BYTES": "loader",
    "cache_wanted": "loader",
    "default_num_workers": "loader",
    "make_loader": "loader",
    "SOURCES": "sources",
    "SourceRequest": "sources",
    "SourceSpec": "sources",
    "get_source": "sources",
    "Transform": "transforms",
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
