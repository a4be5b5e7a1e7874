"""``pace merge``: an adapter folded into a base safetensors file, file to file, about one layer in memory."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pace_cli import __version__, files
from pace_cli.adapters import iter_merged, split_adapter_state
from pace_cli.artifacts.adapter_file import MERGED_FORMAT, read_adapter
from pace_cli.artifacts.preprocessing import METADATA_KEY as PREPROCESSING_KEY
from pace_cli.artifacts.preprocessing import recipe_preprocessing
from pace_cli.errors import PaceError


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


_FLOAT_DTYPES = {"F64": "float64", "F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def stored_dtype(base: LazySafetensors, head_name: str) -> str:
    """The float precision a base file keeps its weights in (its head aside); 'mixed' for none or several.

    The adapter records a fingerprint of its base for each rounding (float32, bfloat16, float16),
    so a half-precision copy of the right base is recognised without ``--force``.
    """
    prefix = head_name + "."
    codes = {base.info(key)[0] for key in base if not key.startswith(prefix)} & set(_FLOAT_DTYPES)
    return _FLOAT_DTYPES[codes.pop()] if len(codes) == 1 else "mixed"


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
    recorded = adapter.metadata
    # How `pace predict` and the ONNX export read images for this model, so they need only the merged file.
    preprocessing = recipe_preprocessing(recorded.recipe, str(adapter.path))
    if not force and not recorded.records_base:
        raise PaceError(f"'{adapter.path.name}' records no base fingerprint, so pace cannot tell whether "
                        f"'{base_path}' is its base", remedy="pass --force to merge anyway")

    with LazySafetensors(base_path) as base:
        entries = _merged_entries(base, head)
        dtype = stored_dtype(base, adapter.head_name)
        expected = recorded.expected_fingerprint(dtype)
        source: Mapping[str, Tensor] = base
        if force:
            # The header, written first, records the actual fingerprint: so it needs its own pass.
            actual = base_fingerprint(base, adapter.head_name)
        else:
            # Only a match gets written, so the header can state the expected fingerprint now.
            source = checked = _FingerprintWhileReading(base, adapter.head_name)
            actual = expected
        fingerprint_ok = recorded.matches_base(actual, dtype)

        def produce() -> Iterator[tuple[str, Tensor]]:
            yield from iter_merged(source, adapter.tensors, adapter.kind)
            if not force:
                found = checked.result()
                if not recorded.matches_base(found, dtype):  # raised inside the writer: the temporary file is removed
                    raise PaceError(
                        f"'{base_path}' is not the base '{adapter.path.name}' was trained on (fingerprint "
                        f"{found[:19]}… vs {expected[:19]}…)", remedy="pass --force to merge anyway"
                    )

        meta = {
            "format": MERGED_FORMAT,
            "format_version": files.FORMAT_VERSION,
            "created_by": f"pace {__version__}",
            "merged_from": {"base": Path(base_path).name, "adapter": adapter.path.name},
            "adapter": recorded.adapter_entry(),
            "pace": recorded.pace,
            "timm_model": recorded.timm_model,
            "timm_kwargs": recorded.timm_kwargs,
            "num_classes": recorded.num_classes,
            "class_names": recorded.class_names,
            "base_fingerprint": actual,
            "fingerprint_checked": fingerprint_ok,
            "head": adapter.head_name,
        }
        if preprocessing is not None:
            meta[PREPROCESSING_KEY] = preprocessing.to_metadata()
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
