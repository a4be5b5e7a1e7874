"""The registry of data sources: one row per source, read by recipe validation and by build_dataset.

Torch-free on purpose: recipe validation checks ``[data]`` and ``[[eval.targets]]`` against this
table (source names, split names, the root rule, which keys a source reads) without importing
torch, and each row names its builder as a ``"module:function"`` string that is imported only
when a data set is built. Adding a source is one module with its builder plus one row here;
every lookup reads :data:`SOURCES` when it runs, so a row added at run time works like the
built-in ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, get_args

from pace_cli.errors import PaceError

if TYPE_CHECKING:
    from pace_cli.data.transforms import Transform

RootRule = Literal["required", "optional", "none"]
# What [data] seed drives besides drawing shots: nothing, the training set (the few-shot list, the
# random crops), or the data itself (a generated set, so an eval target's seed counts too).
SeedUse = Literal["shots", "training", "data"]


@dataclass(frozen=True)
class SourceSpec:
    """What pace knows about one data source; recipe validation and build_dataset both read it."""

    name: str
    # "module:function": takes a SourceRequest and the options as keyword arguments, returns a
    # PaceDataset; imported only when a data set is built.
    builder: str
    # Its split names; None: any name (the folders of an image folder, the list files of fewshot).
    splits: tuple[str, ...] | None = None
    # Whether it reads [data] root; an optional root falls back to default_root.
    root: RootRule = "none"
    default_root: str | None = None
    # Keys of [data] and [[eval.targets]] that only some sources read and this one does; each is
    # also a keyword argument of its builder (unset: the builder's default).
    options: tuple[str, ...] = ()
    seed_use: SeedUse = "shots"
    # It decodes images to a fixed size on access, so [data] cache applies.
    cacheable: bool = False
    # [data] shots is required and picks its training list instead of subsampling; shots_hint
    # says how, in the message for missing shots (after "needs shots = k").
    needs_shots: bool = False
    shots_hint: str = ""

    def __post_init__(self):
        module, _, function = self.builder.partition(":")
        if not (module and function):
            raise ValueError(f"source {self.name!r}: builder {self.builder!r} must be 'module:function'")
        if self.root not in get_args(RootRule):
            raise ValueError(f"source {self.name!r}: root must be one of {', '.join(get_args(RootRule))}")
        if (self.default_root is not None) != (self.root == "optional"):
            raise ValueError(f"source {self.name!r}: an optional root, and only that, takes a default_root")
        if self.seed_use not in get_args(SeedUse):
            raise ValueError(f"source {self.name!r}: seed_use must be one of {', '.join(get_args(SeedUse))}")

    @property
    def reads_root(self) -> bool:
        return self.root != "none"

    @property
    def seeded(self) -> bool:
        """Whether it reads ``[data] seed`` even without shots."""
        return self.seed_use != "shots"

    @property
    def target_reads_seed(self) -> bool:
        """Whether an eval target's seed changes its data (targets have no shots and no training)."""
        return self.seed_use == "data"

    def load_builder(self) -> Callable[..., Any]:
        """The builder function, which returns a :class:`~pace_cli.data.datasets.PaceDataset` (not
        named in the annotation: this table sits below the data set classes, which import it)."""
        module, _, function = self.builder.partition(":")
        return getattr(import_module(module), function)


@dataclass(frozen=True)
class SourceRequest:
    """One split as build_dataset hands it to a source's builder, every argument already checked.

    ``root`` is the existing data folder (``None`` for a source without one), ``shots`` the
    ``[data] shots`` of a source that needs them (others get theirs drawn after building).
    """

    source: str
    split: str
    root: Path | None
    transform: Transform
    seed: int = 0
    train: bool = False
    shots: int | None = None

    def common(self) -> dict[str, Any]:
        """The keyword arguments every PaceDataset takes."""
        return dict(source=self.source, split=self.split, transform=self.transform)


SOURCES: dict[str, SourceSpec] = {
    spec.name: spec for spec in (
        SourceSpec("imagefolder", "pace_cli.data.imagefolder:build", root="required", cacheable=True),
        SourceSpec("vtab1k", "pace_cli.data.vtab1k:build", splits=("train800", "val200", "train800val200", "test"),
                   root="required", cacheable=True),
        SourceSpec("fewshot", "pace_cli.data.fewshot:build", root="required",
                   options=("image_dir", "fewshot_layout"), seed_use="training", needs_shots=True,
                   shots_hint="(1, 2, 4, 8 or 16): it picks annotations/train_meta.list.num_shot_k.seed_<seed>"),
        SourceSpec("fgvc", "pace_cli.data.fgvc:build", splits=("train", "val", "trainval", "test"), root="required",
                   options=("image_dir",), seed_use="training"),
        SourceSpec("fashion-mnist", "pace_cli.data.fashion_mnist:build", splits=("train", "val", "trainval", "test"),
                   root="optional", default_root="/usr/share/datasets/fashion-mnist"),
        SourceSpec("digits", "pace_cli.data.digits:build", splits=("train", "val", "trainval", "test")),
        SourceSpec("synthetic", "pace_cli.data.synthetic:build", options=("synthetic_classes", "synthetic_size"),
                   seed_use="data"),
    )
}


def get_source(name: str) -> SourceSpec:
    """The row of ``name``; an unknown name is a one-line error listing the known ones."""
    spec = SOURCES.get(name)
    if spec is None:
        raise PaceError(f"unknown data source {name!r}; set [data] source to one of: " + ", ".join(SOURCES))
    return spec


def readers(reads: Callable[[SourceSpec], bool]) -> list[str]:
    """The names of the sources for which ``reads(spec)`` holds, in registry order."""
    return [name for name, spec in SOURCES.items() if reads(spec)]


def only_read_by(key: str, source: str, reads: Callable[[SourceSpec], bool]) -> str:
    """The message for ``key`` given to ``source``, which does not read it."""
    names = " or ".join(repr(name) for name in readers(reads))
    return f"{key} is only read by source = {names}, not {source!r}; remove it"
