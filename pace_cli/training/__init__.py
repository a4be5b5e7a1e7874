"""Training: the loop, checkpoints, the learning-rate schedule, metrics and their loggers, stopping.

The face of the package: names other packages use, loaded on first access (PEP 562), so
importing one light submodule never pulls in the heavy ones (torch) behind the others.
"""

from importlib import import_module

_EXPORTS = {
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
    "learning_rate": "schedule",
    "StopRequest": "stop",
    "TrainingInterrupted": "stop",
    "stop_on_signals": "stop",
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
