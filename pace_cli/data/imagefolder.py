"""The ``imagefolder`` source: ``root/<split>/<class>/<image>``, classes are the sorted folder names.

Every split must hold the same class folders for labels to agree across splits; callers that
care compare ``classes`` between splits (``pace check`` does).
"""

from __future__ import annotations

from pathlib import Path

from pace_cli.data.datasets import PaceDataset
from pace_cli.data.images import IMAGE_EXTENSIONS, image_file_dataset, images_under
from pace_cli.data.sources import SourceRequest
from pace_cli.errors import PaceError

__all__ = ["IMAGE_EXTENSIONS", "build"]


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
        found = images_under(split_dir / name)
        paths.extend(found)
        labels.extend([label] * len(found))
    # `pace predict` reads its files through the same function, so both give the model the same tensors.
    return image_file_dataset(paths, split_dir, request.transform, classes=classes, labels=labels,
                              source=request.source, split=request.split)


def _visible_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
