"""The files pace writes: adapter files with their metadata, and merged checkpoints made file to file."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import Tensor

from pace_cli import __version__, io
from pace_cli.errors import PaceError
from pace_cli.merge import iter_merged, split_adapter_state

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
        "format_version": io.FORMAT_VERSION,
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
    return _decode(io.read_metadata(path))


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
    if version != io.FORMAT_VERSION:
        raise PaceError(f"'{path}' uses adapter format version {version}; this pace reads version "
                        f"{io.FORMAT_VERSION} (upgrade pace)")
    for key in ("adapter", "head", "timm_model", "num_classes"):
        if key not in metadata:
            raise PaceError(f"'{path}' lacks the '{key}' metadata entry; the adapter file is damaged")
    return AdapterFile(path, io.load_tensors(path), metadata)


class LazySafetensors(Mapping):
    """Read-only mapping over a safetensors file that loads a tensor only when asked for it."""

    def __init__(self, path: str | Path):
        io.read_metadata(path)  # validates the header first, for a clean error
        self._handle = safe_open(str(path), framework="pt", device="cpu")
        self._keys = list(self._handle.keys())

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._handle.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def base_fingerprint(base: Mapping[str, Tensor], head_name: str) -> str:
    """Fingerprint of a base state dict without its classifier (which fine-tuning replaces)."""
    prefix = head_name + "."
    return io.fingerprint((key, base[key]) for key in sorted(base) if not key.startswith(prefix))


@dataclass
class MergeReport:
    output: Path
    tensors: int
    merged_layers: int
    fingerprint_ok: bool
    output_bytes: int


def merge_files(base_path: str | Path, adapter_path: str | Path, output: str | Path, *,
                force: bool = False, overwrite: bool = False) -> MergeReport:
    """Fold an adapter file into a base safetensors file and write a plain checkpoint.

    The base is read one tensor at a time and never turned into a model. Its fingerprint must
    match the one the adapter was trained on, unless ``force``.
    """
    output = Path(output)
    io.check_can_write(output, overwrite)
    adapter = read_adapter(adapter_path)
    if Path(base_path).suffix.lower() != ".safetensors":
        raise PaceError(f"base '{base_path}' must be a .safetensors file; convert it with "
                        "`pace export-base RECIPE --output base.safetensors`")
    base = LazySafetensors(base_path)
    expected = adapter.metadata.get("base_fingerprint", "")
    actual = base_fingerprint(base, adapter.head_name)
    fingerprint_ok = actual == expected
    if not fingerprint_ok and not force:
        raise PaceError(
            f"'{base_path}' is not the base '{adapter.path.name}' was trained on (fingerprint {actual[:19]}… "
            f"vs {expected[:19]}…); pass --force to merge anyway"
        )
    layers, _ = split_adapter_state(adapter.tensors)
    merged = dict(iter_merged(base, adapter.tensors, adapter.kind))
    meta = {
        "format": MERGED_FORMAT,
        "format_version": io.FORMAT_VERSION,
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
    io.save_tensors(output, merged, meta)
    return MergeReport(output, len(merged), len(layers), fingerprint_ok, output.stat().st_size)
