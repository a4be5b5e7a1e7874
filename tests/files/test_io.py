import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pace_cli.files.tensors as pio
from pace_cli.errors import PaceError
from pace_cli.files import atomic, header, sizes


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "blocks.0.attn.qkv.weight": torch.randn(12, 4, generator=g),
        "blocks.0.attn.qkv.bias": torch.randn(12, generator=g),
        "head.weight": torch.randn(3, 4, generator=g).to(torch.bfloat16),
        "pos_embed": torch.randn(1, 5, 4, generator=g),
        "steps": torch.tensor(7, dtype=torch.int64),
    }


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_save_load_roundtrip_with_metadata(tmp_path):
    path = tmp_path / "sub" / "w.safetensors"
    atomic.check_can_write(path, overwrite=False)
    meta = {"kind": "adapter", "rank": 10, "targets": ["qkv", "fc1"], "format": pio.FORMAT_VERSION}
    pio.save_tensors(path, _tensors(), meta)

    loaded = pio.load_tensors(path)
    assert set(loaded) == set(_tensors())
    for k, v in _tensors().items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)

    md = header.read_metadata(path)
    assert md["kind"] == "adapter" and json.loads(md["rank"]) == 10
    assert json.loads(md["targets"]) == ["qkv", "fc1"] and md["format"] == "1"

    info = header.tensor_info(path)
    assert info["head.weight"] == ("bfloat16", [3, 4]) and info["steps"] == ("int64", [])
    streamed = list(pio.iter_tensors(path))
    assert [n for n, _ in streamed] == sorted(_tensors())
    assert _leftovers(path.parent) == []


def test_save_handles_views_and_shared_storage(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    tensors = {"q": base[:3], "k": base[3:], "t": base.t(), "same": base, "alias": base}
    path = tmp_path / "v.safetensors"
    pio.save_tensors(path, tensors)
    loaded = pio.load_tensors(path)
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v)


def test_atomic_write_cleans_up_on_failure(tmp_path, monkeypatch):
    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pio, "save_file", boom)
    path = tmp_path / "w.safetensors"
    with pytest.raises(RuntimeError, match="disk on fire"):
        pio.save_tensors(path, _tensors())
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("old")
    with pytest.raises(KeyError):
        with atomic.atomic_path(path) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".w.txt.tmp-")
            tmp.write_text("new")
            raise KeyError("x")
    assert path.read_text() == "old" and _leftovers(tmp_path) == []
    with atomic.atomic_path(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and _leftovers(tmp_path) == []


def test_check_can_write(tmp_path):
    path = tmp_path / "a" / "b" / "out.safetensors"
    atomic.check_can_write(path, overwrite=False)
    assert path.parent.is_dir()
    path.write_bytes(b"x")
    with pytest.raises(PaceError, match="exists; pass --overwrite"):
        atomic.check_can_write(path, overwrite=False)
    atomic.check_can_write(path, overwrite=True)
    with pytest.raises(PaceError, match="folder"):
        atomic.check_can_write(tmp_path, overwrite=True)


def _real_file(tmp_path):
    path = tmp_path / "real.safetensors"
    pio.save_tensors(path, _tensors(), {"a": "b"})
    return path


@pytest.mark.parametrize("cut", [1, 100, -3])
def test_truncated_file(tmp_path, cut):
    data = _real_file(tmp_path).read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:cut])
    for fn in (header.read_metadata, pio.load_tensors, header.tensor_info, pio.iter_tensors, pio.load_state_dict):
        with pytest.raises(PaceError, match="cut.safetensors"):
            fn(bad)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        bytes(range(256)) * 4,
        struct.pack("<Q", 10) + b"not json!!",
        struct.pack("<Q", 4) + b"[1,]",
        struct.pack("<Q", 2) + b"[]",
        struct.pack("<Q", 2**60) + b"{}",
        struct.pack("<Q", 2) + b"{}"[:1],
    ],
)
def test_garbage_files(tmp_path, content):
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(content)
    with pytest.raises(PaceError, match="junk.safetensors"):
        header.read_metadata(bad)
    with pytest.raises(PaceError, match="junk.safetensors"):
        pio.load_tensors(bad)


