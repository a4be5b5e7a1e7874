"""MLflow, read back with its own client on the local store: metrics.jsonl's metrics, the recipe as params, resume."""

import json
import socket
import time

import pytest
from tracked_runs import CRASH_AT, crash_and_resume, kept_through_the_crash, records, series, train_tracked

pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402


def _client(out, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    ids = json.loads((out / "trackers.json").read_text())["mlflow"]
    return MlflowClient(tracking_uri=ids["tracking_uri"]), ids["run_id"]


def _status(out, monkeypatch) -> str:
    client, run_id = _client(out, monkeypatch)
    return client.get_run(run_id).info.status


def _assert_same_as_metrics_jsonl(client, run_id, out, logged=None):
    expected = series(out, logged)
    assert set(client.get_run(run_id).data.metrics) == set(expected)
    for key, values in expected.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [step for step, _ in history] == sorted(values), key  # every step once
        assert [value for _, value in history] == pytest.approx([values[s] for s, _ in history], rel=1e-12), key


def test_metrics_equal_metrics_jsonl_and_params_hold_the_recipe(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_tracked(out, ["mlflow"], "pace.sigma=0.5", 'log.project="digits"')
    client, run_id = _client(out, monkeypatch)
    run = client.get_run(run_id)
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "digits"
    assert (out / "mlruns").is_dir()  # the default store: a file store in the run folder
    _assert_same_as_metrics_jsonl(client, run_id, out)
    params = run.data.params
    assert float(params["pace.sigma"]) == 0.5 and params["pace.variant"] == "pace"
    assert json.loads(params["adapter.targets"]) == ["qkv", "proj", "fc1", "fc2"]
    assert params["log.trackers"] == '["mlflow"]'
    assert run.data.metrics["epoch/val_top1"] == pytest.approx(records(out)[-1]["val_top1"])  # the final figure


def test_a_resumed_run_reopens_its_run_and_logs_redone_steps_once(tmp_path, monkeypatch):
    out = tmp_path / "run"
    statuses = []
    before = crash_and_resume(out, ["mlflow"], "train.epochs=3",
                              after_crash=lambda: statuses.append(_status(out, monkeypatch)))
    client, run_id = _client(out, monkeypatch)
    assert statuses == ["KILLED"] and client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1  # the same run, reopened
    _assert_same_as_metrics_jsonl(client, run_id, out, kept_through_the_crash(before, out))
    steps = sorted(m.step for m in client.get_metric_history(run_id, "step/loss"))
    assert steps == list(range(1, 10)) and CRASH_AT in steps  # the redone step once


def test_a_server_that_does_not_answer_costs_a_bounded_wait_and_one_warning(tmp_path, monkeypatch, caplog):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections are queued by the kernel and never answered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # pace's bound on retries (2) stays in force
    started = time.perf_counter()
    with caplog.at_level("WARNING", logger="pace_cli.trackers"):
        result = train_tracked(tmp_path / "run", ["mlflow"], "train.epochs=1")
    silent.close()
    assert time.perf_counter() - started < 60
    assert result.adapter_path.is_file() and len(records(tmp_path / "run")) == 4  # 3 steps and the epoch
    warnings = [r.getMessage() for r in caplog.records if r.name == "pace_cli.trackers"]
    assert len(warnings) == 1 and "'mlflow'" in warnings[0] and "training goes on" in warnings[0]
