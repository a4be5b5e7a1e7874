"""Never lose work (issue 11): output-folder lock, damaged checkpoints, full disks, an unreachable hub.

Full disks are simulated by raising ``OSError(ENOSPC)`` at the lowest write points pace goes
through: safetensors' writer, ``os.replace`` (the rename that publishes a file), ``os.fsync`` and
the metrics log's ``write``. After each, the command must print one line and exit non-zero, the
previous checkpoint and every existing output must be byte for byte what they were, and no
temporary file may be left.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_recipe_text
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from pace_cli import models
from pace_cli.cli import app
from pace_cli.errors import PaceError
from pace_cli.files import atomic, lock
from pace_cli.files import tensors as pio
from pace_cli.files.layout import CHECKPOINT_FILE
from pace_cli.training.checkpoint import load_checkpoint

runner = CliRunner()

def write_recipe(tmp: Path, epochs: int = 1) -> Path:
    path = tmp / "recipe.toml"
    path.write_text(tiny_recipe_text(data={"batch_size": 8, "synthetic_classes": 3, "synthetic_size": 16},
                                     adapter={"kind": "lora_add", "rank": 2},
                                     train={"epochs": epochs, "log_every": 1}))
    return path


def train(tmp: Path, *extra: str, epochs: int = 1):
    return runner.invoke(app, ["train", str(write_recipe(tmp, epochs)), "-o", str(tmp / "run"), "--json", *extra])


def one_error_line(result, *expected: str, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or ".old-" in p.name)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the output-folder lock


def test_lock_is_taken_and_released(tmp_path):
    folder = tmp_path / "out"
    with lock.output_lock(folder) as path:
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(PaceError, match="in use by another pace run .pid"):
            with lock.output_lock(folder):
                pass
        assert path.is_file()  # the refused attempt leaves the holder's lock alone
    assert not folder.exists()  # created for the lock, still empty: removed again


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("content", [
    lambda: {"pid": _dead_pid(), "host": socket.gethostname(), "start": None},
    lambda: {"pid": os.getpid(), "host": socket.gethostname(), "start": "1"},  # a recycled pid: another process
    lambda: "{not json",  # torn while being written
])
def test_stale_lock_is_taken_over(tmp_path, content):
    folder = tmp_path / "out"
    folder.mkdir()
    value = content()
    (folder / lock.LOCK_FILE).write_text(value if isinstance(value, str) else json.dumps(value))
    os.utime(folder / lock.LOCK_FILE, (0, 0))  # written long ago
    with lock.output_lock(folder) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists() and folder.is_dir()


def test_taking_over_a_stale_lock_never_deletes_a_fresh_one(tmp_path):
    # two runs judged the same lock stale; the first already replaced it with its own live lock
    path = tmp_path / lock.LOCK_FILE
    stale = {"pid": _dead_pid(), "host": socket.gethostname()}
    fresh = {"pid": os.getpid(), "host": socket.gethostname(), "start": lock._start_time(os.getpid())}
    path.write_text(json.dumps(fresh))
    lock._remove_stale(path, stale)
    assert json.loads(path.read_text()) == fresh and sorted(p.name for p in tmp_path.iterdir()) == [lock.LOCK_FILE]
    path.write_text(json.dumps(stale))
    lock._remove_stale(path, stale)
    assert not any(tmp_path.iterdir())


def test_a_lock_being_written_right_now_is_respected(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / lock.LOCK_FILE).write_text("")  # another run created it and has not written its record yet
    with pytest.raises(PaceError, match="being locked by another pace run right now"):
        with lock.output_lock(folder):
            pass


def test_lock_from_another_host_is_refused_with_the_file_to_delete(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / lock.LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere.invalid"}))
    with pytest.raises(PaceError, match=r"elsewhere\.invalid.*delete .*\.pace-lock"):
        with lock.output_lock(folder):
            pass


def test_second_run_into_a_busy_folder_is_refused(tmp_path):
    with lock.output_lock(tmp_path / "run"):
        result = train(tmp_path)
        one_error_line(result, "is in use by another pace run", "--output-dir")
        assert not (tmp_path / "run" / "adapter.safetensors").exists()
        assert (tmp_path / "run" / lock.LOCK_FILE).is_file()
    assert train(tmp_path).exit_code == 0  # free again
    assert not (tmp_path / "run" / lock.LOCK_FILE).exists()


def test_a_run_killed_without_cleanup_does_not_block_the_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / lock.LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    result = train(tmp_path)
    assert result.exit_code == 0, result.output
    assert not (run / lock.LOCK_FILE).exists()


# ---------------------------------------------------------------- damaged checkpoints on --resume


def _rewrite(path: Path, *, drop: str | None = None, metadata: dict | None = None) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != drop}
    meta.update(metadata or {})
    save_file(tensors, str(path), metadata=meta)


DAMAGE = {
    "empty": lambda p: p.write_bytes(b""),
    "cut_in_length": lambda p: p.write_bytes(p.read_bytes()[:5]),
    "cut_in_header": lambda p: p.write_bytes(p.read_bytes()[:60]),
    "cut_in_half": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "cut_at_end": lambda p: p.write_bytes(p.read_bytes()[:-3]),
    "garbage_header": lambda p: p.write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00" + b"{" * 32 + p.read_bytes()[40:]),
    "random_bytes": lambda p: p.write_bytes(os.urandom(4096)),
    "wrong_format": lambda p: _rewrite(p, metadata={"format": "pace-adapter"}),
    "no_metadata": lambda p: save_file({"x": torch.zeros(2)}, str(p)),
    "missing_rng": lambda p: _rewrite(p, drop="rng.torch"),
    "missing_optimizer_slot": lambda p: _rewrite(p, drop="optim.0.exp_avg"),
    "bad_position": lambda p: _rewrite(p, metadata={"position": '{"step": "x"}'}),
    "bad_json": lambda p: _rewrite(p, metadata={"param_groups": "[{"}),
    "wrong_rng_tensor": lambda p: _rewrite(p, metadata={}) or _replace_tensor(p, "rng.torch", torch.zeros(3)),
}


def _replace_tensor(path: Path, name: str, value: torch.Tensor) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors[name] = value
    save_file(tensors, str(path), metadata=meta)


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A finished one-epoch run whose adapter is removed: its checkpoint is what --resume reads."""
    tmp = tmp_path_factory.mktemp("resume")
    assert train(tmp).exit_code == 0
    (tmp / "run" / "adapter.safetensors").unlink()
    return tmp, (tmp / "run" / CHECKPOINT_FILE).read_bytes()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_names_the_file_and_the_way_out(tmp_path, interrupted_run, damage):
    source, good = interrupted_run
    (tmp_path / "run").mkdir()
    checkpoint = tmp_path / "run" / CHECKPOINT_FILE
    checkpoint.write_bytes(good)
    DAMAGE[damage](checkpoint)
    damaged = checkpoint.read_bytes()
    result = train(tmp_path, "--resume")
    one_error_line(result, CHECKPOINT_FILE, "--overwrite")
    assert checkpoint.read_bytes() == damaged  # never replaced by a silent restart
    assert not (tmp_path / "run" / "adapter.safetensors").exists()
    # the way out the message gives works
    assert train(tmp_path, "--overwrite").exit_code == 0


