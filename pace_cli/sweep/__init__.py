"""Sweeps: planning a grid, running it through a backend, ranking the settings.

The face of the package: the names other packages use, each loaded from its submodule on first
access (see :mod:`pace_cli.lazy`).
"""

from pace_cli.lazy import lazy_face

_EXPORTS = {
    "BACKENDS": "backends.registry",
    "backend_named": "backends.registry",
    "RunContext": "backends.base",
    "SweepBackend": "backends.base",
    "SweepLogger": "backends.base",
    "SequentialBackend": "backends.sequential",
    "RayBackend": "backends.ray",
    "GridAxis": "plan",
    "PlannedRun": "plan",
    "SEED_KEYS": "plan",
    "Setting": "plan",
    "SweepPlan": "plan",
    "final_job": "plan",
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

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
