"""Sweep backends: what runs the planned runs (one after another in this process, or as Ray Tune trials).

The face of the package: the names other packages use, each loaded from its submodule on first
access (see :mod:`pace_cli.lazy`).
"""

from pace_cli.lazy import lazy_face

_EXPORTS = {
    "RunContext": "base",
    "SweepBackend": "base",
    "SweepLogger": "base",
    "last_validation": "base",
    "refuse_another_recipe": "base",
    "score": "base",
    "score_adapter": "base",
    "BACKENDS": "registry",
    "backend_named": "registry",
    "SequentialBackend": "sequential",
    "RayBackend": "ray",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
