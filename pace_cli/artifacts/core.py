"""The files pace writes: adapter files with their metadata, and merged checkpoints made file to file."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pace_cli import __version__
from pace_cli import files
from pace_cli.errors import PaceError
from pace_cli.adapters import iter_merged, split_adapter_state

ADAPTER_FORMAT = "pace-adapter"
MERGED_FORMAT = "pace-merged"


@dataclass
class AdapterFile:
    """An adapter file's tensors and what its metadata says about how they were made."""

    path: Path
    tensors: dict[str, Tensor]
    metadata: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.metadata["adapter"]["kind"]

    @property
    def head_name(self) -> str:
        return self.metadata["head"]


def adapter_metadata(*, kind: str, rank: int, targets: list[str], layers: list[str], head: str,
                     pace: Mapping[str, Any], timm_model: str, timm_kwargs: Mapping[str, Any],
                     num_classes: int, class_names: list[str] | None, base_fingerprint: str,
                     base_checkpoint: str | None, recipe_toml: str, trainable_parameters: int,
                     extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format": ADAPTER_FORMAT,
        "format_version": files.FORMAT_VERSION,
        "created_by": f"pace {__version__}",
        "adapter": {"kind": kind, "rank": rank, "targets": list(targets), "layers": list(layers)},
        "head": head,
        "pace": dict(pace),
        "timm_model": timm_model,
        "timm_kwargs": dict(timm_kwargs),
        "num_classes": num_classes,
        "class_names": class_names or [],
        "base_fingerprint": base_fingerprint,
        "base_checkpoint": base_checkpoint or "",
        "trainable_parameters": trainable_parameters,
        "recipe": recipe_toml,
    }
    meta.update(extra or {})
    return meta


