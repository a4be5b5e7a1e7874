"""Reading and writing tensor files safely: atomic writes, validated headers, no arbitrary unpickling."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import pickle
import re
import secrets
import shutil
import struct
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pace_cli.errors import PaceError

__all__ = [
    "FORMAT_VERSION",
    "WriteError",
    "write_error",
    "write_text_atomic",
    "atomic_path",
    "atomic_dir",
    "check_can_write",
    "save_tensors",
    "save_tensors_streaming",
    "read_metadata",
    "load_tensors",
    "iter_tensors",
    "tensor_info",
    "tensor_layout",
    "read_tensor",
    "load_state_dict",
    "fingerprint",
    "human_size",
]

FORMAT_VERSION = "1"

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
STATE_DICT_SUFFIXES = (".safetensors",) + TORCH_SUFFIXES
_WRAPPER_KEYS = ("state_dict", "model", "module")
# safetensors itself refuses headers above 100 MB; anything bigger is garbage, not a header.
_MAX_HEADER = 100 * 1024 * 1024

# safetensors dtype code -> (torch-style name, bits per element)
_DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 8),
    "U8": ("uint8", 8),
    "I8": ("int8", 8),
    "F8_E5M2": ("float8_e5m2", 8),
    "F8_E4M3": ("float8_e4m3fn", 8),
    "I16": ("int16", 16),
    "U16": ("uint16", 16),
    "F16": ("float16", 16),
    "BF16": ("bfloat16", 16),
    "I32": ("int32", 32),
    "U32": ("uint32", 32),
    "F32": ("float32", 32),
    "C64": ("complex64", 64),
    "F64": ("float64", 64),
    "I64": ("int64", 64),
    "U64": ("uint64", 64),
}


# ---------------------------------------------------------------- writing


class WriteError(PaceError):
    """Writing an output failed (disk full, quota, permissions); nothing half-written was left behind.

    ``reason`` says what went wrong and ``remedy`` what to do, so callers that know more (training
    knows its last checkpoint) can say it in their own words.
    """

    def __init__(self, path: Path, reason: str, remedy: str, errno_: int | None):
        super().__init__(f"{reason} while writing '{path}'; {remedy} and run again")
        self.path, self.reason, self.remedy, self.errno = Path(path), reason, remedy, errno_


_FULL = {errno.ENOSPC: "no space left on device", getattr(errno, "EDQUOT", errno.ENOSPC): "disk quota exceeded"}


def write_error(path: str | Path, error: OSError) -> WriteError:
    """One line for a failed write; a full disk is named as such, since that is what the user can fix."""
    if error.errno in _FULL:
        return WriteError(Path(path), _FULL[error.errno], "free some space", error.errno)
    reason = error.strerror or _one_line(error)
    return WriteError(Path(path), f"write failed ({reason})", "check the folder's permissions and free space",
                      error.errno)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file under a temporary name and rename it into place; a failure leaves the old file."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as e:
        raise write_error(path, e) from None


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; move it into place only if the block succeeds.

    Readers never see a half-written ``final``; on any exception (Ctrl-C included) the temporary
    file is removed and the exception propagates.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{secrets.token_hex(4)}")
    try:
        yield tmp
        _fsync(tmp)
        with contextlib.suppress(OSError):
            # some writers (safetensors among them) create files 0600; outputs get the usual mode
            os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(final.parent)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    # Without this a crash shortly after the rename can leave an empty file under the final name.
    # A file system that cannot sync (EINVAL) is fine; any other failure (ENOSPC and EIO surface
    # here on network and delayed-allocation file systems) means the data may not be there, so
    # the file must not replace the previous one.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):
            raise
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_can_write(path: Path, overwrite: bool) -> None:
    """Refuse to clobber an existing file unless asked to, and make sure the parent folder exists."""
    path = Path(path)
    if path.is_dir():
        raise PaceError(f"output '{path}' is a folder; give a file path instead")
    if path.exists() and not overwrite:
        raise PaceError(f"output file '{path}' exists; pass --overwrite to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PaceError(f"cannot create folder '{path.parent}' for '{path}': {e.strerror or e}") from None


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``final``; put it in ``final``'s place if the block succeeds.

    The folder analogue of :func:`atomic_path`: readers see the old folder or the complete new one,
    never a half-written mix. An existing ``final`` is moved aside first and deleted only after the
    new folder is in place (callers decide whether replacing it is allowed); on any exception the
    temporary folder is removed and the old one, if moved, is put back.
    """
    final = Path(final)
    token = secrets.token_hex(4)
    tmp = final.with_name(f".{final.name}.tmp-{token}")
    aside = final.with_name(f".{final.name}.old-{token}")
    tmp.mkdir()
    moved_aside = False
    try:
        yield tmp
        for child in tmp.iterdir():
            _fsync(child)
            with contextlib.suppress(OSError):
                os.chmod(child, 0o666 & ~_current_umask())
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o777 & ~_current_umask())
        _fsync_dir(tmp)
        if final.exists():
            os.replace(final, aside)
            moved_aside = True
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved_aside and not final.exists():
            with contextlib.suppress(OSError):
                os.replace(aside, final)
        raise
    _fsync_dir(final.parent)
    if moved_aside:
        shutil.rmtree(aside, ignore_errors=True)


