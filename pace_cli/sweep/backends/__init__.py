"""Sweep backends: what runs the planned runs (today: one after another, in this process).

The face of the package: names other packages use, loaded on first access (PEP 562), so
importing one light submodule never pulls in the heavy ones (torch) behind the others.
"""

from importlib import import_module

_EXPORTS = {
    "RunContext": "base",
    "SweepBackend": "base",
    "SweepLogger": "base",
    "last_validation": "base",
    "refuse_another_recipe": "base",
    "score": "base",
    "SequentialBackend": "sequential",
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
