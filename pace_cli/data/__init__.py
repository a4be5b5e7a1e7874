"""Data sets: the source registry, one module per source, loaders and the decoded-image cache.

The face of the package: names other packages use, loaded on first access (PEP 562), so
importing one light submodule never pulls in the heavy ones (torch) behind the others.
"""

from importlib import import_module

_EXPORTS = {
    "CACHE_AUTO_BYTES": "datasets",
    "DIGITS_SPLITS": "datasets",
    "FASHION_MNIST_CLASSES": "datasets",
    "FASHION_MNIST_DEFAULT_ROOT": "datasets",
    "FASHION_MNIST_SPLITS": "datasets",
    "FEWSHOT_LAYOUTS": "datasets",
    "FGVC_IMAGE_DIRS": "datasets",
    "FGVC_SPLITS": "datasets",
    "IMAGE_EXTENSIONS": "datasets",
    "PaceDataset": "datasets",
    "RESIZE_RATIO": "datasets",
    "SOURCES": "datasets",
    "VTAB1K_SPLITS": "datasets",
    "build_dataset": "datasets",
    "cache_wanted": "datasets",
    "default_num_workers": "datasets",
    "fewshot_list": "datasets",
    "make_loader": "datasets",
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