def _decode(raw: Mapping[str, str]) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            decoded[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            decoded[key] = value
    # a plain string such as a recipe or a name stays a string even if it happens to parse as JSON
    for key in ("recipe", "timm_model", "head", "base_fingerprint", "base_checkpoint", "format", "created_by"):
        if key in raw:
            decoded[key] = raw[key]
    return decoded


def read_file_metadata(path: str | Path) -> dict[str, Any]:
    return _decode(files.read_metadata(path))


def file_role(metadata: Mapping[str, Any]) -> str:
    fmt = metadata.get("format")
    if fmt == ADAPTER_FORMAT:
        return "adapter"
    if fmt == MERGED_FORMAT:
        return "merged"
    return "base"


def read_adapter(path: str | Path) -> AdapterFile:
    path = Path(path)
    metadata = read_file_metadata(path)
    role = file_role(metadata)
    if role != "adapter":
        raise PaceError(
            f"'{path}' is a {role} checkpoint, not a pace adapter file; pass the adapter.safetensors "
            "that `pace train` wrote"
        )
    version = str(metadata.get("format_version"))
    if version != files.FORMAT_VERSION:
        raise PaceError(f"'{path}' uses adapter format version {version}; this pace reads version "
                        f"{files.FORMAT_VERSION} (upgrade pace)")
    for key in ("adapter", "head", "timm_model", "num_classes"):
        if key not in metadata:
            raise PaceError(f"'{path}' lacks the '{key}' metadata entry; the adapter file is damaged")
    return AdapterFile(path, files.load_tensors(path), metadata)


class LazySafetensors(Mapping):
    """Read-only mapping over a safetensors file that loads a tensor only when asked for it.

    Tensors are read with plain file reads, not through a memory map: a map keeps every page it
    touched resident, so walking a whole base checkpoint would grow the process by the file size.
    Keys come in sorted order, as ``safe_open`` gives them.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        _, self._layout = files.tensor_layout(self.path)  # validates the header first, for a clean error
        self._keys = sorted(self._layout)
        self._file = open(self.path, "rb")

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._layout:
            raise KeyError(key)
        return files.read_tensor(self._file, *self._layout[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def info(self, key: str) -> tuple[str, list[int]]:
        """(safetensors dtype code, shape) of a tensor, without reading it."""
        code, shape, _, _ = self._layout[key]
        return code, shape

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> LazySafetensors:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _FingerprintWhileReading(Mapping):
    """The base as the merge sees it, fingerprinting each tensor as it is read: one read per tensor.

    The fingerprint takes tensors in sorted name order, but the merge reads a layer's weight just
    before its bias (which sorts first), so a tensor that arrives early waits, by reference, for
    its turn. Hashing runs in a thread (hashlib releases the GIL), overlapping the merge arithmetic
    and the writing; the bounded queue keeps at most a few tensors alive for it. The merge must
    not change the tensors it reads in place, since they may still be waiting to be hashed.
    """

    def __init__(self, base: Mapping[str, Tensor], head_name: str):
        self.base = base
        prefix = head_name + "."
        self._order = [key for key in sorted(base) if not key.startswith(prefix)]
        self._unread = set(self._order)
        self._next = 0
        self._early: dict[str, Tensor] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._outcome: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._hash, name="pace-fingerprint", daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        try:
            self._outcome["value"] = files.fingerprint(iter(self._queue.get, None))
        except BaseException as e:
            self._outcome["error"] = e
            while self._queue.get() is not None:  # keep draining so the reader never blocks
                pass

    def __getitem__(self, key: str) -> Tensor:
        tensor = self.base[key]
        if key in self._unread:
            self._unread.discard(key)
            self._early[key] = tensor
            self._release()
        return tensor

    def _release(self) -> None:
        while self._next < len(self._order) and self._order[self._next] in self._early:
            name = self._order[self._next]
            self._queue.put((name, self._early.pop(name)))
            self._next += 1

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)

    def result(self) -> str:
        """The fingerprint, after hashing whatever the merge did not read."""
        for name in self._order[self._next:]:
            if name in self._unread:
                self[name]
        self.close()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["value"]

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


_HALF_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16"}
_FLOAT_CODES = {"F64", "F32", "BF16", "F16"}


def expected_fingerprint(metadata: Mapping[str, Any], base: LazySafetensors) -> str:
    """The fingerprint the base must have, given the precision it is stored in.

    Adapters record the fingerprint of their base as trained (float32) and of the same base
    rounded to bfloat16 and float16, so a half-precision copy of the right base is recognised
    without ``--force``.
    """
    codes = {base.info(key)[0] for key in base if not key.startswith(metadata["head"] + ".")} & _FLOAT_CODES
    by_dtype = metadata.get("base_fingerprints") or {}
    half = _HALF_DTYPE_NAMES.get(next(iter(codes))) if len(codes) == 1 else None
    return by_dtype.get(half) or metadata.get("base_fingerprint", "")


def base_fingerprint(base: Mapping[str, Tensor], head_name: str) -> str:
    """Fingerprint of a base state dict without its classifier (which fine-tuning replaces)."""
    prefix = head_name + "."
    return files.fingerprint((key, base[key]) for key in sorted(base) if not key.startswith(prefix))


@dataclass
class MergeReport:
    output: Path
    tensors: int
    merged_layers: int
    fingerprint_ok: bool
    output_bytes: int


def _merged_entries(base: LazySafetensors, head: Mapping[str, Tensor]) -> list[tuple[str, Any, list[int]]]:
    """(name, dtype, shape) of every tensor ``iter_merged`` emits, from the base header and the new head.

    Mirrors iter_merged: base tensors keep their dtype and shape, the adapter's head replaces the
    base head and takes the dtype of the base head's tensors when it is floating point.
    """
    entries: list[tuple[str, Any, list[int]]] = []
    head_dtype = None
    for key in base:
        code, shape = base.info(key)
        if key in head:
            head_dtype = code
        else:
            entries.append((key, code, shape))
    for key, tensor in head.items():
        dtype = head_dtype if head_dtype is not None and tensor.is_floating_point() else tensor.dtype
        entries.append((key, dtype, list(tensor.shape)))
    return entries


def merge_files(base_path: str | Path, adapter_path: str | Path, output: str | Path, *,
                force: bool = False, overwrite: bool = False) -> MergeReport:
    """Fold an adapter file into a base safetensors file and write a plain checkpoint.

    The base is read one tensor at a time and never turned into a model, and the output is
    written as each tensor is merged, so memory stays at about one layer whatever the model size.
    The base fingerprint must match the one the adapter was trained on, unless ``force``. It is
    computed while merging and checked before the output is moved into place, so a mismatch
    leaves no output file.
    """
    output = Path(output)
    files.check_can_write(output, overwrite)
    adapter = read_adapter(adapter_path)
    if Path(base_path).suffix.lower() != ".safetensors":
        raise PaceError(f"base '{base_path}' must be a .safetensors file; convert it with "
                        "`pace export-base RECIPE --output base.safetensors`")
    layers, head = split_adapter_state(adapter.tensors)

    with LazySafetensors(base_path) as base:
        entries = _merged_entries(base, head)
        expected = expected_fingerprint(adapter.metadata, base)
        source: Mapping[str, Tensor] = base
        if force:
            # The header, written first, records the actual fingerprint: so it needs its own pass.
            actual = base_fingerprint(base, adapter.head_name)
        else:
            # Only a match gets written, so the header can state the expected fingerprint now.
            source = checked = _FingerprintWhileReading(base, adapter.head_name)
            actual = expected
        fingerprint_ok = actual == expected

        def produce() -> Iterator[tuple[str, Tensor]]:
            yield from iter_merged(source, adapter.tensors, adapter.kind)
            if not force:
                found = checked.result()
                if found != expected:  # raised inside the writer: the temporary file is removed
                    raise PaceError(
                        f"'{base_path}' is not the base '{adapter.path.name}' was trained on (fingerprint "
                        f"{found[:19]}… vs {expected[:19]}…); pass --force to merge anyway"
                    )

        meta = {
            "format": MERGED_FORMAT,
            "format_version": files.FORMAT_VERSION,
            "created_by": f"pace {__version__}",
            "merged_from": {"base": Path(base_path).name, "adapter": adapter.path.name},
            "adapter": adapter.metadata["adapter"],
            "pace": adapter.metadata.get("pace", {}),
            "timm_model": adapter.metadata["timm_model"],
            "timm_kwargs": adapter.metadata.get("timm_kwargs", {}),
            "num_classes": adapter.metadata["num_classes"],
            "class_names": adapter.metadata.get("class_names", []),
            "base_fingerprint": actual,
            "fingerprint_checked": fingerprint_ok,
            "head": adapter.head_name,
        }
        threads = torch.get_num_threads()
        # The arithmetic is elementwise on a layer at a time: one intra-op thread is as fast when the
        # machine is idle and several times faster when it is busy, and the fingerprint thread has
        # the other core.
        torch.set_num_threads(1)
        try:
            size = files.save_tensors_streaming(output, entries, produce(), meta)
        finally:
            torch.set_num_threads(threads)
            if not force:
                checked.close()
    return MergeReport(output, len(entries), len(layers), fingerprint_ok, size)
