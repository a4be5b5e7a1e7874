"""Data sets for fine-tuning: image folders, VTAB-1k lists, few-shot lists, FGVC JSON, Fashion-MNIST,
sklearn digits, synthetic.

Every source yields ``(image, label, index)`` where ``image`` is a float tensor
``[channels, image_size, image_size]`` and ``index`` is the sample's position in the
data set (the ``fast`` PACE variant keys its per-sample memory on it).

Problems with the user's data raise :class:`~pace_cli.errors.PaceError` with a one-line
message; raw ``OSError``/PIL errors never escape for bad files.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import random
import typing
import zlib
from importlib.resources import files
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from pace_cli.errors import PaceError
from pace_cli.recipe.schema import FewshotLayout

SOURCES = ("imagefolder", "vtab1k", "fewshot", "fgvc", "fashion-mnist", "digits", "synthetic")
FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_SPLITS = ("train", "val", "trainval", "test")
DIGITS_SPLITS = ("train", "val", "trainval", "test")
VTAB1K_SPLITS = ("train800", "val200", "train800val200", "test")
FGVC_SPLITS = ("train", "val", "trainval", "test")
FEWSHOT_LAYOUTS = typing.get_args(FewshotLayout)
# Image folders tried, in order, when an fgvc data set's [data] image_dir is unset (VPT's sets
# differ: CUB and NABirds use images/, Stanford Dogs Images/, Cars and Flowers the root itself).
FGVC_IMAGE_DIRS = ("images", "Images", ".")
# Few-shot sizes follow the common Resize(256) -> crop(224) recipe, scaled to image_size.
RESIZE_RATIO = 256 / 224
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)

# Side length of the synthetic base images; the transform upsamples them, so storing
# them small keeps memory flat whatever image_size is asked for.
_SYNTHETIC_BASE = 16

# "auto" caches a split's decoded images when they take at most this much memory (uint8).
CACHE_AUTO_BYTES = 1 << 30


class _Transform:
    """Turn a raw ``[c, h, w]`` float image in [0, 1] into the model's input tensor.

    A class rather than a closure so data sets stay picklable for worker processes.
    """

    def __init__(self, image_size: int, channels: int, mean, std):
        self.image_size = image_size
        self.channels = channels
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        if x.shape[0] == 1 and self.channels == 3:
            x = x.repeat(3, 1, 1)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.contiguous()


class PaceDataset(Dataset):
    """Base class: labelled images addressed by position.

    Subclasses implement ``_raw(row)`` (the undecorated image of an underlying row) and
    may override ``_sample_key(row)`` (a stable sort key used before k-shot sampling).
    ``_rows`` maps positions to underlying rows so k-shot subsets need no copying.
    """

    cache_enabled = False  # only file-based sets decode on access and can cache (_FileDataset)

    def __init__(self, *, source: str, split: str, classes: list[str], labels: list[int],
                 transform: _Transform):
        self.source = source
        self.split = split
        self.classes = list(classes)
        self.labels = [int(v) for v in labels]
        self._rows = list(range(len(self.labels)))
        self._transform = transform

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int):
        n = len(self._rows)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        return self._transform(self._raw(self._rows[i])), self.labels[i], i

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(source={self.source!r}, split={self.split!r}, "
                f"samples={len(self)}, classes={len(self.classes)})")

    def _raw(self, row: int) -> torch.Tensor:
        raise NotImplementedError

    def _sample_key(self, row: int):
        return row

    def _keep(self, positions: Sequence[int]) -> None:
        self._rows = [self._rows[p] for p in positions]
        self.labels = [self.labels[p] for p in positions]


class _ArrayDataset(PaceDataset):
    """Images already decoded into one tensor ``[N, H, W]`` or ``[N, C, H, W]``."""

    def __init__(self, images: torch.Tensor, scale: float, **kwargs):
        super().__init__(**kwargs)
        self._images = images
        self._scale = scale

    def _raw(self, row: int) -> torch.Tensor:
        x = self._images[row].float()
        if x.dim() == 2:
            x = x[None]
        return x / self._scale if self._scale != 1.0 else x


class _FileDataset(PaceDataset):
    """Images decoded with PIL on access (image folders and VTAB-1k).

    With :meth:`enable_cache` each image is decoded and resized once and kept as uint8
    ``[C, S, S]`` in one shared-memory buffer: DataLoader workers (forked or spawned) all see the
    same buffer, so whichever process decodes an image first fills it for every later epoch and
    every worker, and the cache costs its size once, not once per worker. Only the deterministic
    decode + resize is cached; the float conversion and normalisation (and any augmentation a
    transform adds later) run on every access.
    """

    def __init__(self, paths: list[Path], root: Path, **kwargs):
        super().__init__(**kwargs)
        self._paths = paths
        self._root = root
        self._cache: torch.Tensor | None = None  # [samples, C, S, S] uint8, shared memory
        self._cached: torch.Tensor | None = None  # [samples] uint8 flags: 1 once the slot is filled
        self._slots: dict[int, int] = {}  # underlying row -> cache slot (only the rows kept, e.g. k-shot)

    cacheable = True  # decode + resize to a fixed square, no randomness: cacheable as is

    def _sample_key(self, row: int):
        # Sort by path so k-shot picks do not depend on directory or list-file order.
        return (self._paths[row].as_posix(), row)

    def cache_bytes(self) -> int:
        """Memory the decoded-image cache of this split takes (uint8 at the transform's size)."""
        size = self._transform.image_size
        return len(self._rows) * (1 if self._transform.channels == 1 else 3) * size * size

    def enable_cache(self) -> None:
        """Keep decoded, resized images in memory after their first read (see the class doc)."""
        if self._cache is not None:
            return
        size = self._transform.image_size
        channels = 1 if self._transform.channels == 1 else 3
        self._slots = {row: slot for slot, row in enumerate(self._rows)}
        self._cache = torch.empty(len(self._rows), channels, size, size, dtype=torch.uint8).share_memory_()
        self._cached = torch.zeros(len(self._rows), dtype=torch.uint8).share_memory_()

    def _keep(self, positions: Sequence[int]) -> None:
        super()._keep(positions)
        if self._cache is not None:  # slots follow positions; start the smaller cache afresh
            self._cache = self._cached = None
            self.enable_cache()

    @property
    def cache_enabled(self) -> bool:
        return self._cache is not None

    def _raw(self, row: int) -> torch.Tensor:
        slot = self._slots.get(row) if self._cache is not None else None
        if slot is not None and self._cached[slot]:
            return self._cache[slot].float().div_(255.0)
        t = self._decode(row)
        if slot is not None:
            self._cache[slot].copy_(t)
            self._cached[slot] = 1  # set after the pixels, so a reader never sees a half-filled slot
        return t.float().div_(255.0)

    def _decode(self, row: int) -> torch.Tensor:
        """The image of ``row`` as uint8 [C, S, S], decoded and resized to the transform's size."""
        from PIL import Image

        path = self._paths[row]
        size = self._transform.image_size
        mode = "L" if self._transform.channels == 1 else "RGB"
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                if img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.BICUBIC)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise PaceError(
                f"cannot read image {path} ({self.source} split '{self.split}'): "
                f"{type(exc).__name__}: {exc}; replace or delete the file"
            ) from exc
        t = torch.from_numpy(arr.copy())
        return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


