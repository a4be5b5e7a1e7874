"""How a model's input images are read: the evaluation preprocessing a merged or ONNX file records.

``pace merge`` writes it from the adapter's recipe (``preprocessing`` in the merged file's
metadata), ``pace export --format onnx`` copies it into the ONNX file's ``metadata_props``, and
``pace predict`` reads it back, so those files need no recipe. The on-disk form:

    {"image_size": 224, "channels": 3, "mean": [...] | null, "std": [...] | null, "resize": "square"}

``resize`` names how a file becomes an ``image_size`` square: ``square`` (resized to the square
with bicubic filtering, as the ``imagefolder`` and ``vtab1k`` sources read files) or
``shorter_side_center_crop`` (shorter side to ``image_size * 256 / 224``, then the centre square,
as the ``fewshot`` and ``fgvc`` sources evaluate).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pace_cli.errors import PaceError

RESIZE_SQUARE = "square"
RESIZE_CENTER_CROP = "shorter_side_center_crop"
RESIZE_MODES = (RESIZE_SQUARE, RESIZE_CENTER_CROP)
# The sources whose evaluation split is a CropFileDataset (resize the shorter side, crop the centre).
_CENTER_CROP_SOURCES = frozenset({"fewshot", "fgvc"})
METADATA_KEY = "preprocessing"


@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    channels: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str = RESIZE_SQUARE

    def to_metadata(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "channels": self.channels,
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std), "resize": self.resize}

    def to_json(self) -> str:
        return json.dumps(self.to_metadata(), sort_keys=True)

    @classmethod
    def from_recipe(cls, recipe) -> Preprocessing:
        """The preprocessing of the recipe's evaluation split."""
        from pace_cli.builders import image_size

        section = recipe.data
        resize = RESIZE_CENTER_CROP if section.source in _CENTER_CROP_SOURCES else RESIZE_SQUARE
        return cls(image_size=image_size(recipe), channels=section.channels,
                   mean=None if section.mean is None else tuple(float(v) for v in section.mean),
                   std=None if section.std is None else tuple(float(v) for v in section.std), resize=resize)

    @classmethod
    def from_metadata(cls, value: Any, source: str) -> Preprocessing:
        """Read the recorded form (a mapping, or its JSON text); ``source`` names the file in errors."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = None
        damaged = PaceError(f"'{source}' has a malformed '{METADATA_KEY}' metadata entry",
                            remedy="pass --recipe to give the preprocessing")
        if not isinstance(value, Mapping):
            raise damaged
        try:
            size, channels = int(value["image_size"]), int(value["channels"])
            mean, std = (None if value.get(k) is None else tuple(float(v) for v in value[k]) for k in ("mean", "std"))
            resize = str(value.get("resize", RESIZE_SQUARE))
        except (KeyError, TypeError, ValueError):
            raise damaged from None
        if size <= 0 or channels not in (1, 3) or resize not in RESIZE_MODES or (mean is None) != (std is None):
            raise damaged
        if mean is not None and (len(mean) != channels or len(std) != channels or 0.0 in std):
            raise damaged
        return cls(size, channels, mean, std, resize)


def recipe_preprocessing(recipe_text: str, source: str) -> Preprocessing | None:
    """The preprocessing of an adapter's recorded recipe (TOML text); None when it records none, or one
    this pace no longer reads (a key since renamed): the merge goes on, and `predict` then asks for --recipe."""
    if not recipe_text:
        return None
    from pace_cli.recipe import parse_recipe

    try:
        recipe = parse_recipe(recipe_text, source=f"the recipe recorded in {source}")
    except PaceError:
        return None
    return Preprocessing.from_recipe(recipe)
