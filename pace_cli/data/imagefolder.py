"""The ``imagefolder`` source: ``root/<split>/<class>/<image>``, classes are the sorted folder names.

Every split must hold the same class folders for labels to agree across splits; callers that
care compare ``classes`` between splits (``pace check`` does).
"""

from __future__ import annotations

import os
from pathlib import Path

from pace_cli.data.datasets import FileDataset, PaceDataset
from pace_cli.data.sources import SourceRequest
from pace_cli.errors import PaceError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)


def build(request: SourceRequest) -> PaceDataset:
    root, split = request.root, request.split
    split_dir = root / split
    if not split_dir.is_dir():
        present = _visible_folders(root)
        hint = ", ".join(present) if present else "none"
        raise PaceError(f"split folder {split_dir} not found (folders in root: {hint}); "
                        "create it or pick an existing split name")
    classes = _visible_folders(split_dir)
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
    return FileDataset(paths, split_dir, classes=classes, labels=labels, **request.common())


def _visible_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