class _CropFileDataset(_FileDataset):
    """Images decoded with PIL and cropped like the few-shot and FGVC literature.

    Eval: shorter side resized to ``round(image_size * 256 / 224)``, then the centre
    ``image_size`` square. Train (``augment``): the same resize, a random square crop and a
    horizontal flip with probability 1/2.

    Where the randomness comes from: by default torch's global RNG of the process that
    loads the sample. In the main process that RNG is seeded by the training run; DataLoader
    workers get ``base_seed + worker_id`` from the loader's (seeded) generator, so runs
    repeat for a fixed ``num_workers``. After ``set_epoch(e)`` every crop comes instead
    from a generator seeded by ``(aug_seed, e, row)``: the same crops whatever the number
    of workers or processes (what a distributed loop wants).
    """

    # Its decoded, resized images keep their aspect ratio (sizes differ) and the crop after them is
    # random, so the fixed-size decoded-image cache of _FileDataset does not apply (yet).
    cacheable = False

    def __init__(self, paths: list[Path], root: Path, *, augment: bool, aug_seed: int = 0, **kwargs):
        super().__init__(paths, root, **kwargs)
        self.augment = bool(augment)
        self.aug_seed = int(aug_seed)
        self.epoch: int | None = None
        self.class_ids: list[int] = []  # raw id of each class, in class order (set by builders)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def crop_box(self, width: int, height: int, row: int) -> tuple[int, int, bool]:
        """Top-left corner of the crop and whether to flip, for a resized image of that size."""
        size = self._transform.image_size
        if not self.augment:
            return (width - size) // 2, (height - size) // 2, False
        if self.epoch is not None:
            g = torch.Generator().manual_seed(zlib.crc32(f"crop:{self.aug_seed}:{self.epoch}:{row}".encode()))
        else:
            g = None
        left = int(torch.randint(0, width - size + 1, (1,), generator=g))
        top = int(torch.randint(0, height - size + 1, (1,), generator=g))
        flip = bool(torch.rand((), generator=g) < 0.5)
        return left, top, flip

    def _raw(self, row: int) -> torch.Tensor:
        from PIL import Image

        path = self._paths[row]
        size = self._transform.image_size
        resize = max(size, round(size * RESIZE_RATIO))
        mode = "L" if self._transform.channels == 1 else "RGB"
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                w, h = img.size
                # Shorter side to `resize`, aspect ratio kept (torchvision's Resize(int)).
                if w <= h:
                    new_w, new_h = resize, max(resize, round(h * resize / w))
                else:
                    new_w, new_h = max(resize, round(w * resize / h)), resize
                img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
                left, top, flip = self.crop_box(new_w, new_h, row)
                img = img.crop((left, top, left + size, top + size))
                if flip:
                    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise PaceError(
                f"cannot read image {path} ({self.source} split '{self.split}'): "
                f"{type(exc).__name__}: {exc}; replace or delete the file"
            ) from exc
        t = torch.from_numpy(arr.copy())
        t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
        return t.float().div_(255.0)


