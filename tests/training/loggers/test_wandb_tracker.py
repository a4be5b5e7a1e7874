"""W&B, a real offline run (no network): what pace sends through wandb's calls, the run's files, resume.

W&B's offline files have no public reader, so the test records the calls pace makes on the real
run object (and lets them through) and checks the offline run folder they land in.
"""

import json

import pytest
from tracked_runs import CHECKPOINT_BEFORE_CRASH, CRASH_AT, crash_and_resume, kept_through_the_crash, records, \
    series, train_tracked

wandb = pytest.importorskip("wandb")


@pytest.fixture
def sent(monkeypatch):
    """Every wandb.init's options, run.log(payload, step) and config.update(values), as pace called them."""
    from wandb.sdk import wandb_config, wandb_run

    calls = {"init": [], "log": [], "config": [], "finish": []}
    real_init, real_log, real_update = wandb.init, wandb_run.Run.log, wandb_config.Config.update
    real_finish = wandb_run.Run.finish

    def init(**options):
        calls["init"].append(options)
        return real_init(**options)

    def log(self, data, step=None, **kwargs):
        calls["log"].append((dict(data), step))
        return real_log(self, data, step=step, **kwargs)

    def update(self, values, *args, **kwargs):
        calls["config"].append(dict(values))
        return real_update(self, values, *args, **kwargs)

    def finish(self, exit_code=None, **kwargs):
        calls["finish"].append(exit_code)
        return real_finish(self, exit_code=exit_code, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb_run.Run, "finish", finish)
    monkeypatch.setattr(wandb_run.Run, "log", log)
    monkeypatch.setattr(wandb_config.Config, "update", update)
    return calls


def _logged_series(calls) -> dict[str, dict[int, float]]:
    found: dict[str, dict[int, float]] = {}
    for payload, step in calls["log"]:
        for key, value in payload.items():
            assert step not in found.setdefault(key, {}), (key, step)  # a step sent once
            found[key][step] = value
    return found


def _offline_runs(folder, run_id):
    return sorted(folder.glob(f"wandb/offline-run-*-{run_id}*/run-{run_id}.wandb"))


def test_an_offline_run_gets_every_record_and_the_recipe(tmp_path, sent):
    out = tmp_path / "run"
    train_tracked(out, ["wandb"], "pace.lambda=0.25", 'log.project="digits"', 'log.group="lambdas"')
    assert _logged_series(sent) == series(out)
    [options] = sent["init"]
    assert options["project"] == "digits" and options["group"] == "lambdas" and options["name"] == "run"
    config = {key: value for update in sent["config"] for key, value in update.items()}
    assert config["pace.lambda"] == 0.25 and config["adapter.targets"] == ["qkv", "proj", "fc1", "fc2"]
    assert config["train.epochs"] == 2 and config["model.kwargs.depth"] == 2
    run_id = json.loads((out / "trackers.json").read_text())["wandb"]["id"]
    assert len(_offline_runs(out, run_id)) == 1  # WANDB_MODE=offline: the files, under the run folder
    assert sent["log"][-1][0]["epoch/val_top1"] == records(out)[-1]["val_top1"]  # the summary's final figure


def test_a_resumed_run_continues_its_run_id_and_sends_redone_steps_once(tmp_path, sent):
    out = tmp_path / "run"
    before = crash_and_resume(out, ["wandb"])
    first, again = sent["init"]
    assert "id" not in first and again["id"] == json.loads((out / "trackers.json").read_text())["wandb"]["id"]
    assert again["resume"] == "allow" and sent["finish"] == [1, 0]  # the crash ends the run with exit code 1
    assert _logged_series(sent) == series(out, kept_through_the_crash(before, out))
    steps = sorted({step for _, step in sent["log"]})
    assert steps == [1, 2, 3, CHECKPOINT_BEFORE_CRASH, CRASH_AT, 6]
    assert len(_offline_runs(out, again["id"])) == 2  # offline, a resumed run is a second folder of the same id


def test_wandb_dir_from_the_environment_is_honoured(tmp_path, sent, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    train_tracked(tmp_path / "run", ["wandb"], "train.epochs=1")
    run_id = json.loads((tmp_path / "run" / "trackers.json").read_text())["wandb"]["id"]
    assert _offline_runs(tmp_path / "elsewhere", run_id) and not (tmp_path / "run" / "wandb").exists()


def test_a_new_run_into_the_folder_never_resumes_an_old_runs_tracker(tmp_path, sent):
    from tracked_runs import Crash

    out = tmp_path / "run"
    train_tracked(out, ["wandb"], "train.epochs=1")
    with pytest.raises(RuntimeError, match="power cut"):  # a new run without trackers, cut off
        train_tracked(out, [], overwrite=True, logger=Crash())
    train_tracked(out, ["wandb"], resume=True)
    first, resumed = sent["init"]
    assert "id" not in resumed  # a W&B run of its own, not the first run's
