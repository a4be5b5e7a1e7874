"""Training with [augment]: 2 processes mix what 1 does, a resumed run is the uninterrupted one, and
every variant trains on soft targets.

One torchrun launch does both halves of the distributed check: it dumps each rank's mixed shares
(compared bit for bit with one process's batches) and trains the variants (compared like the plain
distributed test, up to the float order of DDP's gradient average).
"""

import json

import pytest
import torch
from augment_jobs import mixed_batches
from helpers import tiny_recipe_text
from test_distributed import REPO, adapters, max_diff, torchrun, without_key_bias_shift

from pace_cli.files.tensors import load_tensors
from pace_cli.regularizer.losses import LossParts
from pace_cli.recipe import parse_recipe
from pace_cli.training import StopRequest, TrainingInterrupted, TrainLogger, train
from pace_cli.training.metrics import RunningSums

NOAH = {"transform": "timm", "auto_augment": "rand-m9-mstd0.5-inc1", "interpolation": "bicubic", "re_prob": 0.25,
        "re_mode": "pixel", "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "label_smoothing": 0.1}
RECIPE = tiny_recipe_text(
    model={"drop_path_rate": 0.2},
    data={"batch_size": 8, "synthetic_classes": 4, "synthetic_size": 24, "mean": [0.5] * 3, "std": [0.25] * 3},
    augment=NOAH,
    adapter={"rank": 3},
    pace={"sigma": 1.0, "lazy_interval": 2},
    optim={"lr": 0.01, "warmup_epochs": 1},
    train={"epochs": 2, "log_every": 1, "device": "cpu"},
)


class StopAt(TrainLogger):
    def __init__(self, step, stop):
        self.at, self.stop = step, stop

    def step(self, record):
        if record["step"] == self.at:
            self.stop.request()


def test_two_processes_see_and_train_what_one_does(tmp_path):
    variants = ("pace", "fast", "lazy")
    jobs = [{"recipe": RECIPE, "overrides": [f"pace.variant={v}"], "out": str(tmp_path / f"two-{v}")}
            for v in variants]
    launched = torchrun(2, str(REPO / "tests" / "training" / "augment_jobs.py"),
                        json.dumps({"recipe": RECIPE, "out": str(tmp_path), "jobs": jobs}))
    assert launched.returncode == 0, launched.stderr[-3000:]

    one = mixed_batches(RECIPE, num_workers=2)  # another worker count too
    shares = [torch.load(tmp_path / f"batches-rank{r}.pt") for r in (0, 1)]
    assert len(one) == len(shares[0]) == 6
    for step, (images, targets, indices) in enumerate(one):
        for part, name in ((0, "images"), (1, "targets"), (2, "indices")):
            together = torch.cat([shares[0][step][part], shares[1][step][part]])
            assert torch.equal(together, (images, targets, indices)[part]), (step, name)
    assert targets.shape == (8, 4) and not torch.equal(targets.max(1).values, torch.ones(8))  # soft, mixed

    for variant in variants:
        single = train(parse_recipe(RECIPE, [f"pace.variant={variant}"]), output_dir=tmp_path / f"one-{variant}")
        diff = max_diff(without_key_bias_shift(adapters(single.output_dir)),
                        without_key_bias_shift(adapters(tmp_path / f"two-{variant}")))
        assert diff <= 1e-5, (variant, diff)
        records = [json.loads(line) for line in (tmp_path / f"one-{variant}" / "metrics.jsonl").read_text().splitlines()]
        epoch = [r for r in records if r["type"] == "epoch"][-1]
        assert 0 <= epoch["train_top1"] <= 1 and epoch["train_ce"] > 0


@pytest.mark.parametrize("variant", ["pace", "lazy"])
def test_a_run_stopped_mid_epoch_and_resumed_is_the_uninterrupted_run(tmp_path, variant):
    recipe = parse_recipe(RECIPE, [f"pace.variant={variant}", "train.epochs=3"])
    straight = train(recipe, output_dir=tmp_path / "straight")
    stop = StopRequest()
    with pytest.raises(TrainingInterrupted):
        train(recipe, output_dir=tmp_path / "stopped", stop=stop, logger=StopAt(4, stop))  # epoch 2, batch 1 of 3
    resumed = train(recipe, output_dir=tmp_path / "stopped", resume=True)
    a, b = load_tensors(straight.adapter_path), load_tensors(resumed.adapter_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_accuracy_counts_the_strongest_class_of_a_soft_target():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    soft = torch.tensor([[0.6, 0.4, 0.0], [0.7, 0.3, 0.0], [0.1, 0.2, 0.7]])  # strongest: 0, 0, 2
    zero = torch.zeros(())
    sums = RunningSums(torch.device("cpu"), 1)
    sums.add(LossParts(zero, zero, zero, logits, soft, zero), zero, 0)
    assert sums.reduced()[0]["correct"] == 2 and sums.reduced()[0]["seen"] == 3