# ---------------------------------------------------------------- public API


def build_dataset(source: str, split: str, *, root: str | Path | None = None,
                  image_size: int = 224, channels: int = 3,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  shots: int | None = None, seed: int = 0, synthetic_classes: int = 10,
                  synthetic_size: int = 64, train: bool = False, image_dir: str | None = None,
                  fewshot_layout: str | None = None, list_shots: int | None = None,
                  cache: bool | str = False) -> PaceDataset:
    """Build the data set for one split of one source.

    ``split`` is a split name: a subfolder for ``imagefolder``; ``train800``/``val200``/
    ``train800val200``/``test`` for ``vtab1k``; ``train``/``val``/``trainval``/``test`` for
    ``fashion-mnist`` and ``digits``; any name for ``synthetic`` (each name gives
    different samples); ``train``/``val``/``trainval``/``test`` for ``fgvc``; for
    ``fewshot`` see :func:`fewshot_list`. ``shots`` keeps exactly that many samples per
    class, drawn deterministically from ``seed``.

    ``train`` turns on the random crop and flip of ``fewshot`` and ``fgvc`` (other sources
    have no augmentation). ``image_dir`` is the image folder under ``root`` for ``fewshot``
    and ``fgvc``; ``fewshot_layout`` is ``fgvc`` (default) or ``imagenet``; ``list_shots``
    picks the few-shot list ``train_meta.list.num_shot_{list_shots}.seed_{seed}`` whose
    sorted class ids define the label space of every ``fewshot`` split (unset: the split's
    own ids).

    For ``imagefolder`` the classes are the sorted subfolders of that split's folder, so
    every split must contain the same class folders for labels to agree across splits;
    callers that care should compare ``classes`` between splits.

    ``cache`` (true, false or "auto", see :func:`cache_wanted`) keeps decoded, resized images of
    file-based sources in memory after their first read, so later epochs skip JPEG decoding.
    """
    if source not in SOURCES:
        raise PaceError(f"unknown data source {source!r}; set [data] source to one of: "
                        + ", ".join(SOURCES))
    if source not in ("fewshot", "fgvc") and image_dir is not None:
        raise PaceError(f"image_dir is only read by the fewshot and fgvc sources, not '{source}'; remove it")
    if source != "fewshot" and (fewshot_layout is not None or list_shots is not None):
        raise PaceError(f"fewshot_layout and list_shots are only read by the fewshot source, not '{source}'")
    if not isinstance(split, str) or not split:
        raise PaceError(f"empty split name for source '{source}'; give a split name such as 'train'")
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
    if shots is not None and int(shots) <= 0:
        raise PaceError(f"shots = {shots} must be a positive number of images per class; "
                        "fix [data] shots or remove it to use every image")
    transform = _Transform(int(image_size), channels, mean, std)
    common = dict(source=source, split=split, transform=transform)

    if source == "imagefolder":
        ds = _build_imagefolder(_require_root(source, root), split, common)
    elif source == "vtab1k":
        ds = _build_vtab1k(_require_root(source, root), split, common)
    elif source == "fewshot":
        ds = _build_fewshot(_require_root(source, root), split, common, image_dir=image_dir,
                            layout=fewshot_layout or "fgvc", list_shots=list_shots, seed=seed, train=train)
    elif source == "fgvc":
        ds = _build_fgvc(_require_root(source, root), split, common, image_dir=image_dir, seed=seed, train=train)
    elif source == "fashion-mnist":
        ds = _build_fashion_mnist(_require_root(source, root or FASHION_MNIST_DEFAULT_ROOT), split, common)
    elif source == "digits":
        ds = _build_digits(split, common)
    else:
        ds = _build_synthetic(split, seed, synthetic_classes, synthetic_size, channels, common)

    if len(ds) == 0:
        raise PaceError(f"{source} split '{split}' has no images{_where(ds)}; "
                        "add images or pick another split")
    if shots is not None:
        _apply_shots(ds, int(shots), seed)
    if cache_wanted(ds, cache):
        ds.enable_cache()
    return ds


