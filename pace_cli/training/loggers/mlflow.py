"""MLflow: the run's records as metrics, its recipe as params, in the experiment of its project (and sweep).

The store is ``MLFLOW_TRACKING_URI`` when set (a tracking server: the store to share between
machines and many writers), else a file store in ``<[log] dir or the output folder>/mlruns``.
MLflow 3 keeps its file store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which pace
turns on for that default: unlike one SQLite file, it takes parallel trials writing at once
(each run its own folder). The experiment is ``[log] project``, or ``<project>/<group>`` for a
sweep's runs; the sweep's driver creates it before the trials start (:func:`create_experiment`).
A server that does not answer fails a call after a bounded wait (``_BOUNDED_WAITS``, unless the
environment sets them), and then the tracker stops, training goes on.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

from pace_cli.recipe import LogSection
from pace_cli.training.loggers.base import TrackerRun, config_text, flat_config, scalars

# MLflow's HTTP client waits 120 s per try over 7 retries by default: minutes of a stalled training step.
_BOUNDED_WAITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def tracking_uri(files_dir: Path) -> str:
    """MLFLOW_TRACKING_URI, or the file store under ``files_dir`` (switched on for this process)."""
    for name, value in _BOUNDED_WAITS.items():
        os.environ.setdefault(name, value)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (Path(files_dir) / "mlruns").resolve().as_uri()


def experiment_name(project: str, group: str | None) -> str:
    return f"{project}/{group}" if group else project


def experiment_id(client, name: str) -> str:
    """The experiment's id, created when missing (a run started alone creates its own)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by another process: use that one
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def create_experiment(log: LogSection) -> None:
    """The sweep's experiment, made once by its driver (its trials may run in parallel). Without a
    [log] dir or a server URI the trials have a store each and make their own."""
    from mlflow import MlflowClient

    if log.dir or os.environ.get("MLFLOW_TRACKING_URI"):
        experiment_id(MlflowClient(tracking_uri=tracking_uri(Path(log.dir or "."))),
                      experiment_name(log.project, log.group))


class MlflowLogger:
    def __init__(self, run: TrackerRun):
        from mlflow import MlflowClient

        self.tracker_run = run
        saved = run.saved_ids("mlflow")
        self.continued = saved is not None  # the tracker's run holds what was logged before the resume
        uri = saved["tracking_uri"] if saved else tracking_uri(run.files_dir)
        self.client = MlflowClient(tracking_uri=uri)
        if saved:
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment = experiment_id(self.client, experiment_name(run.project, run.group))
            self.run_id = self.client.create_run(experiment, run_name=run.name).info.run_id
        run.keep_ids("mlflow", {"run_id": self.run_id, "tracking_uri": uri})

    def log_dict(self, payload: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        if self.continued and self.tracker_run.redone(step):  # MLflow would keep both values of a redone step
            return
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step)
                                                    for key, value in scalars(payload).items()])

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The recipe as params; a resumed run adds only the keys it lacks (MLflow's params never change)."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        have = self.client.get_run(self.run_id).data.params if self.continued else {}
        params = [Param(key, str(config_text(value))[:MAX_PARAM_VAL_LENGTH])
                  for key, value in flat_config(config).items() if key not in have]
        for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + MAX_PARAMS_TAGS_PER_BATCH])

    def close(self, finished: bool = True) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if finished else "KILLED")