def test_good_checkpoint_still_resumes(tmp_path, interrupted_run):
    _, good = interrupted_run
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / CHECKPOINT_FILE).write_bytes(good)
    result = train(tmp_path, "--resume")
    assert result.exit_code == 0, result.output


def test_damaged_checkpoint_tells_the_reason_without_the_readers_file_and_advice(tmp_path, monkeypatch):
    from pace_cli.training import checkpoint

    def unreadable(path):
        raise PaceError("header is not valid JSON", where=f"'{path}' is not a valid safetensors file",
                        remedy="re-create or re-download it")
    from pace_cli.files import header  # checkpoint reads it through the files face, which looks it up here

    monkeypatch.setattr(header, "read_metadata", unreadable)
    path = tmp_path / CHECKPOINT_FILE
    with pytest.raises(PaceError) as info:
        checkpoint.load_checkpoint(path)
    assert str(info.value) == checkpoint.damaged(path, "header is not valid JSON").one_line()
    with pytest.raises(PaceError, match=r"damaged \(adapter tensor x: wrong shape\), so"):
        with checkpoint.restoring(path):
            raise PaceError("wrong shape", where="adapter tensor x", remedy="was it trained for another model?")


# ---------------------------------------------------------------- full disks


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class DiskFull:
    """Fail the chosen low-level write with ENOSPC when it concerns a file whose name contains ``match``.

    ``skip`` lets that many matching calls through first (e.g. the first checkpoint of a run).
    """

    def __init__(self, monkeypatch, where: str, match: str, skip: int = 0):
        self.match, self.skip, self.hits = match, skip, 0
        self.before_failure: dict[str, bytes] = {}
        if where == "save":  # safetensors' writer, as pio.save_tensors calls it
            real = pio.save_file
            monkeypatch.setattr(pio, "save_file", lambda t, name, **kw: self._maybe(name, real, t, name, **kw))
        elif where == "replace":
            real = os.replace
            monkeypatch.setattr(os, "replace", lambda a, b: self._maybe(str(b), real, a, b))
        elif where == "fsync":
            real = os.fsync
            monkeypatch.setattr(os, "fsync", lambda fd: self._maybe(_fd_path(fd), real, fd))
        elif where == "stream":  # the merge writer's own file writes
            real_open = open

            def fake_open(name, mode="r", *a, **kw):
                handle = real_open(name, mode, *a, **kw)
                if "w" in mode and self.match in str(name) and self._due():
                    handle.close()
                    _enospc()
                return handle
            monkeypatch.setattr(pio, "open", fake_open, raising=False)
        else:
            raise ValueError(where)

    def _due(self) -> bool:
        self.hits += 1
        return self.hits > self.skip

    def _maybe(self, name: str, real, *args, **kwargs):
        if self.match in Path(str(name)).name or self.match in str(name):
            if self._due():
                _enospc()
        return real(*args, **kwargs)


