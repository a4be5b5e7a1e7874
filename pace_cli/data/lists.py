"""Readers of the label files the sources list their images in, and the checks of listed images.

Label lists (VTAB-1k and few-shot: ``<image path> <label>`` per line), FGVC JSON (image path ->
class id), idx files (Fashion-MNIST). Each problem is a one-line PaceError naming the file and
line.
"""

from __future__ import annotations

import functools
import gzip
import json
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from pace_cli.errors import PaceError, one_line


def read_label_list(list_file: Path) -> list[tuple[str, int, int]]:
    """Return ``(relative path, label, line number)`` for every non-blank line."""
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PaceError(f"cannot read list file {list_file}: {exc}; check the file") from exc
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        # Split on the last whitespace so image paths may contain spaces.
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise PaceError(f"{list_file} line {lineno}: expected '<image path> <label>', "
                            f"got {line!r}; fix or remove the line")
        rel, raw_label = parts
        try:
            label = int(raw_label)
        except ValueError:
            raise PaceError(f"{list_file} line {lineno}: label {raw_label!r} is not an integer; "
                            "labels must be 0-based class numbers") from None
        if label < 0:
            raise PaceError(f"{list_file} line {lineno}: label {label} is negative; "
                            "labels must be 0-based class numbers")
        entries.append((rel, label, lineno))
    return entries


def read_fgvc_json(path: Path) -> list[tuple[str, int]]:
    if not path.is_file():
        raise PaceError(f"fgvc file {path} not found; [data] root must hold train.json, val.json and test.json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PaceError(f"cannot read fgvc file {path}: {one_line(exc)}; it must be one JSON object "
                        "mapping image paths to class ids") from None
    if not isinstance(raw, dict):
        raise PaceError(f"fgvc file {path} holds a JSON {type(raw).__name__}, not an object mapping "
                        "image paths to class ids")
    if not raw:
        raise PaceError(f"fgvc file {path} has no images (empty JSON object); add images or pick another split")
    out = []
    for rel, label in raw.items():
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise PaceError(f"fgvc file {path}: class id {label!r} of {rel!r} is not a non-negative integer")
        out.append((rel, label))
    return out


@functools.lru_cache(maxsize=4)
def _read_idx_cached(path: str, mtime_ns: int, size: int, magic: int) -> np.ndarray:
    del mtime_ns, size  # only part of the cache key, so edited files are re-read
    p = Path(path)
    try:
        data = p.read_bytes()
        if data[:2] == b"\x1f\x8b":  # gzip magic: trust content over the file name
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise PaceError(f"cannot read idx file {p}: {exc}; re-download the file") from exc
    if len(data) < 4:
        raise PaceError(f"idx file {p} is truncated ({len(data)} bytes); re-download the file")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise PaceError(f"idx file {p} has magic number {found}, expected {magic}; "
                        "the file is corrupt or not the right kind of idx file")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise PaceError(f"idx file {p} is truncated inside its header; re-download the file")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise PaceError(f"idx file {p} has {len(data)} bytes but its header {dims} needs "
                        f"{expected}; the file is truncated or corrupt, re-download it")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path, magic: int) -> np.ndarray:
    st = path.stat()
    return _read_idx_cached(str(path.resolve()), st.st_mtime_ns, st.st_size, magic)


def class_ids(ids) -> tuple[list[int], dict[int, int]]:
    """Sorted distinct raw ids and the map raw id -> 0-based class."""
    ordered = sorted(set(ids))
    return ordered, {raw: i for i, raw in enumerate(ordered)}


def pick_image_folder(root: Path, rels: list[str], candidates: Sequence[str], explicit: bool,
                       listing: Path) -> Path:
    """The folder the listed paths are relative to: the first candidate holding the first image.

    When nothing matches, an explicit folder is kept so the missing-image error names it.
    """
    first = rels[0] if rels else None
    for cand in candidates:
        folder = (root / cand) if cand not in (".", "") else root
        if first is None or (folder / first).is_file():
            return folder
    # Some copies of the lists carry the folder prefix themselves (train/n0144.../x.JPEG).
    if first is not None and (root / first).is_file():
        return root
    if explicit:
        return (root / candidates[0]) if candidates[0] not in (".", "") else root
    tried = ", ".join(str(root / c) if c != "." else str(root) for c in candidates)
    raise PaceError(f"image {first} (first entry of {listing}) not found under any of: {tried}; "
                    "set [data] image_dir to the folder the listed paths are relative to")


def check_listed_files(paths: list[Path], where: Sequence[str]) -> None:
    """One line for the first listed image that is missing; ``where`` says where each was listed."""
    missing = [(p, w) for p, w in zip(paths, where) if not p.is_file()]
    if missing:
        path, w = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PaceError(f"image {path} listed {w} not found{more}; "
                        "check [data] root and image_dir, or remove the entry")