def test_header_lies_about_sizes(tmp_path):
    def write(entries):
        raw = json.dumps(entries).encode()
        path = tmp_path / "lie.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)
        return path

    ok = write({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
    assert header.tensor_info(ok) == {"x": ("float32", [4])}
    for entries in (
        {"x": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}},  # past end of file
        {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}},  # shape vs bytes
        {"x": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}},
        {"x": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}},
        {"x": 3},
        {"__metadata__": {"a": 1}},
    ):
        with pytest.raises(PaceError, match="lie.safetensors"):
            header.read_metadata(write(entries))


def test_missing_file(tmp_path):
    with pytest.raises(PaceError, match="nope.safetensors' not found"):
        header.read_metadata(tmp_path / "nope.safetensors")
    with pytest.raises(PaceError, match="nope.pth' not found"):
        pio.load_state_dict(tmp_path / "nope.pth")


def test_load_state_dict_pth(tmp_path):
    t = _tensors()
    plain = tmp_path / "plain.pth"
    torch.save(t, plain)
    wrapped = tmp_path / "wrapped.bin"
    torch.save({"epoch": 3, "model": {**t, "note": "ignored"}}, wrapped)
    for path in (plain, wrapped):
        loaded = pio.load_state_dict(path)
        assert set(loaded) == set(t) and all(torch.equal(loaded[k], t[k]) for k in t)
    st_path = tmp_path / "w.safetensors"
    pio.save_tensors(st_path, t)
    assert set(pio.load_state_dict(st_path)) == set(t)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_state_dict_refuses_pickled_objects(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "obj": _Evil(str(marker))}, path)
    with pytest.raises(PaceError, match="evil.pth' is not a plain-tensor checkpoint"):
        pio.load_state_dict(path)
    assert not marker.exists()


def test_load_state_dict_bad_inputs(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04garbage" * 10)
    with pytest.raises(PaceError, match="junk.pt"):
        pio.load_state_dict(junk)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(PaceError, match="empty.pth"):
        pio.load_state_dict(empty)
    no_tensors = tmp_path / "none.pth"
    torch.save({"epoch": 1}, no_tensors)
    with pytest.raises(PaceError, match="no tensors"):
        pio.load_state_dict(no_tensors)
    npz = tmp_path / "w.npz"
    npz.write_bytes(b"x")
    with pytest.raises(PaceError, match="w.npz.*model"):
        pio.load_state_dict(npz)
    ckpt = tmp_path / "w.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(PaceError, match=r"w.ckpt.*allowed: \.safetensors, \.pth, \.pt, \.bin"):
        pio.load_state_dict(ckpt)


def test_fingerprint(tmp_path):
    t = {k: v.float() for k, v in _tensors().items()}
    pth, sft = tmp_path / "w.pth", tmp_path / "w.safetensors"
    torch.save(t, pth)
    pio.save_tensors(sft, t)
    fp = pio.fingerprint(t)
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 64
    assert pio.fingerprint(pio.load_state_dict(pth)) == fp
    assert pio.fingerprint(pio.load_tensors(sft)) == fp
    assert pio.fingerprint(pio.iter_tensors(sft)) == fp  # streaming path
    assert pio.fingerprint(dict(reversed(list(t.items())))) == fp

    changed = dict(t)
    changed["pos_embed"] = t["pos_embed"].clone()
    changed["pos_embed"][0, 0, 0] += 1e-3
    assert pio.fingerprint(changed) != fp
    reshaped = dict(t, **{"blocks.0.attn.qkv.weight": t["blocks.0.attn.qkv.weight"].reshape(4, 12)})
    assert pio.fingerprint(reshaped) != fp
    renamed = {("x" + k if k == "steps" else k): v for k, v in t.items()}
    assert pio.fingerprint(renamed) != fp

    with pytest.raises(ValueError, match="sorted"):
        pio.fingerprint(iter([("b", torch.ones(1)), ("a", torch.ones(1))]))


def test_human_size():
    assert sizes.human_size(0) == "0 B"
    assert sizes.human_size(1023) == "1023 B"
    assert sizes.human_size(1536) == "1.5 KiB"
    assert sizes.human_size(350 * 1024**2) == "350.0 MiB"
    assert sizes.human_size(5 * 1024**5) == "5120.0 TiB"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda n, body: struct.pack("<Q", n) + body, st.integers(0, 400), st.binary(max_size=300)),
        st.builds(
            lambda j, pad: struct.pack("<Q", len(j.encode())) + j.encode() + pad,
            st.recursive(
                st.none() | st.booleans() | st.integers(-5, 40) | st.text(max_size=8),
                lambda inner: st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "x"]), inner, max_size=4
                ),
                max_leaves=12,
            ).map(json.dumps),
            st.binary(max_size=64),
        ),
    )
)
def test_fuzz_read_metadata(tmp_path, data):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(data)
    for fn in (header.read_metadata, pio.load_tensors):
        try:
            fn(path)
        except PaceError as e:
            assert "\n" not in str(e)


