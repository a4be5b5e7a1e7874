"""Reading pace's files: the decoded metadata of any of them, what role a file plays, adapter files."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from pace_cli import files
from pace_cli.artifacts.metadata import ADAPTER_FORMAT, AdapterMetadata
from pace_cli.errors import PaceError

MERGED_FORMAT = "pace-merged"
# Plain strings, kept as written even when one happens to parse as JSON (a recipe, a name).
_STRING_ENTRIES = ("recipe", "timm_model", "head", "base_fingerprint", "base_checkpoint", "format", "created_by")


@dataclass
class AdapterFile:
    """An adapter file's tensors and what its metadata says about how they were made."""

    path: Path
    tensors: dict[str, Tensor]
    metadata: AdapterMetadata

    @property
    def kind(self) -> str:
        return self.metadata.kind

    @property
    def head_name(self) -> str:
        return self.metadata.head


def _decode(raw: Mapping[str, str]) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            decoded[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            decoded[key] = value
    for key in _STRING_ENTRIES:
        if key in raw:
            decoded[key] = raw[key]
    return decoded


def read_file_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a pace (or any safetensors) file, its JSON-encoded values decoded."""
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
        raise PaceError(f"'{path}' is a {role} checkpoint, not a pace adapter file",
                        remedy="pass the adapter.safetensors that `pace train` wrote")
    version = str(metadata.get("format_version"))
    if version != files.FORMAT_VERSION:
        raise PaceError(f"'{path}' uses adapter format version {version}; this pace reads version "
                        f"{files.FORMAT_VERSION} (upgrade pace)")
    typed = AdapterMetadata.from_metadata(metadata, source=str(path))
    return AdapterFile(path, files.load_tensors(path), typed)
