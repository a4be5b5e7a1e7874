"""TensorBoard, read back with its own EventAccumulator: metrics.jsonl's scalars, the recipe in hparams, resume."""

import pytest
from tracked_runs import CHECKPOINT_BEFORE_CRASH, CRASH_AT, crash_and_resume, records, series, train_tracked

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402


def _events(folder):
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _scalars(accumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def _assert_same_as_metrics_jsonl(shown, out):
    expected = series(out)
    assert set(shown) == set(expected)
    for tag, points in shown.items():
        assert [step for step, _ in points] == sorted(expected[tag]), tag  # every step once, in order
        assert [value for _, value in points] == pytest.approx([expected[tag][s] for s, _ in points], rel=1e-6), tag


def test_scalars_equal_metrics_jsonl_and_hparams_hold_the_recipe(tmp_path):
    out = tmp_path / "run"
    train_tracked(out, ["tensorboard"], "pace.lambda=0.5", "adapter.targets=[\"qkv\", \"fc1\"]")
    folder = out / "tensorboard" / "run"  # the run's own event folder: no timestamped sub-run
    assert [p.parent for p in out.rglob("events.out.tfevents.*")] == [folder]
    accumulator = _events(folder)
    shown = _scalars(accumulator)
    _assert_same_as_metrics_jsonl(shown, out)
    assert {"step/ce", "step/lr", "epoch/lr", "epoch/val_top1"} <= set(shown)

    content = accumulator.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hparams = {key: getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()}
    assert hparams["pace.lambda"] == 0.5 and hparams["pace.variant"] == "pace" and hparams["adapter.rank"] == 2
    assert hparams["adapter.targets"] == '["qkv", "fc1"]'  # lists as text: hparams take none
    assert hparams["model.checkpoint"] == ""  # unset (None) as TOML writes it
    assert hparams["model.kwargs.depth"] == 2  # tables flattened
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    figures = [info.name.tag for info in experiment.metric_infos]
    assert figures[:2] == ["epoch/val_top1", "epoch/val_loss"]  # the table's columns: the final validation figures
    final = records(out)[-1]
    assert shown["epoch/val_top1"][-1] == (final["step"], pytest.approx(final["val_top1"]))


def test_a_resumed_run_appends_and_shows_redone_steps_once(tmp_path):
    out = tmp_path / "run"
    crash_and_resume(out, ["tensorboard"])
    folder = out / "tensorboard" / "run"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # the first run's file is kept and continued
    shown = _scalars(_events(folder))
    _assert_same_as_metrics_jsonl(shown, out)
    # step 5 was logged before the crash and again after resuming from step 4: purged, shown once
    assert [step for step, _ in shown["step/loss"]] == [1, 2, 3, CHECKPOINT_BEFORE_CRASH, CRASH_AT, 6]


def test_a_new_run_into_the_folder_replaces_its_events(tmp_path):
    out = tmp_path / "run"
    train_tracked(out, ["tensorboard"])
    train_tracked(out, ["tensorboard"], "train.epochs=1", overwrite=True)
    shown = _scalars(_events(out / "tensorboard" / "run"))
    assert [step for step, _ in shown["step/loss"]] == [1, 2, 3]
    _assert_same_as_metrics_jsonl(shown, out)


def test_log_dir_and_run_name_place_the_event_folder(tmp_path):
    out = tmp_path / "run"
    train_tracked(out, ["tensorboard"], f'log.dir="{tmp_path / "shared"}"', 'log.run_name="lr-small"', "train.epochs=1")
    assert list((tmp_path / "shared" / "tensorboard" / "lr-small").glob("events.out.tfevents.*"))
    assert not (out / "tensorboard").exists()


def test_a_tracker_added_on_resume_is_not_another_recipe(tmp_path):
    from tracked_runs import Crash

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="power cut"):
        train_tracked(out, [], logger=Crash())
    train_tracked(out, ["tensorboard"], resume=True)  # [log] keys change where records go, not what is trained
    shown = _scalars(_events(out / "tensorboard" / "run"))
    assert [step for step, _ in shown["step/loss"]] == [CRASH_AT, 6]  # from the checkpoint on