@pytest.mark.parametrize("where", ["save", "replace", "fsync"])
def test_full_disk_while_writing_the_adapter_keeps_the_checkpoint(tmp_path, monkeypatch, where):
    DiskFull(monkeypatch, where, "adapter.safetensors")
    result = train(tmp_path)
    line = one_error_line(result, "no space left on device while writing", "adapter.safetensors", "--resume")
    assert f"pace train {tmp_path / 'recipe.toml'} --resume" in line
    run = tmp_path / "run"
    assert not (run / "adapter.safetensors").exists() and leftovers(tmp_path) == []
    assert not (run / lock.LOCK_FILE).exists()
    load_checkpoint(run / CHECKPOINT_FILE)
    monkeypatch.undo()
    resumed = train(tmp_path, "--resume")  # the way out the message gives works
    assert resumed.exit_code == 0, resumed.output and (run / "adapter.safetensors").is_file()


@pytest.mark.parametrize("where", ["save", "replace", "fsync"])
def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    run = tmp_path / "run"
    saved: list[bytes] = []
    real_save = pio.save_tensors

    def remember(path, *a, **kw):  # the bytes of the last good checkpoint, before the failing save
        if Path(path).name == CHECKPOINT_FILE and Path(path).is_file():
            saved.append(Path(path).read_bytes())
        return real_save(path, *a, **kw)
    monkeypatch.setattr(pio, "save_tensors", remember)
    DiskFull(monkeypatch, where, CHECKPOINT_FILE, skip=1)  # epoch 1 saves, epoch 2 fails
    result = train(tmp_path, epochs=2)
    one_error_line(result, "no space left on device while writing", CHECKPOINT_FILE, "is kept", "--resume")
    assert (run / CHECKPOINT_FILE).read_bytes() == saved[-1]
    assert load_checkpoint(run / CHECKPOINT_FILE).position.epoch == 1
    assert leftovers(tmp_path) == [] and not (run / "adapter.safetensors").exists()


