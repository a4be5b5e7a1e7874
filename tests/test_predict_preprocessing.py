"""The preprocessing record merged and ONNX files carry: from a recipe, to metadata and back, damage refused."""
from __future__ import annotations

import pytest
from helpers import tiny_recipe_text

from pace_cli.artifacts import Preprocessing
from pace_cli.errors import PaceError
from pace_cli.recipe import parse_recipe


def test_from_recipe_follows_the_data_section_and_the_source():
    square = Preprocessing.from_recipe(parse_recipe(tiny_recipe_text(data={"image_size": 48, "channels": 1,
                                                                           "mean": [0.2], "std": [0.5]})))
    assert square == Preprocessing(48, 1, (0.2,), (0.5,), "square")
    # unset image_size: the model's img_size; fewshot evaluates with the shorter-side resize and centre crop
    crop = Preprocessing.from_recipe(parse_recipe(tiny_recipe_text(
        data={"source": "fewshot", "root": ".", "shots": 1})))
    assert (crop.image_size, crop.channels, crop.mean, crop.resize) == (32, 3, None, "shorter_side_center_crop")


def test_metadata_round_trip_and_damage():
    record = Preprocessing(32, 3, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    assert Preprocessing.from_metadata(record.to_metadata(), "f") == record
    assert Preprocessing.from_metadata(record.to_json(), "f") == record
    good = record.to_metadata()
    for broken in ("not json", {"channels": 3}, {**good, "channels": 2}, {**good, "resize": "stretch"},
                   {**good, "std": None}, {**good, "mean": [0.5]}, {**good, "std": [0.2, 0.0, 0.2]},
                   {**good, "image_size": -1}):
        with pytest.raises(PaceError, match="malformed 'preprocessing'.*--recipe"):
            Preprocessing.from_metadata(broken, "f")
