"""Gradient accumulation: ``[train] accumulate = N`` takes the step the whole batch would take.

The reference is the whole batch through ``PaceRegularizer.loss`` in one piece (the plain step),
so each test compares the micro-batch path with a computation that does not go through it.
The tiny model has dropout and drop path, and σ > 0, so the keyed noise and masks take part.
"""

import json

import pytest
import torch
from helpers import tiny_recipe_text
from test_distributed import REPO, adapters, max_diff, torchrun
from typer.testing import CliRunner

from pace_cli.check import check_recipe
from pace_cli.distributed import World
from pace_cli.errors import PaceError
from pace_cli.recipe import parse_recipe
from pace_cli.training import StopRequest, TrainingInterrupted, TrainLogger, checked_global_batch, train
from pace_cli.training.loop import _set_up
from pace_cli.training.step import train_step

RECIPE = tiny_recipe_text(
    model={"drop_path_rate": 0.2, "drop_rate": 0.1},
    data={"batch_size": 8, "synthetic_classes": 4, "synthetic_size": 16},
    adapter={"kind": "lora_mul+vpt_add", "rank": 3},
    pace={"sigma": 1.0, "lazy_interval": 2},
    optim={"lr": 0.01, "warmup_epochs": 1},
    train={"epochs": 2, "log_every": 1, "device": "cpu"},
)
VARIANTS = ("off", "pace", "fast", "lazy")


def _gradients(run) -> list[torch.Tensor]:
    return [p.grad.clone() for p in run.params]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_accumulated_gradient_is_the_whole_batch_gradient(variant, tmp_path):
    """Steps 0 and 1 on one batch (so `fast` meets remembered logits and `lazy` has a regularised
    and a plain step) at lr = 0, which leaves the weights as they are and the gradients in .grad."""
    batch = None
    for accumulate in (1, 2, 4):
        recipe = parse_recipe(RECIPE, [f"pace.variant={variant}", f"train.accumulate={accumulate}"])
        run, whole = _set_up(recipe, World(), tmp_path, None), _set_up(recipe, World(), tmp_path, None)
        batch = batch or next(iter(run.loader))
        for step in (0, 1):
            parts, _ = train_step(run, *batch, step, lr=0.0)
            whole.optimizer.zero_grad(set_to_none=True)
            reference = whole.regularizer.loss(*batch, step)
            reference.total.backward()
            got, want = _gradients(run), [p.grad for p in whole.params]
            if accumulate == 1:  # the plain step, operation for operation
                assert all(torch.equal(a, b) for a, b in zip(got, want))
            scale = max(w.abs().max().item() for w in want)
            worst = max((a - b).abs().max().item() for a, b in zip(got, want))
            print(f"{variant} N={accumulate} step {step}: max |grad diff| {worst:.2e} of max |grad| {scale:.2e}")
            # float32 sums of 2..4 partial sums in another order: a few ulps of the largest entry
            assert worst <= 1e-6 * scale
            assert parts.loss.item() == pytest.approx(reference.loss.item(), rel=1e-6)
            assert parts.consistency.item() == pytest.approx(reference.consistency.item(), rel=1e-5, abs=1e-9)
            assert torch.equal(parts.labels, reference.labels)
            assert torch.allclose(parts.logits, reference.logits.detach(), atol=1e-5)
        if variant == "fast":  # the memory holds the same logits, computed in other batch shapes
            assert torch.allclose(run.regularizer.memory, whole.regularizer.memory, atol=1e-5)


def test_fp16_loss_scaling_covers_every_micro_batch_and_unscales_once(tmp_path):
    """GradScaler (fp16's, here on the CPU in fp32) scales each micro-batch's backward by a power of
    two and unscales the sum once, which leaves the gradients bit for bit as without scaling; a
    micro-batch left unscaled, or a second unscale, would show."""
    recipe = parse_recipe(RECIPE, ["pace.variant=pace", "train.accumulate=2"])
    scaled, plain = _set_up(recipe, World(), tmp_path, None), _set_up(recipe, World(), tmp_path, None)
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, enabled=True)
    batch = next(iter(plain.loader))
    train_step(scaled, *batch, 0, lr=0.0)
    train_step(plain, *batch, 0, lr=0.0)
    assert scaled.scaler.get_scale() == 2.0 ** 12  # finite gradients: the scale stays
    assert all(torch.equal(a, b) for a, b in zip(_gradients(scaled), _gradients(plain)))


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory):
    """One process, the whole batch at once, for each variant."""
    root = tmp_path_factory.mktemp("plain")
    for variant in VARIANTS:
        train(parse_recipe(RECIPE, [f"pace.variant={variant}"]), output_dir=root / variant)
    return root


def _losses(out) -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r.get("loss", r.get("train_loss")) for r in records]


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_with_micro_batches_ends_where_the_whole_batch_does(variant, plain_runs, tmp_path):
    """Four AdamW steps over two epochs at lr 0.01. AdamW divides by the gradient's running RMS, so
    the gradients' rounding differences (above) reach the weights as relative errors of ~1e-6 of
    lr-sized steps; 1e-5 is the bound the one-process/two-process test holds (measured here: below
    3e-6). lora_mul's qkv bias shift is b0 ⊙ δ with b0 = 0, so no rounding-only component (see
    test_distributed) needs leaving out."""
    for accumulate in (2, 4):
        out = tmp_path / f"n{accumulate}"
        train(parse_recipe(RECIPE, [f"pace.variant={variant}", f"train.accumulate={accumulate}"]), output_dir=out)
        diff = max_diff(adapters(plain_runs / variant), adapters(out))
        print(f"{variant} N={accumulate}: max |adapter diff| {diff:.2e}")
        assert diff <= 1e-5
        assert _losses(out) == pytest.approx(_losses(plain_runs / variant), abs=1e-5)


