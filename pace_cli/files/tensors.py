"""Tensor files without surprises: atomic safetensors writes (whole or streamed), checked reads, no unpickled code.

Reading a .safetensors file validates its header first (:mod:`pace_cli.files.header`); a PyTorch
checkpoint is opened with the safe unpickler only. Every failure is one :class:`PaceError` line.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import re
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

from pace_cli.errors import PaceError, one_line
from pace_cli.files.atomic import atomic_path, write_error
from pace_cli.files.header import DTYPES, invalid_file, read_header

__all__ = [
    "FORMAT_VERSION",
    "save_tensors",
    "save_tensors_streaming",
    "load_tensors",
    "iter_tensors",
    "read_tensor",
    "load_state_dict",
    "fingerprint",
]

FORMAT_VERSION = "1"

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
STATE_DICT_SUFFIXES = (".safetensors",) + TORCH_SUFFIXES
_WRAPPER_KEYS = ("state_dict", "model", "module")


# ---------------------------------------------------------------- writing


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
        raise OSError(code, os.strerror(code) if found else one_line(e)) from None


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
    for code, (torch_name, _) in DTYPES.items():
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
    layout = sorted(declared, key=lambda n: (-DTYPES[declared[n][0]][1], n))
    header: dict[str, Any] = {}
    meta = _encode_metadata(metadata)
    if meta:
        header["__metadata__"] = meta
    places: dict[str, tuple[int, int]] = {}
    end = 0
    for name in layout:
        code, shape = declared[name]
        begin, end = end, end + math.prod(shape) * DTYPES[code][1] // 8
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
                            f"{DTYPES[code][0]} {list(shape)}"
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


# ---------------------------------------------------------------- reading


def read_tensor(f, code: str, shape: Sequence[int], begin: int, end: int) -> torch.Tensor:
    """Read one tensor from an open binary file with plain reads, into memory it owns.

    Unlike a memory map, this leaves no file pages mapped into the process, so reading a large
    file tensor by tensor keeps the resident size at about one tensor.
    """
    if code not in DTYPES or not hasattr(torch, DTYPES[code][0]):
        raise PaceError(f"tensor dtype {code} is not supported by this PyTorch")
    if sys.byteorder != "little":
        raise PaceError("reading safetensors files on a big-endian machine is not supported")
    out = torch.empty(tuple(shape), dtype=getattr(torch, DTYPES[code][0]))
    buffer = _raw_bytes(out)
    if len(buffer) != end - begin:
        raise PaceError(f"tensor at bytes {begin}-{end} does not match its shape {list(shape)}")
    try:
        f.seek(begin)
        done = 0
        while done < len(buffer):
            n = f.readinto(buffer[done:])
            if not n:
                raise invalid_file(f.name, f"truncated (it ends inside a tensor, at byte {begin + done})")
            done += n
    except OSError as e:
        # a PaceError here keeps read failures apart from write failures in save_tensors_streaming
        raise PaceError(e.strerror or str(e), where=f"cannot read '{f.name}'") from None
    return out


def load_tensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load every tensor of a .safetensors file after validating its header."""
    read_header(path)
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise PaceError(one_line(e), where=f"cannot load '{path}'") from None


def iter_tensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` in sorted name order, one tensor in memory at a time.

    The header is checked when this is called, not on the first ``next()``.
    """
    read_header(path)
    return _iter_validated(path)


def _iter_validated(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in sorted(f.keys()):
                yield name, f.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise PaceError(one_line(e), where=f"cannot read '{path}'") from None


# ---------------------------------------------------------------- any checkpoint


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or plain PyTorch (.pth/.pt/.bin) checkpoint, on CPU.

    PyTorch files are opened with ``weights_only=True``, so pickled code never runs.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        raise PaceError(f"'{path}' is a numpy/JAX .npz checkpoint",
                        remedy="load it through the model (set [model] checkpoint), not as a state dict")
    if suffix not in STATE_DICT_SUFFIXES:
        raise PaceError(f"'{path}' has unsupported extension '{suffix or '(none)'}' "
                        f"(allowed: {', '.join(STATE_DICT_SUFFIXES)})", remedy="convert or rename it")
    if not path.exists():
        raise PaceError(f"checkpoint '{path}' not found", remedy="check the path")
    if not path.is_file():
        raise PaceError(f"checkpoint '{path}' is not a file")
    if suffix == ".safetensors":
        return load_tensors(path)
    state = _unwrapped(_load_torch_file(path), path)
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise PaceError(f"'{path}' contains no tensors", remedy="save model.state_dict() instead")
    return tensors


def _load_torch_file(path: Path) -> Any:
    """``torch.load`` with the safe unpickler; every way it can fail is one line."""
    try:
        with warnings.catch_warnings():
            # torch's note about pickle protocols is noise here; real problems still raise below
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"unsupported GLOBAL [\w.]+|Unsupported global: \S+|Unsupported operand \d+", str(e))
        detail = found.group(0) if found else "the safe unpickler refused it"
        raise PaceError(f"'{path}' is not a plain-tensor checkpoint ({detail})",
                        remedy="pace never runs pickled code, so re-save model.state_dict() or convert it to "
                        ".safetensors") from None
    except EOFError:
        raise PaceError(f"PyTorch checkpoint '{path}' ends early (empty or truncated)",
                        remedy="re-create or re-download it") from None
    except Exception as e:  # torch raises assorted types for corrupt zips and pickles
        raise PaceError(one_line(e), where=f"cannot read PyTorch checkpoint '{path}'") from None


def _unwrapped(obj: Any, path: Path) -> Mapping:
    """The state dict inside the usual training wrappers, e.g. ``{"model": {"module": {...}}}``."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise PaceError(f"'{path}' holds a {type(obj).__name__}, not a dict of tensors",
                        remedy="save model.state_dict() instead")
    return obj


# ---------------------------------------------------------------- fingerprints


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