def save_tensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> None:
    """Write ``tensors`` to a .safetensors file atomically.

    Non-string metadata values are stored JSON-encoded (safetensors metadata is str -> str).
    """
    path = Path(path)
    prepared: dict[str, torch.Tensor] = {}
    seen_storage: set[tuple[str, int]] = set()
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"value for {name!r} is {type(t).__name__}, not a torch.Tensor")
        t = t.detach().to("cpu").contiguous()
        # safetensors refuses tensors sharing memory (tied weights, qkv views); store copies.
        if t.numel():
            key = (str(t.device), t.untyped_storage().data_ptr())
            if key in seen_storage:
                t = t.clone()
            seen_storage.add((str(t.device), t.untyped_storage().data_ptr()))
        prepared[name] = t
    meta = _encode_metadata(metadata)
    try:
        with atomic_path(path) as tmp:
            _save_file(prepared, tmp, meta)
    except OSError as e:
        raise write_error(path, e) from None


def _save_file(tensors: dict[str, torch.Tensor], tmp: Path, meta: dict[str, str] | None) -> None:
    try:
        save_file(tensors, str(tmp), metadata=meta)
    except SafetensorError as e:
        # safetensors reports I/O failures of its Rust writer as its own error type: recover the OS error
        found = re.search(r"os error (\d+)", str(e))
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(code, os.strerror(code) if found else _one_line(e)) from None


def _encode_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not metadata:
        return None
    meta = {}
    for k, v in metadata.items():
        if not isinstance(k, str):
            raise TypeError(f"metadata keys must be str, got {k!r}")
        meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return meta


def _dtype_code(dtype: torch.dtype | str) -> str:
    """safetensors code (``F32``) of a torch dtype, a torch-style name (``float32``) or a code."""
    name = str(dtype).removeprefix("torch.")
    for code, (torch_name, _) in _DTYPES.items():
        if name in (code, torch_name):
            return code
    raise TypeError(f"dtype {dtype!r} cannot be stored in a safetensors file")


def _raw_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's little-endian bytes without copying (beyond making it contiguous)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def save_tensors_streaming(
    path: str | Path,
    entries: Sequence[tuple[str, torch.dtype | str, Sequence[int]]],
    produce: Iterable[tuple[str, torch.Tensor]],
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """Write a .safetensors file from tensors produced one at a time; returns the file size.

    ``entries`` declares every tensor (name, dtype, shape) so the header can be written first;
    ``produce`` then yields each declared tensor exactly once, in any order, and each is written
    at its place as soon as it arrives, so memory stays at about one tensor. Tensors are laid out
    by element size, largest first, then by name, which keeps every one aligned as safetensors'
    own writer does. A tensor that does not match its declaration, a missing one, or any exception
    raised by ``produce`` leaves no file behind (the write is atomic, like :func:`save_tensors`).
    """
    if sys.byteorder != "little":
        raise PaceError("writing safetensors files on a big-endian machine is not supported")
    path = Path(path)
    declared: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, dtype, shape in entries:
        if not isinstance(name, str) or name == "__metadata__":
            raise TypeError(f"bad tensor name {name!r}")
        if name in declared:
            raise ValueError(f"tensor {name!r} is declared twice")
        declared[name] = (_dtype_code(dtype), tuple(int(d) for d in shape))
    layout = sorted(declared, key=lambda n: (-_DTYPES[declared[n][0]][1], n))
    header: dict[str, Any] = {}
    meta = _encode_metadata(metadata)
    if meta:
        header["__metadata__"] = meta
    places: dict[str, tuple[int, int]] = {}
    end = 0
    for name in layout:
        code, shape = declared[name]
        begin, end = end, end + math.prod(shape) * _DTYPES[code][1] // 8
        places[name] = (begin, end)
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [begin, end]}
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header with spaces to a multiple of 8
    data_start = 8 + len(raw)

    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(struct.pack("<Q", len(raw)))
                f.write(raw)
                f.truncate(data_start + end)  # full size up front; tensors fill their slots
                written: set[str] = set()
                for name, t in produce:
                    if name not in declared:
                        raise ValueError(f"tensor {name!r} was not declared")
                    if name in written:
                        raise ValueError(f"tensor {name!r} was produced twice")
                    code, shape = declared[name]
                    if _dtype_code(t.dtype) != code or tuple(t.shape) != shape:
                        raise ValueError(
                            f"tensor {name!r} is {t.dtype} {list(t.shape)} but was declared "
                            f"{_DTYPES[code][0]} {list(shape)}"
                        )
                    f.seek(data_start + places[name][0])
                    f.write(_raw_bytes(t))
                    written.add(name)
                missing = [n for n in layout if n not in written]
                if missing:
                    raise ValueError(f"{len(missing)} declared tensors were never produced (e.g. {missing[0]!r})")
    except OSError as e:
        raise write_error(path, e) from None
    return data_start + end


