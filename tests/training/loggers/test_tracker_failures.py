"""A tracker that fails is one warning and training goes on, metrics.jsonl whole; a missing package is one line."""

import errno
import os
import sys

import pytest
from tracked_runs import records, train_tracked

from pace_cli.errors import PaceError
from pace_cli.training.loggers.registry import TRACKER_PACKAGES, TRACKERS

pytest.importorskip("tensorboard")


def _tracker_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pace_cli.trackers"]


def _without_timings(rows):
    return [{k: v for k, v in row.items() if k not in ("images_per_s", "seconds")} for row in rows]


def test_a_full_disk_mid_run_is_one_warning_and_nothing_is_lost(tmp_path, monkeypatch, caplog):
    from torch.utils.tensorboard import SummaryWriter

    real_flush, flushes = SummaryWriter.flush, []

    def flush_on_a_full_disk(self):
        flushes.append(1)
        if len(flushes) >= 3:  # the hparams, two step records, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_flush(self)

    monkeypatch.setattr(SummaryWriter, "flush", flush_on_a_full_disk)
    plain = train_tracked(tmp_path / "plain", [])
    with caplog.at_level("WARNING", logger="pace_cli.trackers"):
        tracked = train_tracked(tmp_path / "tracked", ["tensorboard"])
    [warning] = _tracker_warnings(caplog)
    assert "tracker 'tensorboard' failed while logging step 2" in warning and "No space left" in warning
    assert "training goes on and metrics.jsonl keeps every record" in warning
    assert len(flushes) == 3  # after the failure it was never called again
    assert tracked.adapter_path.is_file()
    assert _without_timings(records(tmp_path / "tracked")) == _without_timings(records(tmp_path / "plain"))
    assert len(records(tmp_path / "tracked")) == 6 + 2 and plain.steps == tracked.steps


def test_a_tracker_that_cannot_start_is_one_warning(tmp_path, monkeypatch, caplog):
    import torch.utils.tensorboard

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "tensorboard/run")

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", refuse)
    with caplog.at_level("WARNING", logger="pace_cli.trackers"):
        result = train_tracked(tmp_path / "run", ["tensorboard"], "train.epochs=1")
    [warning] = _tracker_warnings(caplog)
    assert "'tensorboard' failed while starting" in warning and "Permission denied" in warning
    assert result.adapter_path.is_file() and len(records(tmp_path / "run")) == 4


@pytest.mark.parametrize("tracker", sorted(TRACKER_PACKAGES))
def test_a_missing_package_is_one_line_before_anything_is_written(tmp_path, monkeypatch, tracker):
    monkeypatch.setitem(sys.modules, TRACKER_PACKAGES[tracker][0], None)  # import fails, as when not installed
    with pytest.raises(PaceError) as refused:
        train_tracked(tmp_path / "run", [tracker])
    assert str(refused.value) == (f"[log] trackers names {tracker!r}, but the {TRACKER_PACKAGES[tracker][0]} package "
                                  f"is not installed; pip install 'pace-cli[{tracker}]', or remove {tracker!r} from "
                                  "[log] trackers")
    assert not (tmp_path / "run").exists()


def test_every_tracker_a_recipe_may_name_has_a_module_and_a_package():
    from pace_cli.recipe.log import TRACKER_NAMES

    assert set(TRACKERS) == {"jsonl", *TRACKER_NAMES} and set(TRACKER_PACKAGES) == set(TRACKER_NAMES)