def cache_wanted(ds: PaceDataset, cache: bool | str) -> bool:
    """Whether ``[data] cache`` (true, false or "auto") turns the decoded-image cache on for ``ds``.

    Only ``imagefolder`` and ``vtab1k`` decode to a fixed size on access; the in-memory sources
    are arrays already, and ``fewshot``/``fgvc`` crop at random after an aspect-keeping resize
    (not cached yet). "auto"
    caches a split whose decoded images fit in ``CACHE_AUTO_BYTES`` (VTAB-1k's 1,000 training
    images at 224 px take 144 MiB; 1 GiB holds about 7,100 RGB images at 224 px).
    """
    if cache not in (True, False, "auto"):
        raise PaceError(f"[data] cache = {cache!r}; use true, false or \"auto\"")
    if not (isinstance(ds, _FileDataset) and ds.cacheable) or cache is False:
        return False
    return cache is True or ds.cache_bytes() <= CACHE_AUTO_BYTES


def make_loader(dataset: PaceDataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                drop_last: bool = False, num_workers: int | str = 0, world=None, pin_memory: bool | None = None,
                persistent_workers: bool | None = None, prefetch_factor: int | None = None) -> DataLoader:
    """Wrap ``dataset`` in a DataLoader whose shuffle order depends only on ``seed``.

    Batches are ``(images [B,C,H,W], labels [B], indices [B])``. The generator keeps
    advancing between epochs, so each epoch gets a new but reproducible order.

    With a multi-process ``world`` (:class:`pace_cli.distributed.World`), ``batch_size`` is the
    global batch: every rank draws the same global batches and yields its own share of each.

    ``num_workers`` may be "auto" (:func:`default_num_workers`). ``pin_memory`` defaults to
    whether CUDA is available (page-locked batches copy to the GPU asynchronously);
    ``persistent_workers`` defaults to true whenever there are workers, so they are not
    re-forked each epoch, except for data sets with ``set_epoch`` (their workers must be
    re-created to see the new epoch).
    """
    if int(batch_size) <= 0:
        raise PaceError(f"batch size {batch_size} must be a positive integer")
    if drop_last and len(dataset) < batch_size:
        raise PaceError(
            f"split '{getattr(dataset, 'split', '?')}' has {len(dataset)} samples, fewer than "
            f"batch size {batch_size}, so dropping the last partial batch leaves nothing; "
            "lower the batch size"
        )
    workers = default_num_workers() if num_workers == "auto" else int(num_workers)
    if workers < 0:
        raise PaceError(f"num_workers = {num_workers} must be >= 0 or \"auto\"")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        # Persistent workers keep their own copy of the data set, so a per-epoch setting made in
        # the main process (set_epoch of the cropping sources) would never reach them.
        persistent_workers = workers > 0 and not hasattr(dataset, "set_epoch")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    extra = {}
    if workers > 0:
        extra["persistent_workers"] = bool(persistent_workers)
        if prefetch_factor is not None:
            extra["prefetch_factor"] = int(prefetch_factor)
    if world is not None and world.distributed:
        from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

        from pace_cli.distributed import ShardedBatchSampler, local_batch_size

        local_batch_size(int(batch_size), world)  # refuses a batch that does not divide
        order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        global_batches = BatchSampler(order, int(batch_size), drop_last)
        return DataLoader(dataset, batch_sampler=ShardedBatchSampler(global_batches, world), generator=generator,
                          num_workers=workers, pin_memory=bool(pin_memory), **extra)
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, generator=generator,
                      drop_last=drop_last, num_workers=workers, pin_memory=bool(pin_memory), **extra)