# ---------------------------------------------------------------- reading safetensors


def _bad(path: Path, reason: str) -> PaceError:
    return PaceError(f"'{path}' is not a valid safetensors file: {reason}; re-create or re-download it")


def _read_header(path: str | Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Validate the header against the file size; return (tensor entries, metadata)."""
    path = Path(path)
    if not path.exists():
        raise PaceError(f"file '{path}' not found; check the path")
    if not path.is_file():
        raise PaceError(f"'{path}' is not a file; pass a .safetensors file")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _bad(path, "empty file" if not head else f"only {len(head)} bytes long")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > _MAX_HEADER:
                raise _bad(path, f"no safetensors header (implausible header length {n})")
            if 8 + n > size:
                raise _bad(path, f"truncated (header needs {n} bytes, file has {size - 8} after the length)")
            raw = f.read(n)
    except OSError as e:
        raise PaceError(f"cannot read '{path}': {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _bad(path, "header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")

    metadata = header.pop("__metadata__", {})
    if metadata is None:  # safetensors writes null when there is no metadata
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _bad(path, "__metadata__ must map strings to strings")

    data_size = size - 8 - n
    end_max = 0
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise _bad(path, f"entry {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str):
            raise _bad(path, f"entry {name!r} has no dtype")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _bad(path, f"entry {name!r} has a bad shape {shape!r}")
        if (
            not isinstance(offsets, list) or len(offsets) != 2
            or not all(_is_count(o) for o in offsets) or offsets[0] > offsets[1]
        ):
            raise _bad(path, f"entry {name!r} has bad data_offsets {offsets!r}")
        if dtype in _DTYPES:
            expected = math.prod(shape) * _DTYPES[dtype][1]
            if expected != 8 * (offsets[1] - offsets[0]):
                raise _bad(path, f"entry {name!r} size does not match its shape {shape}")
        end_max = max(end_max, offsets[1])
    if end_max > data_size:
        raise _bad(path, f"truncated (tensor data needs {end_max} bytes, file has {data_size})")
    return header, metadata


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a .safetensors file, reading only its header."""
    return dict(_read_header(path)[1])


def tensor_info(path: str | Path) -> dict[str, tuple[str, list[int]]]:
    """``name -> (dtype, shape)`` from the header only; dtypes use torch names (``float32``)."""
    header, _ = _read_header(path)
    return {
        name: (_DTYPES.get(e["dtype"], (e["dtype"], 0))[0], list(e["shape"]))
        for name, e in sorted(header.items())
    }


def tensor_layout(path: str | Path) -> tuple[int, dict[str, tuple[str, list[int], int, int]]]:
    """Where each tensor's bytes are: ``(data_start, name -> (dtype code, shape, begin, end))``.

    Offsets are absolute positions in the file; the header is validated first.
    """
    header, _ = _read_header(path)
    with open(path, "rb") as f:
        data_start = 8 + struct.unpack("<Q", f.read(8))[0]
    return data_start, {
        name: (e["dtype"], list(e["shape"]), data_start + e["data_offsets"][0], data_start + e["data_offsets"][1])
        for name, e in header.items()
    }


def read_tensor(f, code: str, shape: Sequence[int], begin: int, end: int) -> torch.Tensor:
    """Read one tensor from an open binary file with plain reads, into memory it owns.

    Unlike a memory map, this leaves no file pages mapped into the process, so reading a large
    file tensor by tensor keeps the resident size at about one tensor.
    """
    if code not in _DTYPES or not hasattr(torch, _DTYPES[code][0]):
        raise PaceError(f"tensor dtype {code} is not supported by this PyTorch")
    if sys.byteorder != "little":
        raise PaceError("reading safetensors files on a big-endian machine is not supported")
    out = torch.empty(tuple(shape), dtype=getattr(torch, _DTYPES[code][0]))
    buffer = _raw_bytes(out)
    if len(buffer) != end - begin:
        raise PaceError(f"tensor at bytes {begin}-{end} does not match its shape {list(shape)}")
    try:
        f.seek(begin)
        done = 0
        while done < len(buffer):
            n = f.readinto(buffer[done:])
            if not n:
                raise PaceError(f"'{f.name}' ends inside a tensor (at byte {begin + done}); it is truncated")
            done += n
    except OSError as e:
        # a PaceError here keeps read failures apart from write failures in save_tensors_streaming
        raise PaceError(f"cannot read '{f.name}': {e.strerror or e}") from None
    return out


def load_tensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load every tensor of a .safetensors file after validating its header."""
    _read_header(path)
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise PaceError(f"cannot load '{path}': {_one_line(e)}") from None


def iter_tensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` in sorted name order, one tensor in memory at a time.

    The header is checked when this is called, not on the first ``next()``.
    """
    _read_header(path)
    return _iter_validated(path)


def _iter_validated(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in sorted(f.keys()):
                yield name, f.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise PaceError(f"cannot read '{path}': {_one_line(e)}") from None


# ---------------------------------------------------------------- any checkpoint


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or plain PyTorch (.pth/.pt/.bin) checkpoint, on CPU.

    PyTorch files are opened with ``weights_only=True``, so pickled code never runs.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        raise PaceError(
            f"'{path}' is a numpy/JAX .npz checkpoint; load it through the model "
            "(set [model] checkpoint), not as a state dict"
        )
    if suffix not in STATE_DICT_SUFFIXES:
        raise PaceError(
            f"'{path}' has unsupported extension '{suffix or '(none)'}' "
            f"(allowed: {', '.join(STATE_DICT_SUFFIXES)}); convert or rename it"
        )
    if not path.exists():
        raise PaceError(f"checkpoint '{path}' not found; check the path")
    if not path.is_file():
        raise PaceError(f"checkpoint '{path}' is not a file")
    if suffix == ".safetensors":
        return load_tensors(path)

    try:
        with warnings.catch_warnings():
            # torch's note about pickle protocols is noise here; real problems still raise below
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(
            r"unsupported GLOBAL [\w.]+|Unsupported global: \S+|Unsupported operand \d+", str(e)
        )
        detail = found.group(0) if found else "the safe unpickler refused it"
        raise PaceError(
            f"'{path}' is not a plain-tensor checkpoint ({detail}); pace never runs pickled code, "
            "so re-save model.state_dict() or convert it to .safetensors"
        ) from None
    except EOFError:
        raise PaceError(
            f"PyTorch checkpoint '{path}' ends early (empty or truncated); re-create or re-download it"
        ) from None
    except Exception as e:  # torch raises assorted types for corrupt zips and pickles
        raise PaceError(f"cannot read PyTorch checkpoint '{path}': {_one_line(e)}") from None

    for _ in range(3):  # e.g. {"model": {"module": {...}}}
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise PaceError(
            f"'{path}' holds a {type(obj).__name__}, not a dict of tensors; save model.state_dict() instead"
        )
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise PaceError(f"'{path}' contains no tensors; save model.state_dict() instead")
    return tensors


# ---------------------------------------------------------------- fingerprints and sizes


def fingerprint(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> str:
    """``sha256:<hex>`` over names, shapes and float32 little-endian values, by sorted name.

    Values are hashed as float32, so the same weights give the same fingerprint whatever file
    format held them. A mapping is visited in sorted key order. Any other iterable of pairs must
    already be sorted by name (``iter_tensors`` is), which keeps memory at one tensor; otherwise
    ``ValueError`` is raised.
    """
    h = hashlib.sha256(b"pace-fingerprint-v1\0")
    if isinstance(tensors, Mapping):
        mapping = tensors
        pairs: Iterable[tuple[str, torch.Tensor]] = ((k, mapping[k]) for k in sorted(mapping))
    else:
        pairs = tensors
    previous: str | None = None
    for name, t in pairs:
        if previous is not None and name <= previous:
            raise ValueError(
                f"fingerprint needs tensors sorted by unique name; got {name!r} after {previous!r} "
                "(pass a dict or sort the pairs)"
            )
        previous = name
        if t.is_complex():
            raise ValueError(f"cannot fingerprint complex tensor {name!r}")
        encoded = name.encode("utf-8")
        h.update(struct.pack("<QQ", len(encoded), t.dim()))
        h.update(encoded)
        h.update(struct.pack(f"<{t.dim()}q", *t.shape))
        arr = np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy(), dtype="<f4")
        h.update(arr.reshape(-1).view(np.uint8))
    return "sha256:" + h.hexdigest()


def human_size(n_bytes: int) -> str:
    """Format a byte count with binary units, e.g. ``343.2 MiB``."""
    sign = "-" if n_bytes < 0 else ""
    n = abs(float(n_bytes))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{sign}{int(n)} B" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
