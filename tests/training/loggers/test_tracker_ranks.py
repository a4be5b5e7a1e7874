"""Under torchrun only rank 0 logs to the trackers: one TensorBoard event file, one W&B run, holding metrics.jsonl."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tracked_runs import RECIPE, series

pytest.importorskip("tensorboard")
wandb = pytest.importorskip("wandb")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


REPO = Path(__file__).resolve().parents[3]


def test_two_processes_make_one_tracker_run(tmp_path):
    out = tmp_path / "two"
    jobs = [{"recipe": RECIPE, "overrides": ['log.trackers=["tensorboard", "wandb"]', "train.device=cpu"],
             "out": str(out)}]
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(REPO / "tests" / "training" / "distributed_jobs.py"), json.dumps(jobs)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True, text=True,
        timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    [events] = list(out.rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    shown = {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}
    expected = series(out)
    assert shown.keys() == expected.keys()
    assert all(shown[tag] == pytest.approx(expected[tag], rel=1e-6) for tag in expected)
    assert len(list(out.glob("wandb/offline-run-*/run-*.wandb"))) == 1
