"""What an adapter file says about how it was made, as one typed record written and read here only.

``AdapterMetadata.to_metadata()`` gives the safetensors metadata of an adapter file (``files.save_tensors``
JSON-encodes every value that is not a string, with sorted keys) and ``from_metadata()`` reads it
back from the decoded header (:func:`pace_cli.artifacts.read_file_metadata`). The on-disk names:

    format, format_version, created_by      the envelope: "pace-adapter", files.FORMAT_VERSION, "pace X.Y"
    adapter                                 {"kind", "rank", "targets", "layers"}
    head, pace, timm_model, timm_kwargs, num_classes, class_names
    base_fingerprint, base_checkpoint, trainable_parameters, recipe (the recipe as TOML)
    base_fingerprints                       fingerprint of the base per rounding (float32, bfloat16, float16)
    val_top1, epochs, steps, recipe_json, world_size     written by `pace train`
    imported_from                           written by `pace import-peft`
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pace_cli import __version__, files
from pace_cli.errors import PaceError

ADAPTER_FORMAT = "pace-adapter"
_TRAINING_KEYS = ("val_top1", "epochs", "steps", "recipe_json", "world_size")


@dataclass(frozen=True)
class TrainingRecord:
    """How the `pace train` run that made the adapter went (imported adapters have none)."""

    val_top1: float | None
    epochs: int
    steps: int
    recipe_json: dict[str, Any]
    world_size: int


@dataclass(frozen=True)
class AdapterMetadata:
    kind: str
    rank: int
    targets: list[str]
    layers: list[str]  # the adapted layers, in model (depth) order
    head: str  # module path of the classifier the adapter replaces
    timm_model: str
    num_classes: int
    base_fingerprint: str  # of the base as trained (float32); '' when unrecorded
    trainable_parameters: int
    pace: dict[str, Any] = field(default_factory=dict)
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    base_checkpoint: str = ""
    recipe: str = ""
    base_fingerprints: dict[str, str] = field(default_factory=dict)
    training: TrainingRecord | None = None
    imported_from: dict[str, Any] | None = None
    created_by: str = f"pace {__version__}"

    def adapter_entry(self) -> dict[str, Any]:
        return {"kind": self.kind, "rank": self.rank, "targets": list(self.targets), "layers": list(self.layers)}

    def to_metadata(self) -> dict[str, Any]:
        """The adapter file's metadata, in the order and under the names pace has always written."""
        meta: dict[str, Any] = {
            "format": ADAPTER_FORMAT,
            "format_version": files.FORMAT_VERSION,
            "created_by": self.created_by,
            "adapter": self.adapter_entry(),
            "head": self.head,
            "pace": dict(self.pace),
            "timm_model": self.timm_model,
            "timm_kwargs": dict(self.timm_kwargs),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names or []),
            "base_fingerprint": self.base_fingerprint,
            "base_checkpoint": self.base_checkpoint or "",
            "trainable_parameters": self.trainable_parameters,
            "recipe": self.recipe,
        }
        if self.base_fingerprints:
            meta["base_fingerprints"] = dict(self.base_fingerprints)
        if self.training is not None:
            meta.update({key: getattr(self.training, key) for key in _TRAINING_KEYS})
        if self.imported_from is not None:
            meta["imported_from"] = dict(self.imported_from)
        return meta

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], source: str = "the adapter file") -> AdapterMetadata:
        """Read the decoded metadata of an adapter file; ``source`` names the file in errors."""
        read = _Reader(metadata, source)
        for key in ("adapter", "head", "timm_model", "num_classes"):
            read.entry(key)
        training = None
        if any(key in metadata for key in _TRAINING_KEYS):
            top1 = metadata.get("val_top1")
            training = TrainingRecord(val_top1=None if top1 is None else read.number("val_top1", float),
                                      epochs=read.number("epochs", int, 0), steps=read.number("steps", int, 0),
                                      recipe_json=read.mapping("recipe_json"),
                                      world_size=read.number("world_size", int, 1))
        return cls(
            kind=str(read.entry("adapter.kind")), rank=read.number("adapter.rank", int),
            targets=read.names("adapter.targets"), layers=read.names("adapter.layers", []),
            head=str(read.entry("head")), timm_model=str(read.entry("timm_model")),
            num_classes=read.number("num_classes", int),
            base_fingerprint=str(metadata.get("base_fingerprint") or ""),
            trainable_parameters=read.number("trainable_parameters", int, 0),
            pace=read.mapping("pace"), timm_kwargs=read.mapping("timm_kwargs"),
            class_names=read.names("class_names", []), base_checkpoint=str(metadata.get("base_checkpoint") or ""),
            recipe=str(metadata.get("recipe") or ""), base_fingerprints=read.mapping("base_fingerprints"),
            training=training, imported_from=metadata.get("imported_from"),
            created_by=str(metadata.get("created_by") or ""),
        )

    @property
    def records_base(self) -> bool:
        """Whether the adapter records any fingerprint of its base (every file pace writes does)."""
        return bool(self.base_fingerprint or any(self.base_fingerprints.values()))

    def expected_fingerprint(self, stored_dtype: str) -> str:
        """The fingerprint the right base has when stored in ``stored_dtype`` ('' when unrecorded).

        Fingerprints hash values as float32, so a base rounded to bfloat16 or float16 has its own;
        the adapter records each (``base_fingerprints``), and the float32 one as ``base_fingerprint``.
        """
        return self.base_fingerprints.get(stored_dtype) or self.base_fingerprint

    def matches_base(self, fingerprint: str, stored_dtype: str | None = None) -> bool:
        """Whether a base with this fingerprint is the one the adapter was trained on.

        ``stored_dtype`` is the precision the base file keeps its weights in, when the caller read
        the file: then only the fingerprint of that rounding counts (so the merge can state it in
        its output before it has read the base). A base loaded into a model has lost its stored
        precision, so any recorded rounding counts. An adapter that records none matches no base.
        """
        if stored_dtype is not None:
            recorded = {self.expected_fingerprint(stored_dtype)}
        else:
            recorded = {self.base_fingerprint, *self.base_fingerprints.values()}
        return bool(fingerprint) and fingerprint in recorded - {""}


class _Reader:
    """Typed reads of decoded metadata; what is missing or malformed names the file as damaged."""

    def __init__(self, metadata: Mapping[str, Any], source: str):
        self.metadata, self.source = metadata, source

    def _damaged(self, key: str, problem: str) -> PaceError:
        return PaceError(f"'{self.source}' {problem} '{key}' metadata entry",
                         remedy="the adapter file is damaged")

    def entry(self, key: str, default: Any = ...) -> Any:
        value: Any = self.metadata
        for part in key.split("."):
            if not isinstance(value, Mapping) or part not in value:
                if default is not ...:
                    return default
                raise self._damaged(key, "lacks the")
            value = value[part]
        return value

    def number(self, key: str, kind: type, default: Any = ...) -> Any:
        value = self.entry(key, default)
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise self._damaged(key, "has a malformed") from None

    def names(self, key: str, default: Any = ...) -> list[str]:
        value = self.entry(key, default)
        if value is None and default is not ...:
            value = default
        if not isinstance(value, list):
            raise self._damaged(key, "has a malformed")
        return [str(name) for name in value]

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.entry(key, None) or {}
        if not isinstance(value, Mapping):
            raise self._damaged(key, "has a malformed")
        return dict(value)
