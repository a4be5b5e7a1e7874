"""The safetensors header, read and checked against the file before any tensor is touched. Torch-free.

A header that is not JSON, names a dtype with the wrong byte count, or points past the end of the
file is refused with one line naming the file (``where``), the reason (``what``) and the advice
(``remedy``), so a caller that knows better advice (a training checkpoint) can reuse the reason.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from pace_cli.errors import PaceError

__all__ = ["DTYPES", "invalid_file", "read_header", "read_metadata", "tensor_info", "tensor_layout"]

# safetensors itself refuses headers above 100 MB; anything bigger is garbage, not a header.
_MAX_HEADER = 100 * 1024 * 1024

# safetensors dtype code -> (torch-style name, bits per element)
DTYPES: dict[str, tuple[str, int]] = {
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


def invalid_file(path: str | Path, reason: str) -> PaceError:
    """The error for a file that is not valid safetensors: ``reason`` is its ``what``."""
    return PaceError(reason, where=f"'{path}' is not a valid safetensors file", remedy="re-create or re-download it")


def read_header(path: str | Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Validate the header against the file size; return (tensor entries, metadata)."""
    path = Path(path)
    if not path.exists():
        raise PaceError(f"file '{path}' not found", remedy="check the path")
    if not path.is_file():
        raise PaceError(f"'{path}' is not a file", remedy="pass a .safetensors file")
    size, raw = _raw_header(path)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise invalid_file(path, "header is not valid JSON") from None
    if not isinstance(header, dict):
        raise invalid_file(path, "header is not a JSON object")

    metadata = header.pop("__metadata__", {})
    if metadata is None:  # safetensors writes null when there is no metadata
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise invalid_file(path, "__metadata__ must map strings to strings")

    data_size = size - 8 - len(raw)
    end_max = max((_checked_entry(path, name, entry) for name, entry in header.items()), default=0)
    if end_max > data_size:
        raise invalid_file(path, f"truncated (tensor data needs {end_max} bytes, file has {data_size})")
    return header, metadata


def _raw_header(path: Path) -> tuple[int, bytes]:
    """The file size and the header's bytes, after checking that the length prefix fits the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise invalid_file(path, "empty file" if not head else f"only {len(head)} bytes long")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > _MAX_HEADER:
                raise invalid_file(path, f"no safetensors header (implausible header length {n})")
            if 8 + n > size:
                raise invalid_file(path, f"truncated (header needs {n} bytes, file has {size - 8} after the length)")
            return size, f.read(n)
    except OSError as e:
        raise PaceError(e.strerror or str(e), where=f"cannot read '{path}'") from None


def _checked_entry(path: Path, name: str, entry: Any) -> int:
    """Check one tensor's entry; return where its data ends."""
    if not isinstance(entry, dict):
        raise invalid_file(path, f"entry {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise invalid_file(path, f"entry {name!r} has no dtype")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise invalid_file(path, f"entry {name!r} has a bad shape {shape!r}")
    if (
        not isinstance(offsets, list) or len(offsets) != 2
        or not all(_is_count(o) for o in offsets) or offsets[0] > offsets[1]
    ):
        raise invalid_file(path, f"entry {name!r} has bad data_offsets {offsets!r}")
    if dtype in DTYPES and math.prod(shape) * DTYPES[dtype][1] != 8 * (offsets[1] - offsets[0]):
        raise invalid_file(path, f"entry {name!r} size does not match its shape {shape}")
    return offsets[1]


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a .safetensors file, reading only its header."""
    return dict(read_header(path)[1])


def tensor_info(path: str | Path) -> dict[str, tuple[str, list[int]]]:
    """``name -> (dtype, shape)`` from the header only; dtypes use torch names (``float32``)."""
    header, _ = read_header(path)
    return {
        name: (DTYPES.get(e["dtype"], (e["dtype"], 0))[0], list(e["shape"]))
        for name, e in sorted(header.items())
    }


def tensor_layout(path: str | Path) -> tuple[int, dict[str, tuple[str, list[int], int, int]]]:
    """Where each tensor's bytes are: ``(data_start, name -> (dtype code, shape, begin, end))``.

    Offsets are absolute positions in the file; the header is validated first.
    """
    header, _ = read_header(path)
    with open(path, "rb") as f:
        data_start = 8 + struct.unpack("<Q", f.read(8))[0]
    return data_start, {
        name: (e["dtype"], list(e["shape"]), data_start + e["data_offsets"][0], data_start + e["data_offsets"][1])
        for name, e in header.items()
    }
