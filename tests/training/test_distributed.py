"""Several processes (torchrun + DDP, Gloo on the CPU) train the same adapters as one process.

Each test that launches processes costs a few seconds of start-up, so the equivalence and the
cross-world-size resume share one launch.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import stop_after, tiny_recipe_text

from pace_cli import distributed
from pace_cli.data import build_dataset, make_loader
from pace_cli.distributed import SampleLayout, World
from pace_cli.errors import PaceError
from pace_cli.files.layout import CHECKPOINT_FILE
from pace_cli.files.tensors import load_tensors
from pace_cli.recipe import parse_recipe
from pace_cli.training import StopRequest, TrainingInterrupted, train
from pace_cli.training.checkpoint import load_checkpoint

RECIPE = tiny_recipe_text(
    model={"drop_path_rate": 0.2},
    data={"batch_size": 8, "synthetic_classes": 4, "synthetic_size": 24},
    adapter={"kind": "lora_mul+vpt_add", "rank": 3},
    pace={"sigma": 1.0, "lazy_interval": 2},
    optim={"lr": 0.01, "warmup_epochs": 1},
    train={"epochs": 2, "log_every": 1, "device": "cpu"},
)
VARIANTS = ("off", "pace", "fast", "lazy")
REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def adapters(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path / "adapter.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def without_key_bias_shift(state: dict) -> dict:
    """The adapters less the key third of each qkv bias shift.

    Adding a constant to every key adds q·c to all of a query's attention logits, which softmax
    ignores, so that third's exact gradient is zero and what it receives is float rounding, which
    AdamW scales up to lr-sized steps. Its value after training depends on summation order alone
    (one process with the dense and the factored lora_add forward differ there as much), so it is
    no test of the distributed arithmetic. (With lora_mul its shift b0 ⊙ δ is zero here: b0 = 0.)
    """
    out = dict(state)
    for name, tensor in state.items():
        if name.endswith("attn.qkv.delta_bias"):
            third = tensor.numel() // 3
            out[name] = torch.cat([tensor[:third], tensor[2 * third:]])
    return out


def test_two_processes_train_what_one_does_and_resume_across_world_sizes(tmp_path):
    cases = [(v, k) for v in VARIANTS for k in ("lora_mul+vpt_add", "lora_add")]
    one = {c: tmp_path / f"one-{c[0]}-{c[1]}" for c in cases}
    for (variant, kind), out in one.items():
        train(parse_recipe(RECIPE, [f"pace.variant={variant}", f"adapter.kind={kind}"]), output_dir=out)
    # A one-process run stopped after step 3, to be finished by two processes.
    stop = StopRequest()
    with pytest.raises(TrainingInterrupted):
        train(parse_recipe(RECIPE, ["pace.variant=fast"]), output_dir=tmp_path / "one-then-two",
              stop=stop, logger=stop_after(3, stop))
    jobs = [{"recipe": RECIPE, "overrides": [f"pace.variant={v}", f"adapter.kind={k}"],
             "out": str(tmp_path / f"two-{v}-{k}")} for v, k in cases]
    jobs += [
        {"recipe": RECIPE, "overrides": ["pace.variant=pace"], "out": str(tmp_path / "two-then-one"), "stop_at": 5},
        {"recipe": RECIPE, "overrides": ["pace.variant=fast"], "out": str(tmp_path / "one-then-two"), "resume": True},
    ]
    launched = torchrun(2, str(REPO / "tests" / "training" / "distributed_jobs.py"), json.dumps(jobs))
    assert launched.returncode == 0, launched.stderr[-3000:]

    diffs = {f"{v} {k}": max_diff(without_key_bias_shift(adapters(one[(v, k)])),
                                  without_key_bias_shift(adapters(tmp_path / f"two-{v}-{k}"))) for v, k in cases}
    print("max |adapter(1 process) - adapter(2 processes)|:", diffs)
    assert all(d <= 1e-5 for d in diffs.values()), diffs
    # the logs agree too: same steps, same losses up to summation order
    for v, k in cases:
        log_one = [json.loads(line) for line in (one[(v, k)] / "metrics.jsonl").read_text().splitlines()]
        log_two = [json.loads(line) for line in (tmp_path / f"two-{v}-{k}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log_one] == [r["step"] for r in log_two]
        for a, b in zip(log_one, log_two):
            assert a.get("loss", a.get("train_loss")) == pytest.approx(b.get("loss", b.get("train_loss")), abs=1e-5)

    # interrupted with two processes, finished with one; and the other way round
    assert not (tmp_path / "two-then-one" / "adapter.safetensors").exists()
    train(parse_recipe(RECIPE, ["pace.variant=pace"]), output_dir=tmp_path / "two-then-one", resume=True)
    assert max_diff(adapters(one[("pace", "lora_mul+vpt_add")]), adapters(tmp_path / "two-then-one")) <= 1e-5
    assert max_diff(adapters(one[("fast", "lora_mul+vpt_add")]), adapters(tmp_path / "one-then-two")) <= 1e-5


def test_eval_under_torchrun_matches_one_process(tmp_path):
    recipe_path = tmp_path / "recipe.toml"
    recipe_path.write_text(RECIPE.replace("[train]", "[train]\nseed = 1").replace("epochs = 2", "epochs = 1"))
    from typer.testing import CliRunner

    from pace_cli.cli import app

    trained = CliRunner().invoke(app, ["train", str(recipe_path), "-o", str(tmp_path / "run"), "--json"])
    assert trained.exit_code == 0, trained.output
    adapter = str(tmp_path / "run" / "adapter.safetensors")
    single = CliRunner().invoke(app, ["eval", str(recipe_path), "--adapter", adapter, "--json"])
    assert single.exit_code == 0, single.output
    launched = torchrun(2, "-m", "pace_cli", "eval", str(recipe_path), "--adapter", adapter, "--json")
    assert launched.returncode == 0, launched.stderr[-3000:]
    one, two = json.loads(single.output), json.loads(launched.stdout)  # only rank 0 prints
    assert two["samples"] == one["samples"] == 24
    assert two["top1"] == one["top1"] and two["loss"] == pytest.approx(one["loss"], abs=1e-5)


def _launch_long_run(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    recipe_path = tmp_path / "long.toml"
    recipe_path.write_text(RECIPE.replace("epochs = 2", "epochs = 500"))
    out = tmp_path / "long"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launcher = subprocess.Popen([PYTHON, "-m", "pace_cli", "train", str(recipe_path), "-o", str(out), "--nproc", "2"],
                                env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((out / CHECKPOINT_FILE).exists() and (out / "metrics.jsonl").stat().st_size > 0):
        assert launcher.poll() is None, launcher.communicate()
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.2)
    return launcher, out


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_sigterm_to_the_launcher_stops_every_rank_with_one_checkpoint(tmp_path):
    launcher, out = _launch_long_run(tmp_path)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == 143, stderr[-2000:]
    assert stderr.count("interrupted at step") == 1  # rank 0 says it once
    saved = load_checkpoint(out / CHECKPOINT_FILE)
    assert saved.position.step > 0
    assert not (out / "adapter.safetensors").exists()
    assert not list(out.glob(".*tmp*"))  # no half-written files


def test_a_killed_rank_makes_the_run_exit_soon_keeping_the_last_checkpoint(tmp_path):
    launcher, out = _launch_long_run(tmp_path)
    workers = _children(launcher.pid)
    assert len(workers) >= 1
    os.kill(workers[-1], signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = launcher.communicate(timeout=90)
    assert launcher.returncode != 0
    assert time.monotonic() - killed < 60, "the surviving rank hung"
    load_checkpoint(out / CHECKPOINT_FILE)  # still a whole, loadable checkpoint
    assert not list(out.glob(".*tmp*"))


# --- without launching ------------------------------------------------------------------------------


def test_a_sample_gets_the_same_draw_whatever_its_rank():
    """Rows drawn by ranks of a 2- or 4-process world equal the one-process rows for those samples."""
    def rows(world_size, rank, copies, per_sample):
        generator = torch.Generator()
        local = 8 // world_size
        layout = SampleLayout.for_step(generator, seed=3, step=11, global_size=8, offset=rank * local, local_size=local)
        return layout.draw(copies * local * per_sample, (5,), copies=copies, normal=True, dtype=torch.float32)

    for copies in (1, 2):
        for per_sample in (1, 3):  # 3 rows a sample: Swin's windows
            whole = rows(1, 0, copies, per_sample).view(copies, 8, per_sample, 5)
            for size in (2, 4):
                local = 8 // size
                for rank in range(size):
                    part = rows(size, rank, copies, per_sample).view(copies, local, per_sample, 5)
                    torch.testing.assert_close(part, whole[:, rank * local:(rank + 1) * local], rtol=0, atol=0)
    # and another step draws something else
    g = torch.Generator()
    a = SampleLayout.for_step(g, 3, 11, 8, 0, 8).draw(8, (5,), copies=1, normal=True, dtype=torch.float32)
    b = SampleLayout.for_step(g, 3, 12, 8, 0, 8).draw(8, (5,), copies=1, normal=True, dtype=torch.float32)
    assert not torch.equal(a, b)


def test_ranks_take_disjoint_shares_of_the_one_process_batches():
    dataset = build_dataset("synthetic", "train", image_size=8, synthetic_size=24)
    whole = [batch[2].tolist() for batch in make_loader(dataset, 8, shuffle=True, seed=4, drop_last=True)]
    shares = [[batch[2].tolist() for batch in make_loader(dataset, 8, shuffle=True, seed=4, drop_last=True,
                                                          world=World(rank, 2, rank))] for rank in range(2)]
    assert [a + b for a, b in zip(*shares)] == whole


def test_a_global_batch_that_does_not_divide_is_refused():
    dataset = build_dataset("synthetic", "train", image_size=8, synthetic_size=24)
    with pytest.raises(PaceError, match="batch_size = 9 .* 2 processes"):
        make_loader(dataset, 9, shuffle=True, drop_last=True, world=World(0, 2, 0))


def test_more_processes_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(PaceError, match="local rank 3 .* 2 CUDA device"):
        distributed.resolve_device("auto", World(3, 4, 3))
    with pytest.raises(PaceError, match="--nproc 4 .* 2 CUDA device"):
        distributed.launch_local(4, ["train", "x.toml"], "auto")
    assert distributed.resolve_device("cpu", World(3, 4, 3)).type == "cpu"


def test_nproc_under_torchrun_is_refused(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pace_cli.cli import app

    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text(RECIPE)
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["train", str(recipe_path), "--nproc", "2"])
    assert result.exit_code == 2
    assert "under torchrun" in result.output