def test_full_disk_while_logging_metrics(tmp_path, monkeypatch):
    import pace_cli.training.loggers.jsonl as jsonl_module

    writes = {"n": 0}

    class Full:
        """A metrics file whose third record finds the disk full, after writing half of itself."""

        def __init__(self, name, mode, **kwargs):
            self.inner = open(name, mode, **kwargs)

        def write(self, data):
            writes["n"] += 1
            if writes["n"] == 3:
                self.inner.write(data[: len(data) // 2])
                _enospc()
            return self.inner.write(data)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

    monkeypatch.setattr(jsonl_module, "open", lambda name, mode="r", **kw: Full(name, mode, **kw), raising=False)
    result = train(tmp_path)
    one_error_line(result, "no space left on device while writing", "metrics.jsonl")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)  # the torn record was cut off
    assert leftovers(tmp_path) == [] and not (tmp_path / "run" / "adapter.safetensors").exists()


def test_full_disk_at_the_start_leaves_nothing(tmp_path, monkeypatch):
    DiskFull(monkeypatch, "replace", "recipe.toml")
    result = train(tmp_path)
    one_error_line(result, "no space left on device while writing", "recipe.toml", "free some space")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    assert train(tmp).exit_code == 0
    base = tmp / "base.safetensors"
    assert runner.invoke(app, ["export-base", str(tmp / "recipe.toml"), "-o", str(base)]).exit_code == 0
    return tmp / "run" / "adapter.safetensors", base


@pytest.mark.parametrize("where", ["stream", "replace", "fsync"])
def test_full_disk_while_merging_keeps_the_old_output(tmp_path, monkeypatch, lora_run, where):
    adapter, base = lora_run
    out = tmp_path / "merged.safetensors"
    out.write_bytes(b"the previous merge")
    DiskFull(monkeypatch, where, "merged.safetensors")
    result = runner.invoke(app, ["merge", str(base), str(adapter), "-o", str(out), "--overwrite"])
    one_error_line(result, "no space left on device while writing", "merged.safetensors")
    assert out.read_bytes() == b"the previous merge" and leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["save", "replace", "fsync"])
def test_full_disk_while_exporting_keeps_the_old_folder(tmp_path, monkeypatch, lora_run, where):
    adapter, base = lora_run
    out = tmp_path / "peft"
    assert runner.invoke(app, ["export", str(adapter), "-o", str(out), "--base", str(base)]).exit_code == 0
    before = snapshot(out)
    DiskFull(monkeypatch, where, "adapter_model.safetensors" if where != "replace" else "peft")
    result = runner.invoke(app, ["export", str(adapter), "-o", str(out), "--base", str(base), "--overwrite"])
    one_error_line(result, "no space left on device while writing", str(out))
    assert snapshot(out) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["export-base", "import-peft"])
def test_full_disk_for_the_other_tensor_writers(tmp_path, monkeypatch, lora_run, command):
    adapter, base = lora_run
    recipe = write_recipe(tmp_path)
    out = tmp_path / "out.safetensors"
    if command == "export-base":
        argv = ["export-base", str(recipe), "-o", str(out)]
    else:
        peft = tmp_path / "peft"
        assert runner.invoke(app, ["export", str(adapter), "-o", str(peft), "--base", str(base)]).exit_code == 0
        argv = ["import-peft", str(peft), "--recipe", str(recipe), "-o", str(out)]
    DiskFull(monkeypatch, "save", "out.safetensors")
    one_error_line(runner.invoke(app, argv), "no space left on device while writing", "out.safetensors")
    assert not out.exists() and leftovers(tmp_path) == []


def test_safetensors_io_errors_become_os_errors(tmp_path):
    # safetensors reports its writer's I/O failures as SafetensorError; they must read as write failures
    with pytest.raises(atomic.WriteError, match="while writing"):
        pio.save_tensors(tmp_path / "no" / "such" / "dir" / "x.safetensors", {"x": torch.zeros(1)})


# ---------------------------------------------------------------- an unreachable hub


PRETRAINED = ["--set", "model.pretrained=true"]


