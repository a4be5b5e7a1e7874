"""The PACE regulariser: noise schedule over depth, shared drop masks, the loss variants.

The face of the package: names other packages use, loaded on first access (PEP 562), so
importing one light submodule never pulls in the heavy ones (torch) behind the others.
"""

from importlib import import_module

_EXPORTS = {
    "LossParts": "losses",
    "PaceConfig": "losses",
    "PaceRegularizer": "losses",
    "VARIANTS": "losses",
    "fp_distance": "losses",
    "PairState": "masks",
    "SharedDropPath": "masks",
    "SharedDropout": "masks",
    "share_random_masks": "masks",
    "block_of": "schedule",
    "depth_groups": "schedule",
    "sigma_schedule": "schedule",
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
