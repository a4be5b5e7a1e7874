"""Sweeps: planning a grid, running it through a backend, ranking the settings.

The face of the package: names other packages use, loaded on first access (PEP 562), so
importing one light submodule never pulls in the heavy ones (torch) behind the others.
"""

from importlib import import_module

_EXPORTS = {
    "CSV_COLUMNS": "run",
    "GridAxis": "run",
    "PlannedRun": "run",
    "RunOutcome": "run",
    "SEED_KEYS": "run",
    "Setting": "run",
    "SettingScore": "run",
    "SweepLogger": "run",
    "SweepPlan": "run",
    "SweepResult": "run",
    "grid_settings": "run",
    "parse_grid": "run",
    "parse_seeds": "run",
    "plan_sweep": "run",
    "rank_settings": "run",
    "run_sweep": "run",
    "write_tables": "run",
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
