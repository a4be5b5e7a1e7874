"""Data sets for fine-tuning: image folders, VTAB-1k lists, Fashion-MNIST, sklearn digits, synthetic.

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
import os
import random
import zlib
from importlib.resources import files
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from pace_cli.errors import PaceError

SOURCES = ("imagefolder", "vtab1k", "fashion-mnist", "digits", "synthetic")
FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_SPLITS = ("train", "val", "trainval", "test")
DIGITS_SPLITS = ("train", "val", "trainval", "test")
VTAB1K_SPLITS = ("train800", "val200", "train800val200", "test")
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


# ---------------------------------------------------------------- public API


def build_dataset(source: str, split: str, *, root: str | Path | None = None,
                  image_size: int = 224, channels: int = 3,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  shots: int | None = None, seed: int = 0, synthetic_classes: int = 10,
                  synthetic_size: int = 64, train: bool = False, cache: bool | str = False) -> PaceDataset:
    """Build the data set for one split of one source.

    ``split`` is a split name: a subfolder for ``imagefolder``; ``train800``/``val200``/
    ``train800val200``/``test`` for ``vtab1k``; ``train``/``val``/``trainval``/``test`` for
    ``fashion-mnist`` and ``digits``; any name for ``synthetic`` (each name gives
    different samples). ``shots`` keeps exactly that many samples per class, drawn
    deterministically from ``seed``. ``train`` is accepted for a future augmentation
    and currently ignored.

    For ``imagefolder`` the classes are the sorted subfolders of that split's folder, so
    every split must contain the same class folders for labels to agree across splits;
    callers that care should compare ``classes`` between splits.

    ``cache`` (true, false or "auto", see :func:`cache_wanted`) keeps decoded, resized images of
    file-based sources in memory after their first read, so later epochs skip JPEG decoding.
    """
    del train  # no augmentation yet; kept so callers need not change when it arrives
    if source not in SOURCES:
        raise PaceError(f"unknown data source {source!r}; set [data] source to one of: "
                        + ", ".join(SOURCES))
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

    Only file-based sources decode on access; the others are arrays in memory already. "auto"
    caches a split whose decoded images fit in ``CACHE_AUTO_BYTES`` (VTAB-1k's 1,000 training
    images at 224 px take 144 MiB; 1 GiB holds about 7,100 RGB images at 224 px).
    """
    if cache not in (True, False, "auto"):
        raise PaceError(f"[data] cache = {cache!r}; use true, false or \"auto\"")
    if not isinstance(ds, _FileDataset) or cache is False:
        return False
    return cache is True or ds.cache_bytes() <= CACHE_AUTO_BYTES


def make_loader(dataset: PaceDataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                drop_last: bool = False, num_workers: int | str = 0, pin_memory: bool | None = None,
                persistent_workers: bool | None = None, prefetch_factor: int | None = None) -> DataLoader:
    """Wrap ``dataset`` in a DataLoader whose shuffle order depends only on ``seed``.

    Batches are ``(images [B,C,H,W], labels [B], indices [B])``. The generator keeps
    advancing between epochs, so each epoch gets a new but reproducible order.

    ``num_workers`` may be "auto" (:func:`default_num_workers`). ``pin_memory`` defaults to
    whether CUDA is available (page-locked batches copy to the GPU asynchronously);
    ``persistent_workers`` defaults to true whenever there are workers, so they are not
    re-forked each epoch (which would also throw away per-worker state).
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
        persistent_workers = workers > 0
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    extra = {}
    if workers > 0:
        extra["persistent_workers"] = bool(persistent_workers)
        if prefetch_factor is not None:
            extra["prefetch_factor"] = int(prefetch_factor)
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