def _valid_bytes():
    from safetensors.torch import save

    return save({"a": torch.ones(3), "b": torch.zeros(2, 2, dtype=torch.int64)}, {"k": "v"})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
)
def test_fuzz_corrupted_real_file(tmp_path, cut, flips):
    data = bytearray(_valid_bytes())
    for pos, byte in flips:
        if pos < len(data):
            data[pos] = byte
    path = tmp_path / "mut.safetensors"
    path.write_bytes(bytes(data[:cut]))
    for fn in (header.read_metadata, pio.load_tensors, lambda p: list(pio.iter_tensors(p))):
        try:
            fn(path)
        except PaceError as e:
            assert "\n" not in str(e)


def test_outputs_get_the_usual_file_mode(tmp_path):
    import os

    path = tmp_path / "t.safetensors"
    pio.save_tensors(path, {"x": torch.zeros(2)})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_format_errors_keep_the_bare_reason_apart(tmp_path):
    # training reuses `what` inside its own message about a damaged checkpoint; the rendered line stays as it was
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(b"abc")
    with pytest.raises(PaceError) as caught:
        header.read_metadata(bad)
    error = caught.value
    assert error.what == "only 3 bytes long"
    assert error.where == f"'{bad}' is not a valid safetensors file" and error.remedy == "re-create or re-download it"
    assert str(error) == f"'{bad}' is not a valid safetensors file: only 3 bytes long; re-create or re-download it"
    with pytest.raises(PaceError) as caught:
        header.read_metadata(tmp_path / "nope.safetensors")
    assert caught.value.what == f"file '{tmp_path / 'nope.safetensors'}' not found"
    assert caught.value.remedy == "check the path"


def test_write_error_parts_and_text():
    import errno

    error = atomic.write_error(Path("/out/x.safetensors"), OSError(errno.ENOSPC, "No space left on device"))
    assert (error.what, error.where, error.remedy) == ("no space left on device", "/out/x.safetensors", "free some space")
    assert (error.reason, error.path, error.errno) == ("no space left on device", Path("/out/x.safetensors"), errno.ENOSPC)
    assert str(error) == "no space left on device while writing '/out/x.safetensors'; free some space and run again"
    # naming the folder the user asked for instead of a file inside it keeps everything else
    moved = error.with_parts(where="/out")
    assert isinstance(moved, atomic.WriteError) and moved.errno == errno.ENOSPC and moved.path == Path("/out")
    assert str(moved) == "no space left on device while writing '/out'; free some space and run again"
    assert str(error).endswith("x.safetensors'; free some space and run again")  # the original is untouched


def test_the_light_file_modules_import_without_torch():
    import subprocess
    import sys

    code = ("import sys; import pace_cli.files.layout, pace_cli.files.atomic, pace_cli.files.header, "
            "pace_cli.files.sizes, pace_cli.files.lock; from pace_cli import files; files.human_size(1); "
            "files.ADAPTER_FILE; assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