def default_num_workers() -> int:
    """Workers for ``num_workers = "auto"``: none on a CPU-only machine, where decoding in the
    main process competes with the model for the same cores anyway; with CUDA, enough to keep the
    GPU fed (up to 8, leaving a core for the main process)."""
    if not torch.cuda.is_available():
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


# ---------------------------------------------------------------- helpers


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


def _require_root(source: str, root) -> Path:
    if root is None or str(root) == "":
        raise PaceError(f"source '{source}' needs a data folder; set [data] root")
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


def _unknown_split(source: str, split: str, allowed: Sequence[str]) -> PaceError:
    return PaceError(f"unknown split '{split}' for source '{source}'; use one of: "
                     + ", ".join(allowed))


# ---------------------------------------------------------------- imagefolder


def _build_imagefolder(root: Path, split: str, common: dict) -> PaceDataset:
    split_dir = root / split
    if not split_dir.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        hint = ", ".join(present) if present else "none"
        raise PaceError(f"split folder {split_dir} not found (folders in root: {hint}); "
                        "create it or pick an existing split name")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise PaceError(f"split folder {split_dir} has no class subfolders; "
                        f"lay images out as {root}/{split}/<class>/<image>")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(split_dir / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if not fname.startswith(".") and Path(fname).suffix.lower() in IMAGE_EXTENSIONS:
                    paths.append(Path(dirpath) / fname)
                    labels.append(label)
    return _FileDataset(paths, split_dir, classes=classes, labels=labels, **common)


# ---------------------------------------------------------------- vtab1k


def _parse_vtab_list(list_file: Path) -> list[tuple[str, int, int]]:
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


def _build_vtab1k(root: Path, split: str, common: dict) -> PaceDataset:
    if split not in VTAB1K_SPLITS:
        raise _unknown_split("vtab1k", split, VTAB1K_SPLITS)
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        raise PaceError(f"vtab1k list file {list_file} not found; check [data] root points at "
                        "one VTAB-1k data set folder (holding train800.txt, test.txt, ...)")
    entries = _parse_vtab_list(list_file)
    # Count classes over every list file so all splits share one label space.
    max_label = max((lab for _, lab, _ in entries), default=-1)
    for other in VTAB1K_SPLITS:
        other_file = root / f"{other}.txt"
        if other != split and other_file.is_file():
            max_label = max([max_label] + [lab for _, lab, _ in _parse_vtab_list(other_file)])
    paths = [root / rel for rel, _, _ in entries]
    missing = [(p, ln) for p, (_, _, ln) in zip(paths, entries) if not p.is_file()]
    if missing:
        path, lineno = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PaceError(f"image {path} listed on line {lineno} of {list_file} not found{more}; "
                        "paths are relative to [data] root")
    classes = [str(i) for i in range(max_label + 1)]
    return _FileDataset(paths, root, classes=classes, labels=[lab for _, lab, _ in entries], **common)


# ---------------------------------------------------------------- fewshot and fgvc


def fewshot_list(layout: str, split: str, shots: int | None, seed: int) -> tuple[str, str]:
    """``(list file under annotations/, default image folder under root)`` of one few-shot split.

    ``fgvc`` layout (NOAH's few-shot FGVC sets): ``train`` is
    ``train_meta.list.num_shot_{shots}.seed_{seed}``, ``val`` ``val_meta.list``, ``test``
    ``test_meta.list``, all under ``images/``. ``imagenet`` layout (domain adaptation): ``train``
    is the same k-shot list and ``val`` the held-out search list
    ``unofficial_val_list_4_shot16seed0``, both under ``train/``; ``test`` is the official
    ``val_meta.list`` under ``val/``. Any other split name is taken as a list file name.
    """
    if layout not in FEWSHOT_LAYOUTS:
        raise PaceError(f"unknown fewshot_layout {layout!r}; use one of: " + ", ".join(FEWSHOT_LAYOUTS))
    shot_list = f"train_meta.list.num_shot_{shots}.seed_{seed}"
    if layout == "fgvc":
        named = {"train": shot_list, "val": "val_meta.list", "test": "test_meta.list"}
        return named.get(split, split), "images"
    named = {"train": (shot_list, "train"), "val": ("unofficial_val_list_4_shot16seed0", "train"),
             "test": ("val_meta.list", "val")}
    return named.get(split, (split, "train"))


def _class_ids(ids) -> tuple[list[int], dict[int, int]]:
    """Sorted distinct raw ids and the map raw id -> 0-based class."""
    ordered = sorted(set(ids))
    return ordered, {raw: i for i, raw in enumerate(ordered)}


def _pick_image_folder(root: Path, rels: list[str], candidates: Sequence[str], explicit: bool,
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


def _check_files(paths: list[Path], where: Sequence[str]) -> None:
    """One line for the first listed image that is missing; ``where`` says where each was listed."""
    missing = [(p, w) for p, w in zip(paths, where) if not p.is_file()]
    if missing:
        path, w = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PaceError(f"image {path} listed {w} not found{more}; "
                        "check [data] root and image_dir, or remove the entry")


def _build_fewshot(root: Path, split: str, common: dict, *, image_dir: str | None, layout: str,
                   list_shots: int | None, seed: int, train: bool) -> PaceDataset:
    list_name, default_dir = fewshot_list(layout, split, list_shots, seed)
    if split == "train" and list_shots is None:
        raise PaceError(f"fewshot split 'train' needs [data] shots = k to pick "
                        f"annotations/train_meta.list.num_shot_k.seed_{seed} under {root}")
    list_file = root / "annotations" / list_name
    if not list_file.is_file():
        raise PaceError(f"fewshot list {list_file} not found; check [data] root (it holds annotations/), "
                        "shots and seed, or the split name")
    entries = _parse_vtab_list(list_file)
    if not entries:
        raise PaceError(f"fewshot list {list_file} has no images; add lines '<image> <label>' or pick another split")
    # One label space for every split: the sorted class ids of the k-shot training list.
    if list_shots is not None:
        train_file = root / "annotations" / fewshot_list(layout, "train", list_shots, seed)[0]
        if not train_file.is_file():
            raise PaceError(f"fewshot training list {train_file} not found; it defines the classes of "
                            "every split, check [data] shots and seed")
        space_file = train_file
        space_ids = [lab for _, lab, _ in (entries if train_file == list_file else _parse_vtab_list(train_file))]
    else:
        space_file, space_ids = list_file, [lab for _, lab, _ in entries]
    ordered, index = _class_ids(space_ids)
    labels = []
    for _, raw, lineno in entries:
        if raw not in index:
            raise PaceError(f"{list_file} line {lineno}: class id {raw} does not occur in {space_file.name}, "
                            "which defines the classes; fix the label or the lists")
        labels.append(index[raw])
    rels = [rel for rel, _, _ in entries]
    candidates = [image_dir] if image_dir is not None else [default_dir]
    folder = _pick_image_folder(root, rels, candidates, explicit=True, listing=list_file)
    paths = [folder / rel for rel in rels]
    _check_files(paths, [f"on line {ln} of {list_file}" for _, _, ln in entries])
    ds = _CropFileDataset(paths, folder, augment=train, aug_seed=seed, classes=[str(c) for c in ordered],
                          labels=labels, **common)
    ds.class_ids = ordered
    return ds


def _read_fgvc_json(path: Path) -> list[tuple[str, int]]:
    if not path.is_file():
        raise PaceError(f"fgvc file {path} not found; [data] root must hold train.json, val.json and test.json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PaceError(f"cannot read fgvc file {path}: {_one_line(exc)}; it must be one JSON object "
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


def _build_fgvc(root: Path, split: str, common: dict, *, image_dir: str | None, seed: int,
                train: bool) -> PaceDataset:
    if split not in FGVC_SPLITS:
        raise _unknown_split("fgvc", split, FGVC_SPLITS)
    files_ = ["train", "val"] if split == "trainval" else [split]
    entries: list[tuple[str, int, Path]] = []
    for name in files_:
        path = root / f"{name}.json"
        entries += [(rel, lab, path) for rel, lab in _read_fgvc_json(path)]
    train_file = root / "train.json"
    train_ids = ([lab for _, lab, f in entries if f == train_file] if "train" in files_
                 else [lab for _, lab in _read_fgvc_json(train_file)])
    # NABirds' ids are not contiguous: the sorted training ids become 0..n-1 for every split.
    ordered, index = _class_ids(train_ids)
    labels = []
    for rel, raw, path in entries:
        if raw not in index:
            raise PaceError(f"fgvc file {path}: class id {raw} of {rel!r} does not occur in {train_file}, "
                            "which defines the classes; fix the id or add training images of that class")
        labels.append(index[raw])
    rels = [rel for rel, _, _ in entries]
    candidates = [image_dir] if image_dir is not None else list(FGVC_IMAGE_DIRS)
    folder = _pick_image_folder(root, rels, candidates, explicit=image_dir is not None, listing=entries[0][2])
    paths = [folder / rel for rel in rels]
    _check_files(paths, [f"in {listing}" for _, _, listing in entries])
    ds = _CropFileDataset(paths, folder, augment=train, aug_seed=seed, classes=[str(c) for c in ordered],
                          labels=labels, **common)
    ds.class_ids = ordered
    return ds


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# ---------------------------------------------------------------- fashion-mnist


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise PaceError(f"Fashion-MNIST file {stem}[.gz] not found in {root}; "
                    "set [data] root to the folder holding the idx files")


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


def _read_idx(path: Path, magic: int) -> np.ndarray:
    st = path.stat()
    return _read_idx_cached(str(path.resolve()), st.st_mtime_ns, st.st_size, magic)


def _build_fashion_mnist(root: Path, split: str, common: dict) -> PaceDataset:
    if split not in FASHION_MNIST_SPLITS:
        raise _unknown_split("fashion-mnist", split, FASHION_MNIST_SPLITS)
    prefix = "t10k" if split == "test" else "train"
    img_file = _find_idx(root, f"{prefix}-images-idx3-ubyte")
    lab_file = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(img_file, 2051)
    labels = _read_idx(lab_file, 2049)
    if len(images) != len(labels):
        raise PaceError(f"{img_file} holds {len(images)} images but {lab_file} holds "
                        f"{len(labels)} labels; the files do not belong together, re-download them")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise PaceError(f"{lab_file} has label {int(labels.max())}, but Fashion-MNIST has 10 "
                        "classes (0-9); the file is corrupt, re-download it")
    # The standard split holds out the last sixth (10,000 of 60,000) for validation;
    # using a fraction keeps train/val disjoint for smaller files too.
    n = len(labels)
    n_val = n // 6
    if split == "train":
        sl = slice(0, n - n_val)
    elif split == "val":
        sl = slice(n - n_val, n)
    else:
        sl = slice(0, n)
    # Copy: the cached array is a read-only view of the file bytes, which torch rejects.
    images_t = torch.from_numpy(images[sl].copy())
    ds = _ArrayDataset(images_t, 255.0, classes=FASHION_MNIST_CLASSES,
                       labels=labels[sl].tolist(), **common)
    ds._root = root
    return ds


# ---------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    with (files("pace_cli") / "assets" / "digits.npz").open("rb") as fh:
        with np.load(io.BytesIO(fh.read())) as npz:
            return npz["images"].copy(), npz["labels"].copy()


@functools.lru_cache(maxsize=1)
def _digits_split_rows() -> dict[str, list[int]]:
    """Fixed stratified split (seed 0, independent of the user's seed): 30/20/50 per class."""
    _, labels = _digits_arrays()
    rng = random.Random(0)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == c).tolist()
        rng.shuffle(rows)
        n_test = round(0.5 * len(rows))
        n_val = round(0.2 * len(rows))
        out["test"] += rows[:n_test]
        out["val"] += rows[n_test:n_test + n_val]
        out["train"] += rows[n_test + n_val:]
    out = {k: sorted(v) for k, v in out.items()}
    out["trainval"] = sorted(out["train"] + out["val"])
    return out


def _build_digits(split: str, common: dict) -> PaceDataset:
    if split not in DIGITS_SPLITS:
        raise _unknown_split("digits", split, DIGITS_SPLITS)
    images, labels = _digits_arrays()
    rows = _digits_split_rows()[split]
    return _ArrayDataset(torch.from_numpy(images[rows]), 16.0,
                         classes=[str(i) for i in range(10)], labels=labels[rows].tolist(), **common)


# ---------------------------------------------------------------- synthetic


def _build_synthetic(split: str, seed: int, n_classes: int, size: int, channels: int,
                     common: dict) -> PaceDataset:
    if int(n_classes) < 1:
        raise PaceError(f"synthetic_classes = {n_classes} must be at least 1")
    if int(size) < 0:
        raise PaceError(f"synthetic_size = {size} must not be negative")
    n_classes, size = int(n_classes), int(size)
    b = _SYNTHETIC_BASE
    # Class means depend on the seed only, so every split shares one learnable task;
    # samples depend on the split name too, so splits differ.
    g_means = torch.Generator().manual_seed(zlib.crc32(f"synthetic-means:{seed}".encode()))
    means = 0.2 + 0.6 * torch.rand(n_classes, channels, b, b, generator=g_means)
    g = torch.Generator().manual_seed(zlib.crc32(f"synthetic:{split}:{seed}".encode()))
    labels = torch.arange(size) % n_classes
    labels = labels[torch.randperm(size, generator=g)]
    noise = 0.1 * torch.randn(size, channels, b, b, generator=g)
    images = (means[labels] + noise).clamp_(0.0, 1.0)
    return _ArrayDataset(images, 1.0, classes=[str(i) for i in range(n_classes)],
                         labels=labels.tolist(), **common)