def _no_network(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("pace opened a network connection")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_variable_fails_at_once_without_network(tmp_path, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(models, "hub_reachable", lambda *a: pytest.fail("probed the hub although offline was set"))
    _no_network(monkeypatch)
    result = train(tmp_path, *PRETRAINED)
    one_error_line(result, f"{variable} is set", "[model] checkpoint")


def test_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda *a: False)
    _no_network(monkeypatch)
    result = train(tmp_path, *PRETRAINED)
    one_error_line(result, "cannot be reached", "not in the local cache", "[model] checkpoint")


def test_hub_probe_is_bounded(monkeypatch):
    import time

    monkeypatch.setenv("HF_ENDPOINT", "https://10.255.255.1")  # unroutable: connect would hang
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    started = time.perf_counter()
    models.hub_reachable(timeout=0.5)
    assert time.perf_counter() - started < 2.0
    assert models.hub_address() == ("10.255.255.1", 443)


# ---------------------------------------------------------------- the workflow commands: sweep and report


def sweep_args(tmp: Path, *extra: str) -> list[str]:
    recipe = write_recipe(tmp)
    return ["sweep", str(recipe), "--grid", "pace.sigma=0.5", "--seeds", "0", "-o", str(tmp / "sweep"), "--json",
            *extra]


@pytest.mark.parametrize("table", ["sweep.csv", "sweep.json"])
def test_full_disk_while_writing_sweep_tables(tmp_path, monkeypatch, table):
    DiskFull(monkeypatch, "replace", table)
    result = runner.invoke(app, sweep_args(tmp_path))
    one_error_line(result, "no space left on device while writing", table)
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "sweep" / lock.LOCK_FILE).exists()


def test_second_sweep_into_a_busy_folder_is_refused(tmp_path):
    with lock.output_lock(tmp_path / "sweep"):
        one_error_line(runner.invoke(app, sweep_args(tmp_path)), "is in use by another pace run")
        assert not (tmp_path / "sweep" / "sweep.json").exists()


@pytest.mark.parametrize("where", ["replace", "fsync"])
def test_full_disk_while_drawing_a_report_keeps_the_old_one(tmp_path, monkeypatch, lora_run, where):
    pytest.importorskip("matplotlib")
    adapter, _ = lora_run
    out = tmp_path / "report.png"
    out.write_bytes(b"the previous report")
    DiskFull(monkeypatch, where, "report.png")
    result = runner.invoke(app, ["report", str(adapter.parent), "-o", str(out), "--overwrite"])
    one_error_line(result, "no space left on device while writing", "report.png")
    assert out.read_bytes() == b"the previous report" and leftovers(tmp_path) == []


def test_sweep_reads_past_a_torn_metrics_line(tmp_path):
    from pace_cli.sweep.backends.base import last_validation

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"type": "epoch", "epoch": 1, "val_top1": 0.5, "val_loss": 1.0}\n{"type": "ep')
    assert last_validation(metrics) == (0.5, 1.0)


# ---------------------------------------------------------------- keys a switch turns off: warned, not refused


def test_train_warns_about_switched_off_keys_and_runs(tmp_path):
    recipe = write_recipe(tmp_path)
    result = runner.invoke(app, ["train", str(recipe), "-o", str(tmp_path / "run"), "--json",
                                 "--set", "pace.variant=off", "--set", "pace.sigma=1.5"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: [pace] sigma set but ignored with variant = 'off' (it adds no noise and no "
                        "consistency loss)"]


def test_check_lists_switched_off_keys_as_notes(tmp_path):
    pytest.importorskip("pace_cli.check")
    from pace_cli.check import check_recipe

    report = check_recipe(write_recipe(tmp_path), ["pace.variant=pace", "pace.lazy_interval=3"])
    assert report.ok and any("lazy_interval set but ignored" in note for note in report.notes)


def test_cached_hub_weights_still_load_when_the_hub_is_unreachable(monkeypatch):
    import timm
    from huggingface_hub import constants

    seen = {}
    real, before = timm.create_model, constants.HF_HUB_OFFLINE

    def from_cache(name, pretrained=False, **kwargs):  # stands in for a download served from the hub cache
        seen["offline"] = constants.HF_HUB_OFFLINE
        return real(name, pretrained=False, **kwargs)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda *a: False)
    monkeypatch.setattr(timm, "create_model", from_cache)
    model = models.create_model("vit_tiny_patch16_224", pretrained=True, img_size=32, patch_size=8, depth=1,
                                embed_dim=32, num_heads=2, num_classes=3)
    assert model is not None and seen["offline"] is True  # the download ran in offline mode: cache only
    assert constants.HF_HUB_OFFLINE == before  # restored afterwards
