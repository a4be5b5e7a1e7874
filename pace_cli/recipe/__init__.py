"""Recipes: the pydantic schema, loading with --set, TOML writing, one-line messages, keys with no effect.

The face of the package: names other packages use, loaded on first access (PEP 562), so
importing one light submodule never pulls in the heavy ones (torch) behind the others.
"""

from importlib import import_module

_EXPORTS = {
    "ineffective_settings": "inert",
    "apply_overrides": "load",
    "load_recipe": "load",
    "parse_override_value": "load",
    "parse_recipe": "load",
    "format_validation_error": "messages",
    "AdapterSection": "schema",
    "CHECKPOINT_SUFFIXES": "schema",
    "DataSection": "schema",
    "EvalSection": "schema",
    "EvalTarget": "schema",
    "FewshotLayout": "schema",
    "KwargValue": "schema",
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


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # not cached in this module: a test that patches the submodule's name must reach every caller
    return getattr(import_module(f"{__name__}.{module}"), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
