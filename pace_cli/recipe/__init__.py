"""Recipes: the pydantic schema, loading with --set, TOML writing, one-line messages, keys with no effect.

The face of the package: the names other packages use, each loaded from its submodule on first
access (see :mod:`pace_cli.lazy`).
"""

from pace_cli.lazy import lazy_face

_EXPORTS = {
    "ineffective_settings": "inert",
    "apply_overrides": "load",
    "load_recipe": "load",
    "parse_override_value": "load",
    "parse_recipe": "load",
    "format_validation_error": "messages",
    "lazy_micro_batch_problem": "schema",
    "AugmentSection": "augment",
    "AdapterSection": "schema",
    "CHECKPOINT_SUFFIXES": "schema",
    "DataSection": "schema",
    "EvalSection": "schema",
    "EvalTarget": "schema",
    "FewshotLayout": "schema",
    "KwargValue": "schema",
    "LogSection": "log",
    "TRACKER_NAMES": "log",
    "LrSchedule": "schema",
    "ModelSection": "schema",
    "OptimSection": "schema",
    "OutputSection": "schema",
    "PaceSection": "schema",
    "PaceVariant": "schema",
    "Recipe": "schema",
    "SECTIONS": "schema",
    "TrainSection": "schema",
    "recipe_to_dict": "toml",
    "recipe_to_toml": "toml",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