def test_two_processes_accumulating_train_what_one_plain_process_does(plain_runs, tmp_path):
    jobs = [{"recipe": RECIPE, "overrides": [f"pace.variant={v}", "train.accumulate=2"], "out": str(tmp_path / v)}
            for v in VARIANTS]
    launched = torchrun(2, str(REPO / "tests" / "training" / "distributed_jobs.py"), json.dumps(jobs))
    assert launched.returncode == 0, launched.stderr[-3000:]
    diffs = {v: max_diff(adapters(plain_runs / v), adapters(tmp_path / v))
             for v in VARIANTS}
    print("max |adapter(1 process, whole batch) - adapter(2 processes x 2 micro-batches)|:", diffs)
    assert all(d <= 1e-5 for d in diffs.values()), diffs
    for v in VARIANTS:
        assert _losses(tmp_path / v) == pytest.approx(_losses(plain_runs / v), abs=1e-5)


class _StopAfter(TrainLogger):
    def __init__(self, step, stop):
        self.at, self.stop = step, stop

    def step(self, record):
        if record["step"] == self.at:
            self.stop.request()


def test_a_run_may_resume_with_another_accumulate(plain_runs, tmp_path):
    """Checkpoints sit between steps, and another N changes only the order of the sums."""
    stop = StopRequest()
    with pytest.raises(TrainingInterrupted):
        train(parse_recipe(RECIPE, ["pace.variant=fast", "train.accumulate=4"]), output_dir=tmp_path,
              stop=stop, logger=_StopAfter(3, stop))
    train(parse_recipe(RECIPE, ["pace.variant=fast", "train.accumulate=2"]), output_dir=tmp_path, resume=True)
    diff = max_diff(adapters(plain_runs / "fast"), adapters(tmp_path))
    assert diff <= 1e-5


# --- refusals ---------------------------------------------------------------------------------------


def test_a_batch_that_accumulate_does_not_divide_is_refused_by_the_recipe():
    with pytest.raises(PaceError, match=r"\[train\] accumulate = 3 must divide \[data\] batch_size = 8.*2 or 4"):
        parse_recipe(RECIPE, ["train.accumulate=3"])
    with pytest.raises(PaceError, match=r"\[train\] accumulate = 0: must be > 0"):
        parse_recipe(RECIPE, ["train.accumulate=0"])
    with pytest.raises(PaceError, match=r"variant = 'lazy' needs micro-batches of at least 2 samples"):
        parse_recipe(RECIPE, ["train.accumulate=8", "pace.variant=lazy"])
    assert parse_recipe(RECIPE, ["train.accumulate=8"]).train.accumulate == 8  # one-sample micro-batches


def test_nproc_refuses_a_batch_that_does_not_split_over_processes_and_micro_batches(tmp_path, monkeypatch):
    from pace_cli import distributed
    from pace_cli.cli import app

    launched = []
    monkeypatch.setattr(distributed, "launch_local", lambda *args: launched.append(args) or 0)
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text(RECIPE)
    for overrides, message in (
            (["train.accumulate=4"], "batch_size = 8 is the global batch and must divide evenly over 3 processes "
                                     "x [train] accumulate = 4 micro-batches; use a multiple of 12"),
            (["data.batch_size=4", "train.accumulate=2", "pace.variant=lazy"],
             "variant = 'lazy' needs micro-batches of at least 2 samples")):
        nproc = "3" if "train.accumulate=4" in overrides else "2"
        args = ["train", str(recipe_path), "--nproc", nproc, "-o", str(tmp_path / "run")]
        result = CliRunner().invoke(app, args + [arg for o in overrides for arg in ("--set", o)])
        assert result.exit_code != 0 and message in " ".join(result.output.split()), result.output
    assert not launched and not (tmp_path / "run").exists()
    assert CliRunner().invoke(app, ["train", str(recipe_path), "--nproc", "2", "--set", "train.accumulate=4"]).exit_code == 0
    assert len(launched) == 1  # 8 = 2 processes x 4 micro-batches of 1


def test_a_training_split_smaller_than_the_batch_must_split_too(tmp_path):
    """With fewer training images than batch_size, a step takes them all; 6 do not split into 4."""
    recipe = parse_recipe(RECIPE, ["data.synthetic_size=6", "train.accumulate=4"])
    with pytest.raises(PaceError, match=r"batch_size = 8 is more than the 6 training images, so each step takes all "
                                        r"6, which do not divide evenly over \[train\] accumulate = 4 "
                                        r"micro-batches; set batch_size to a multiple of 4 of at most 6"):
        train(recipe, output_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "adapter.safetensors").exists()
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text(RECIPE)
    report = check_recipe(recipe_path, ["data.synthetic_size=6", "train.accumulate=4"])  # `pace check` says so too
    assert not report.ok and any("6 training images" in problem for problem in report.problems)
    # the check training runs on every rank under torchrun, before the model is built
    assert checked_global_batch(parse_recipe(RECIPE, ["data.synthetic_size=6"]), World(0, 2, 0), 6) == 6
    with pytest.raises(PaceError, match=r"6 training images.*over 4 processes; set batch_size to a multiple of 4"):
        checked_global_batch(parse_recipe(RECIPE, ["data.synthetic_size=6"]), World(0, 4, 0), 6)
    with pytest.raises(PaceError, match=r"over 2 processes x \[train\] accumulate = 2 micro-batches"):
        checked_global_batch(parse_recipe(RECIPE, ["train.accumulate=2"]), World(1, 2, 1), 6)
