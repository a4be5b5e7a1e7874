"""The data set classes every source builds: labelled images addressed by position.

Every data set yields ``(image, label, index)`` where ``image`` is a float tensor
``[channels, image_size, image_size]`` and ``index`` is the sample's position in the data set
(the ``fast`` PACE variant keys its per-sample memory on it). A training split given a
:class:`~pace_cli.data.augment.SampleAugment` (``[augment] transform = "timm"``) yields timm's
augmented image of the sample as decoded (files: before any resize; in-memory sources: at
8 bits), drawn from ``(seed, epoch, row)``. Images that cannot be decoded
raise :class:`~pace_cli.errors.PaceError` with a one-line message naming the file; raw
``OSError``/PIL errors never escape.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pace_cli.data.lists import check_listed_files
from pace_cli.data.transforms import Transform
from pace_cli.errors import PaceError

if TYPE_CHECKING:
    from pace_cli.data.augment import SampleAugment
    from pace_cli.data.sources import SourceRequest

# Crops follow the common Resize(256) -> crop(224) recipe, scaled to image_size.
RESIZE_RATIO = 256 / 224


class PaceDataset(Dataset):
    """Base class: labelled images addressed by position.

    Subclasses implement ``_raw(row)`` (the undecorated image of an underlying row) and
    may override ``_sample_key(row)`` (a stable sort key used before k-shot sampling).
    ``_rows`` maps positions to underlying rows so k-shot subsets need no copying.
    """

    cache_enabled = False  # only file-based sets decode on access and can cache (FileDataset)

    def __init__(self, *, source: str, split: str, classes: list[str], labels: list[int],
                 transform: Transform):
        self.source = source
        self.split = split
        self.classes = list(classes)
        self.labels = [int(v) for v in labels]
        self._rows = list(range(len(self.labels)))
        self._transform = transform
        self.train_augment: SampleAugment | None = None
        self.epoch: int | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int):
        n = len(self._rows)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        row = self._rows[i]
        if self.train_augment is not None:
            # keyed even before set_epoch (as epoch 0), so no read ever draws from the global generators
            return self.train_augment(self._pil_image(row), epoch=self.epoch or 0, row=row), self.labels[i], i
        return self._transform(self._raw(row)), self.labels[i], i

    def set_epoch(self, epoch: int) -> None:
        """The epoch the coming reads belong to: random training draws are keyed by it."""
        self.epoch = int(epoch)

    @property
    def keyed_by_epoch(self) -> bool:
        """Whether reads depend on :meth:`set_epoch` (so DataLoader workers must not outlive an epoch)."""
        return self.train_augment is not None

    def _pil_mode(self) -> str:
        return "L" if self._transform.channels == 1 else "RGB"

    def _pil_image(self, row: int):
        """The undecorated image of ``row`` as a PIL image (8 bits), what timm's transforms take."""
        from PIL import Image

        x = self._raw(row).clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)
        array = x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).contiguous().numpy()
        return Image.fromarray(array).convert(self._pil_mode())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(source={self.source!r}, split={self.split!r}, "
                f"samples={len(self)}, classes={len(self.classes)})")

    def _raw(self, row: int) -> torch.Tensor:
        raise NotImplementedError

    def _unreadable(self, path: Path, exc: Exception) -> PaceError:
        return PaceError(f"{type(exc).__name__}: {exc}", remedy="replace or delete the file",
                         where=f"cannot read image {path} ({self.source} split '{self.split}')")

    def _sample_key(self, row: int):
        return row

    def _keep(self, positions: Sequence[int]) -> None:
        self._rows = [self._rows[p] for p in positions]
        self.labels = [self.labels[p] for p in positions]


class ArrayDataset(PaceDataset):
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


class FileDataset(PaceDataset):
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

    def _pil_image(self, row: int):
        """The image of ``row`` as decoded, at its own size."""
        from PIL import Image

        path = self._paths[row]
        try:
            with Image.open(path) as img:
                return img.convert(self._pil_mode())  # a loaded copy, so the file can close
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise self._unreadable(path, exc) from exc

    def _decode(self, row: int) -> torch.Tensor:
        """The image of ``row`` as uint8 [C, S, S], decoded and resized to the transform's size."""
        from PIL import Image

        path = self._paths[row]
        size = self._transform.image_size
        mode = self._pil_mode()
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                if img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.BICUBIC)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise self._unreadable(path, exc) from exc
        t = torch.from_numpy(arr.copy())
        return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


class CropFileDataset(FileDataset):
    """Images decoded with PIL and cropped like the few-shot and FGVC literature.

    Eval: shorter side resized to ``round(image_size * 256 / 224)``, then the centre
    ``image_size`` square. Train (``augment``): the same resize, a random square crop and a
    horizontal flip with probability 1/2.

    Where the randomness comes from: by default torch's global RNG of the process that
    loads the sample. In the main process that RNG is seeded by the training run; DataLoader
    workers get ``base_seed + worker_id`` from the loader's (seeded) generator, so runs
    repeat for a fixed ``num_workers``. After ``set_epoch(e)`` every crop comes instead
    from a generator seeded by ``(aug_seed, e, row)``: the same crops whatever the number
    of workers or processes (what a distributed loop wants). With a ``train_augment`` timm's
    transform replaces the crop and flip, starting from the image as decoded.
    """

    # Its decoded, resized images keep their aspect ratio (sizes differ) and the crop after them is
    # random, so the fixed-size decoded-image cache of FileDataset does not apply (yet).
    cacheable = False

    def __init__(self, paths: list[Path], root: Path, *, augment: bool, aug_seed: int = 0, **kwargs):
        super().__init__(paths, root, **kwargs)
        self.augment = bool(augment)
        self.aug_seed = int(aug_seed)
        self.class_ids: list[int] = []  # raw id of each class, in class order (set by from_listing)

    @classmethod
    def from_listing(cls, request: SourceRequest, folder: Path, rels: Sequence[str], labels: list[int],
                     class_ids: Sequence[int], where: Sequence[str]) -> CropFileDataset:
        """The listed images under ``folder``, each of which must exist (``where`` says where it was listed).

        ``class_ids`` are the raw ids of the classes in class order, named after them.
        """
        paths = [folder / rel for rel in rels]
        check_listed_files(paths, where)
        ds = cls(paths, folder, augment=request.train, aug_seed=request.seed, classes=[str(c) for c in class_ids],
                 labels=labels, **request.common())
        ds.class_ids = list(class_ids)
        return ds

    @property
    def keyed_by_epoch(self) -> bool:
        return self.augment or super().keyed_by_epoch

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
        mode = self._pil_mode()
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
            raise self._unreadable(path, exc) from exc
        t = torch.from_numpy(arr.copy())
        t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
        return t.float().div_(255.0)
