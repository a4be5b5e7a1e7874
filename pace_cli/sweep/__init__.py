"""Sweeps: planning a grid, running it through a backend, ranking the settings.

The face of the package: names other packages use, loaded on first access (PEP 562), so
importing one light submodule never pulls in the heavy ones (torch) behind the others.
"""

from importlib import import_module

_EXPORTS = {
    "RunContext": "backends.base",
    "SweepBackend": "backends.base",
    "SweepLogger": "backends.base",
    "SequentialBackend": "backends.sequential",
    "GridAxis": "plan",
    "PlannedRun": "plan",
    "SEED_KEYS": "plan",
    "Setting": "plan",
    "SweepPlan": "plan",
    "final_runs": "plan",
    "grid_settings": "plan",
    "parse_grid": "plan",
    "parse_seeds": "plan",
    "plan_sweep": "plan",
    "RunOutcome": "rank",
    "SettingScore": "rank",
    "SweepResult": "rank",
    "rank_settings": "rank",
    "run_sweep": "run",
    "CSV_COLUMNS": "tables",
    "write_tables": "tables",
    "writes_files": "tables",
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
