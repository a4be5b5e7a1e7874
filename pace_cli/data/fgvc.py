"""The ``fgvc`` source: VPT's FGVC sets, ``train.json``/``val.json``/``test.json`` mapping images to class ids.

The sorted training ids become classes 0..n-1 for every split (NABirds' ids are not contiguous);
``trainval`` reads train.json and val.json together. Training images are cropped and flipped at
random (:class:`CropFileDataset`).
"""

from __future__ import annotations

from pathlib import Path

from pace_cli.data.datasets import CropFileDataset, PaceDataset
from pace_cli.data.lists import class_ids, pick_image_folder, read_fgvc_json
from pace_cli.data.sources import SourceRequest
from pace_cli.errors import PaceError

# Image folders tried, in order, when an fgvc data set's [data] image_dir is unset (VPT's sets
# differ: CUB and NABirds use images/, Stanford Dogs Images/, Cars and Flowers the root itself).
FGVC_IMAGE_DIRS = ("images", "Images", ".")


def build(request: SourceRequest, *, image_dir: str | None = None) -> PaceDataset:
    """One split; ``image_dir`` is the folder under root the listed paths are relative to."""
    root, split = request.root, request.split
    files = ["train", "val"] if split == "trainval" else [split]
    entries: list[tuple[str, int, Path]] = []
    for name in files:
        path = root / f"{name}.json"
        entries += [(rel, lab, path) for rel, lab in read_fgvc_json(path)]
    train_file = root / "train.json"
    train_ids = ([lab for _, lab, f in entries if f == train_file] if "train" in files
                 else [lab for _, lab in read_fgvc_json(train_file)])
    ordered, index = class_ids(train_ids)
    labels = []
    for rel, raw, path in entries:
        if raw not in index:
            raise PaceError(f"fgvc file {path}: class id {raw} of {rel!r} does not occur in {train_file}, "
                            "which defines the classes; fix the id or add training images of that class")
        labels.append(index[raw])
    rels = [rel for rel, _, _ in entries]
    candidates = [image_dir] if image_dir is not None else list(FGVC_IMAGE_DIRS)
    folder = pick_image_folder(root, rels, candidates, explicit=image_dir is not None, listing=entries[0][2])
    return CropFileDataset.from_listing(request, folder, rels, labels, ordered,
                                        [f"in {listing}" for _, _, listing in entries])
