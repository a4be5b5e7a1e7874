"""The ``fewshot`` source: NOAH's few-shot lists, ``annotations/<list>`` of ``<image> <class id>`` lines.

``[data] shots`` (required) and ``seed`` pick the k-shot training list
``train_meta.list.num_shot_{shots}.seed_{seed}``, whose sorted class ids define the label space of
every split. Training images are cropped and flipped at random (:class:`CropFileDataset`).
"""

from __future__ import annotations

import typing

from pace_cli.data.datasets import CropFileDataset, PaceDataset
from pace_cli.data.lists import class_ids, pick_image_folder, read_label_list
from pace_cli.data.sources import SourceRequest
from pace_cli.errors import PaceError
from pace_cli.recipe.schema import FewshotLayout

FEWSHOT_LAYOUTS = typing.get_args(FewshotLayout)


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


def build(request: SourceRequest, *, image_dir: str | None = None, fewshot_layout: str = "fgvc") -> PaceDataset:
    """One split; ``request.shots`` picks the k-shot list (unset: the split's own ids are the classes).

    ``image_dir`` is the folder under root the listed paths are relative to (unset: the layout's).
    """
    root, split, shots, seed = request.root, request.split, request.shots, request.seed
    list_name, default_dir = fewshot_list(fewshot_layout, split, shots, seed)
    if split == "train" and shots is None:
        raise PaceError(f"fewshot split 'train' needs [data] shots = k to pick "
                        f"annotations/train_meta.list.num_shot_k.seed_{seed} under {root}")
    list_file = root / "annotations" / list_name
    if not list_file.is_file():
        raise PaceError(f"fewshot list {list_file} not found; check [data] root (it holds annotations/), "
                        "shots and seed, or the split name")
    entries = read_label_list(list_file)
    if not entries:
        raise PaceError(f"fewshot list {list_file} has no images; add lines '<image> <label>' or pick another split")
    # One label space for every split: the sorted class ids of the k-shot training list.
    if shots is not None:
        train_file = root / "annotations" / fewshot_list(fewshot_layout, "train", shots, seed)[0]
        if not train_file.is_file():
            raise PaceError(f"fewshot training list {train_file} not found; it defines the classes of "
                            "every split, check [data] shots and seed")
        space_file = train_file
        space_ids = [lab for _, lab, _ in (entries if train_file == list_file else read_label_list(train_file))]
    else:
        space_file, space_ids = list_file, [lab for _, lab, _ in entries]
    ordered, index = class_ids(space_ids)
    labels = []
    for _, raw, lineno in entries:
        if raw not in index:
            raise PaceError(f"{list_file} line {lineno}: class id {raw} does not occur in {space_file.name}, "
                            "which defines the classes; fix the label or the lists")
        labels.append(index[raw])
    rels = [rel for rel, _, _ in entries]
    candidates = [image_dir] if image_dir is not None else [default_dir]
    folder = pick_image_folder(root, rels, candidates, explicit=True, listing=list_file)
    return CropFileDataset.from_listing(request, folder, rels, labels, ordered,
                                        [f"on line {ln} of {list_file}" for _, _, ln in entries])
