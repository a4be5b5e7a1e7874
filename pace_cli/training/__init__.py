"""Training: the loop, checkpoints, the learning-rate schedule, metrics and their loggers, stopping.

The face of the package: the names other packages use, each loaded from its submodule on first
access (see :mod:`pace_cli.lazy`).
"""

from pace_cli.lazy import lazy_face

_EXPORTS = {
    "MetricLogger": "loggers.base",
    "TRACKERS": "loggers.registry",
    "Checkpoint": "checkpoint",
    "HARMLESS_KEYS": "checkpoint",
    "Position": "checkpoint",
    "damaged": "checkpoint",
    "load_checkpoint": "checkpoint",
    "recipe_differences": "checkpoint",
    "restoring": "checkpoint",
    "save_checkpoint": "checkpoint",
    "TrainLogger": "loop",
    "TrainResult": "loop",
    "autocast_dtype": "loop",
    "class_names": "loop",
    "train": "loop",
    "LearningRateSchedule": "schedule",
    "epoch_learning_rate": "schedule",
    "learning_rate": "schedule",
    "StopRequest": "stop",
    "TrainingInterrupted": "stop",
    "stop_on_signals": "stop",
    "checked_global_batch": "step",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
