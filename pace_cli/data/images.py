"""Unlabelled image files for `pace predict`: finding them, and reading them as an evaluation split.

:func:`image_file_dataset` is the one place a split of image files is made: the ``imagefolder``
source builds its splits with it (its evaluation splits are exactly this), and `pace predict` reads its images through it,
so a file gives the model the same tensor either way (decode, resize, grey to three channels,
normalise). :class:`PredictImages` wraps it so that a file that cannot be read becomes a row with
its one-line reason instead of ending the run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from pace_cli.data.datasets import CropFileDataset, FileDataset
from pace_cli.data.transforms import Transform
from pace_cli.errors import PaceError, one_line

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def images_under(folder: Path) -> list[Path]:
    """Every image file under ``folder``, walked recursively in sorted order, hidden entries skipped."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / name for name in sorted(filenames) if is_image_name(name))
    return found


def image_file_dataset(paths: list[Path], root: Path, transform: Transform, *, resize: str = "square",
                      classes: Sequence[str] = (), labels: Sequence[int] | None = None, source: str = "imagefolder",
                      split: str = "images") -> FileDataset:
    """An evaluation split of image files: ``square`` (bicubic to the transform's square) or
    ``shorter_side_center_crop`` (the few-shot and FGVC evaluation crop)."""
    labels = [0] * len(paths) if labels is None else list(labels)
    common = dict(source=source, split=split, classes=list(classes), labels=labels, transform=transform)
    if resize == "square":
        return FileDataset(paths, root, **common)
    if resize == "shorter_side_center_crop":
        return CropFileDataset(paths, root, augment=False, **common)
    raise PaceError(f"resize {resize!r} is not one pace knows; use 'square' or 'shorter_side_center_crop'")


def collect_image_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """The images named by ``inputs``: files (kept whatever their extension, so a non-image is
    reported, not skipped), folders (walked recursively, image extensions only) and ``@list.txt``
    files (one path a line, relative to the list file's folder; blank and ``#`` lines skipped)."""
    paths: list[Path] = []
    for item in inputs:
        text = str(item)
        if text.startswith("@"):
            paths.extend(_listed(Path(text[1:])))
            continue
        path = Path(text)
        if path.is_dir():
            paths.extend(images_under(path))
        elif path.exists():
            paths.append(path)
        else:
            raise PaceError(f"image '{path}' not found", remedy="check the path (folders are walked recursively)")
    if not paths:
        raise PaceError("no images found in " + ", ".join(map(str, inputs)),
                        remedy=f"give image files or folders holding {', '.join(sorted(IMAGE_EXTENSIONS))} files")
    return paths


def _listed(list_file: Path) -> list[Path]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PaceError(f"cannot read list file '{list_file}': {one_line(exc)}", remedy="check the path") from None
    folder = list_file.parent
    return [folder / line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


class PredictImages(Dataset):
    """``(image, readable, position, reason)`` per file; an unreadable file gives a zero image and its reason."""

    def __init__(self, dataset: FileDataset):
        self.dataset = dataset
        size, channels = dataset._transform.image_size, dataset._transform.channels
        self._blank = torch.zeros(channels, size, size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            image, _, _ = self.dataset[i]
        except PaceError as error:
            return self._blank, False, i, error.what
        return image, True, i, ""
