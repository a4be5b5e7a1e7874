"""build_dataset: check the arguments against the source's registry row, build, draw shots, cache.

What differs between sources lives in their rows of :data:`~pace_cli.data.sources.SOURCES` and in
their builder modules; this module holds what every source shares.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping, Sequence

from pace_cli.data.augment import SampleAugment
from pace_cli.data.datasets import PaceDataset
from pace_cli.data.loader import cache_wanted
from pace_cli.data.sources import SourceRequest, SourceSpec, get_source, only_read_by, readers
from pace_cli.data.transforms import Transform
from pace_cli.errors import PaceError


def build_dataset(source: str, split: str, *, root: str | Path | None = None,
                  image_size: int = 224, channels: int = 3,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  shots: int | None = None, seed: int = 0, train: bool = False,
                  list_shots: int | None = None, cache: bool | str = False,
                  augment: Mapping[str, Any] | None = None, augment_seed: int = 0, **options: Any) -> PaceDataset:
    """Build the data set for one split of one source.

    ``split`` is one of the source's split names (``SOURCES[source].splits``; any name where
    that is ``None``: a subfolder for ``imagefolder``, a list file for ``fewshot``, a different
    draw for ``synthetic``). ``shots`` keeps exactly that many samples per class, drawn
    deterministically from ``seed``. ``train`` turns on the random crop and flip of the sources
    that augment (``fewshot``, ``fgvc``). ``list_shots`` is the k of a source that needs shots
    (``fewshot``: the list ``train_meta.list.num_shot_{list_shots}.seed_{seed}``, whose sorted class
    ids define the label space of every split; unset: the split's own ids).

    ``options`` are the source's own settings (``SOURCES[source].options``, e.g. ``image_dir``,
    ``fewshot_layout``, ``synthetic_classes``, ``synthetic_size``); ``None`` means unset, so the
    builder's default applies. An argument the source does not read is an error, as in a recipe.

    ``cache`` (true, false or "auto", see :func:`~pace_cli.data.loader.cache_wanted`) keeps decoded,
    resized images of the cacheable sources in memory after their first read, so later epochs
    skip JPEG decoding.

    ``augment`` (training splits only) replaces the source's own training images with timm's
    ``create_transform(is_training=True, **augment)`` of each decoded image, keyed by
    ``(augment_seed, epoch, sample)`` (:class:`~pace_cli.data.augment.SampleAugment`); such a
    split is never cached (timm's transform starts from the image at its own size).
    """
    spec = get_source(source)
    options = {key: value for key, value in options.items() if value is not None}
    _check_source_arguments(spec, root=root, list_shots=list_shots, options=options)
    if not isinstance(split, str) or not split:
        raise PaceError(f"empty split name for source '{source}'; give a split name such as 'train'")
    if spec.splits is not None and split not in spec.splits:
        raise PaceError(f"unknown split '{split}' for source '{source}'; use one of: " + ", ".join(spec.splits))
    transform = eval_transform(image_size, channels, mean, std)
    sample_augment = None
    if augment is not None:
        if not train:
            raise PaceError(f"augment is for training splits only, not split '{split}'; pass train=True or drop it")
        # before the source is read, so a setting timm refuses is reported whatever the data
        sample_augment = SampleAugment(transform.image_size, channels, _check_stats("mean", mean, channels),
                                       _check_stats("std", std, channels), seed=int(augment_seed), **augment)
    if shots is not None and int(shots) <= 0:
        raise PaceError(f"shots = {shots} must be a positive number of images per class; "
                        "fix [data] shots or remove it to use every image")
    request = SourceRequest(source, split, _data_root(spec, root), transform, seed=int(seed), train=bool(train),
                            shots=None if list_shots is None else int(list_shots))
    ds = spec.load_builder()(request, **options)
    if len(ds) == 0:
        raise PaceError(f"{source} split '{split}' has no images{_where(ds)}; "
                        "add images or pick another split")
    if shots is not None:
        _apply_shots(ds, int(shots), seed)
    ds.train_augment = sample_augment
    if sample_augment is None and cache_wanted(ds, cache):
        ds.enable_cache()
    return ds


def _check_source_arguments(spec: SourceSpec, *, root, list_shots, options: dict[str, Any]) -> None:
    """Refuse what ``spec``'s source does not read, with the recipe's message for the same key."""
    given_root = root is not None and str(root) != ""
    if given_root and not spec.reads_root:
        raise PaceError(only_read_by("root", spec.name, lambda s: s.reads_root))
    if list_shots is not None and not spec.needs_shots:
        raise PaceError(only_read_by("list_shots", spec.name, lambda s: s.needs_shots))
    for key in options:
        if key not in spec.options:
            if not readers(lambda s: key in s.options):
                raise TypeError(f"build_dataset() got an unexpected keyword argument {key!r}")
            raise PaceError(only_read_by(key, spec.name, lambda s: key in s.options))


def eval_transform(image_size: int, channels: int, mean, std) -> Transform:
    """The checked resize-and-normalise of every split, from its four settings."""
    if channels not in (1, 3):
        raise PaceError(f"channels = {channels} is not supported; use 1 or 3")
    if int(image_size) <= 0:
        raise PaceError(f"image_size = {image_size} must be a positive number of pixels")
    mean = _check_stats("mean", mean, channels)
    std = _check_stats("std", std, channels)
    if (mean is None) != (std is None):
        raise PaceError("give both mean and std for normalisation, or neither")
    if std is not None and any(s == 0 for s in std):
        raise PaceError(f"std {list(std)} contains 0; every std value must be non-zero")
    return Transform(int(image_size), channels, mean, std)


def _check_stats(name: str, values, channels: int):
    if values is None:
        return None
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise PaceError(f"{name} must be a list of {channels} numbers, got {values!r}") from None
    if len(values) != channels:
        raise PaceError(f"{name} has {len(values)} values but channels = {channels}; "
                        f"give one {name} value per channel")
    return values


def _data_root(spec: SourceSpec, root) -> Path | None:
    """The existing folder the source reads (its default for an optional root), or None."""
    if not spec.reads_root:
        return None
    if (root is None or str(root) == "") and spec.root == "optional":
        root = spec.default_root
    if root is None or str(root) == "":
        raise PaceError(f"source '{spec.name}' needs a data folder; set [data] root")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise PaceError(f"data root {path} does not exist or is not a folder; fix [data] root")
    return path


def _where(ds: PaceDataset) -> str:
    root = getattr(ds, "_root", None)
    return f" under {root}" if root is not None else ""


def _apply_shots(ds: PaceDataset, shots: int, seed: int) -> None:
    by_class: dict[int, list[int]] = {c: [] for c in range(len(ds.classes))}
    for pos, label in enumerate(ds.labels):
        by_class[label].append(pos)
    rng = random.Random(seed)
    keep: list[int] = []
    for c, positions in by_class.items():
        if len(positions) < shots:
            raise PaceError(
                f"class '{ds.classes[c]}' in split '{ds.split}' has only {len(positions)} images, "
                f"fewer than shots = {shots}; lower [data] shots or add images to that class"
            )
        positions.sort(key=lambda p: ds._sample_key(ds._rows[p]))
        keep.extend(rng.sample(positions, shots))
    ds._keep(sorted(keep))
