"""Metric loggers: where the training loop's step and epoch records go (metrics.jsonl, the experiment trackers).

The face of the package: the names other packages use, each loaded from its submodule on first
access (see :mod:`pace_cli.lazy`).
"""

from pace_cli.lazy import lazy_face

_EXPORTS = {
    "MetricLogger": "base",
    "JsonlLogger": "jsonl",
    "TrackerRun": "base",
    "TRACKERS": "registry",
    "TRACKER_PACKAGES": "registry",
    "check_trackers_installed": "registry",
    "metric_loggers": "registry",
    "prepare_trackers": "registry",
    "tracker_class": "registry",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
