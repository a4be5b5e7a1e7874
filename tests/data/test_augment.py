"""[augment]: timm's per-sample training transform, keyed by (seed, epoch, row), and the recipe's rules.

References are timm's own create_transform run under generators the test seeds itself, so the
tests check both that the images are timm's and that the key is the documented one.
"""

from __future__ import annotations

import pickle
import random
import zlib

import numpy as np
import pytest
import timm.data
import torch
from fake_data import write_png
from helpers import tiny_recipe_text
from PIL import Image, ImageOps
from typer.testing import CliRunner

from pace_cli.builders import build_dataset as build_from_recipe
from pace_cli.cli import app
from pace_cli.data import SampleAugment, build_dataset, make_loader
from pace_cli.data.augment import posterize_keeping_zero_bits, timm_train_transform
from pace_cli.errors import PaceError
from pace_cli.recipe import parse_recipe

NOAH = {"auto_augment": "rand-m9-mstd0.5-inc1", "interpolation": "bicubic", "re_prob": 0.25, "re_mode": "pixel"}
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def synthetic_train(augment=NOAH, seed=3, **kw):
    return build_dataset("synthetic", "train", image_size=24, mean=MEAN, std=STD, train=True, augment=augment,
                         augment_seed=seed, synthetic_size=12, synthetic_classes=3, **kw)


def reference(image: Image.Image, key: str, size=24, mean=MEAN, std=STD, **options):
    """timm's create_transform on ``image``, every global generator seeded by crc32 of ``key``."""
    transform = timm.data.create_transform(size, is_training=True, mean=tuple(mean), std=tuple(std),
                                           color_jitter=None, **{**NOAH, **options})
    seed = zlib.crc32(key.encode())
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)
    return transform(image)


def as_pil(x: torch.Tensor) -> Image.Image:
    """What an in-memory source hands timm: its [0, 1] image at 8 bits."""
    return Image.fromarray((x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def global_states():
    return random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state()


def test_each_sample_is_timms_transform_under_its_own_key():
    ds = synthetic_train()
    plain = build_dataset("synthetic", "train", image_size=24, mean=MEAN, std=STD, synthetic_size=12,
                          synthetic_classes=3)
    ds.set_epoch(2)
    for i in (0, 5):
        row = ds._rows[i]
        image, label, index = ds[i]
        expected = reference(as_pil(plain._raw(row)), f"augment:3:2:{row}")
        assert torch.equal(image, expected) and (label, index) == (plain.labels[i], i)
    assert image.shape == (3, 24, 24)


def test_draws_depend_on_seed_epoch_and_sample_and_leave_the_global_generators_alone():
    ds = synthetic_train()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    before = global_states()
    first = ds[4][0]
    after = global_states()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and torch.equal(before[2], after[2])
    random.seed(7), np.random.seed(7), torch.manual_seed(7)  # whatever the run drew before
    assert torch.equal(ds[4][0], first)
    ds.set_epoch(0)  # reads before any set_epoch count as epoch 0
    assert torch.equal(ds[4][0], first)
    ds.set_epoch(1)
    assert not torch.equal(ds[4][0], first)
    other_seed = synthetic_train(seed=4)
    assert not torch.equal(other_seed[4][0], first)


def test_same_batches_for_any_worker_count_and_workers_do_not_persist():
    ds = synthetic_train()
    ds.set_epoch(1)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[2][0], ds[2][0])
    loaders = [make_loader(ds, 4, shuffle=True, seed=5, num_workers=w) for w in (0, 2)]
    assert not loaders[1].persistent_workers  # a worker kept from epoch 1 would never see set_epoch(2)
    zero, two = ([batch[0] for batch in loader] for loader in loaders)
    assert len(zero) == 3 and all(torch.equal(a, b) for a, b in zip(zero, two))


def test_file_sources_start_from_the_image_as_decoded(tmp_path):
    """fewshot's timm images come from the file at its own size, not from the 256/224 resize and crop."""
    (tmp_path / "annotations").mkdir()
    lines = []
    for k, label in enumerate([4, 4, 9, 9]):
        write_png(tmp_path / "images" / f"{k}.png", seed=k, size=(40, 30))
        lines.append(f"{k}.png {label}\n")
    (tmp_path / "annotations" / "train_meta.list.num_shot_2.seed_0").write_text("".join(lines))
    ds = build_dataset("fewshot", "train", root=tmp_path, list_shots=2, image_size=16, train=True, augment=NOAH,
                       augment_seed=0, mean=MEAN, std=STD)
    ds.set_epoch(5)
    with Image.open(tmp_path / "images" / "2.png") as img:
        expected = reference(img.convert("RGB"), "augment:0:5:2", size=16)
    assert torch.equal(ds[2][0], expected)


def test_unset_normalisation_gives_images_in_0_1_and_grey_sources_work():
    ds = build_dataset("digits", "train", image_size=16, channels=3, train=True, augment={"hflip": 0.0},
                       augment_seed=0)
    grey = build_dataset("digits", "train", image_size=16, channels=1, train=True, augment={"re_prob": 0.5},
                         augment_seed=0, mean=[0.5], std=[0.5])
    image = ds[0][0]
    assert image.shape == (3, 16, 16) and 0 <= image.min() and image.max() <= 1
    assert grey[0][0].shape == (1, 16, 16)


def test_posterize_to_zero_bits_turns_the_image_black_instead_of_stopping_the_run():
    image = Image.new("RGB", (16, 16), (120, 60, 200))
    with pytest.raises(ValueError, match="bits must be"):  # plain timm on today's Pillow, this sample's key
        reference(image, "augment:0:0:319")
    assert SampleAugment(24, 3, MEAN, STD, seed=0, **NOAH)(image, epoch=0, row=319).shape == (3, 24, 24)
    assert posterize_keeping_zero_bits(image, 0).getextrema() == ((0, 0),) * 3
    assert posterize_keeping_zero_bits(image, 3).tobytes() == ImageOps.posterize(image, 3).tobytes()


def test_only_training_splits_take_it_and_they_are_never_cached(tmp_path):
    with pytest.raises(PaceError, match="training splits only"):
        build_dataset("synthetic", "val", augment=NOAH)
    write_png(tmp_path / "train" / "a" / "0.png", seed=0)
    ds = build_dataset("imagefolder", "train", root=tmp_path, train=True, augment={}, cache=True)
    assert not ds.cache_enabled and ds.train_augment is not None


@pytest.mark.parametrize("policy", ["rand-m9-nope2", "randaug", "bogus"])
def test_a_string_timm_rejects_is_one_line_naming_the_key_when_the_data_is_built(policy):
    recipe = parse_recipe(tiny_recipe_text(augment={"transform": "timm", "auto_augment": policy}))
    with pytest.raises(PaceError) as error:
        build_from_recipe(recipe, "train", train=True)
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"[augment] auto_augment = {policy!r}: timm rejects it")
    build_from_recipe(recipe, "val")  # evaluation splits do not augment


def test_pace_check_lists_the_rejected_string_and_fails(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(tiny_recipe_text(augment={"transform": "timm", "auto_augment": "rand-m9-nope2"}))
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code != 0
    named = [line for line in result.output.splitlines() if "[augment] auto_augment = 'rand-m9-nope2'" in line]
    assert len(named) == 1, result.output
    good = CliRunner().invoke(app, ["check", str(path), "--set", "augment.auto_augment=rand-m9-mstd0.5-inc1"])
    assert good.exit_code == 0, good.output


# ---------------------------------------------------------------- the recipe's rules


def recipe_error(**augment) -> str:
    with pytest.raises(PaceError) as error:
        parse_recipe(tiny_recipe_text(augment=augment))
    return str(error.value)


@pytest.mark.parametrize("key,value", [("auto_augment", "rand-m9"), ("color_jitter", 0.4), ("scale", [0.5, 1.0]),
                                       ("hflip", 0.0), ("interpolation", "bicubic"), ("re_prob", 0.25)])
def test_transform_keys_need_transform_timm(key, value):
    assert f"[augment]: {key} is read only with transform = 'timm'" in recipe_error(**{key: value})


@pytest.mark.parametrize("augment,named", [
    ({"transform": "timm", "re_mode": "pixel"}, "re_mode does nothing with re_prob = 0"),
    ({"transform": "timm", "re_count": 2}, "re_count does nothing with re_prob = 0"),
    ({"switch_prob": 0.3, "mixup_alpha": 0.8}, "switch_prob chooses between mixup and CutMix"),
    ({"mix_prob": 0.5, "label_smoothing": 0.1}, "mix_prob needs mixup_alpha > 0 or cutmix_alpha > 0"),
    ({"transform": "timm", "scale": [0.9, 0.2]}, "[augment] scale = [0.9, 0.2]: must be [low, high]"),
    ({"transform": "timm", "scale": [0.5, 1.5]}, "keep high <= 1"),
    ({"label_smoothing": 1.0}, "[augment] label_smoothing = 1.0"),
])
def test_keys_that_would_do_nothing_or_cannot_work_are_errors(augment, named):
    assert named in recipe_error(**augment)


def test_an_odd_batch_cannot_be_paired():
    with pytest.raises(PaceError, match=r"batch_size = 7 must be even"):
        parse_recipe(tiny_recipe_text(data={"batch_size": 7}, augment={"cutmix_alpha": 1.0}))
    parse_recipe(tiny_recipe_text(data={"batch_size": 7}, augment={"label_smoothing": 0.1}))  # nothing to pair


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "original", "3a", "augmix-m5-w3"])
def test_colour_jitter_is_accepted_exactly_where_timm_applies_it(policy):
    """The recipe's rule restates timm's; timm's built transform is the judge."""
    built = timm.data.create_transform(32, is_training=True, color_jitter=0.4, auto_augment=policy)
    timm_applies = any(type(t).__name__ == "ColorJitter" for t in built.transforms)
    text = tiny_recipe_text(augment={"transform": "timm", "auto_augment": policy, "color_jitter": 0.4})
    if timm_applies:
        assert parse_recipe(text).augment.color_jitter == 0.4
    else:
        with pytest.raises(PaceError, match="color_jitter does nothing with auto_augment"):
            parse_recipe(text)


def test_absent_section_changes_nothing_and_the_saved_recipe_loads_again():
    from pace_cli.recipe import recipe_to_toml

    plain = parse_recipe(tiny_recipe_text())
    assert plain.augment.timm_transform_options() is None and plain.augment.batch_mix_options() is None
    assert build_from_recipe(plain, "train", train=True).train_augment is None
    noah = parse_recipe(tiny_recipe_text(augment={"transform": "timm", **NOAH, "mixup_alpha": 0.8,
                                                  "cutmix_alpha": 1.0, "label_smoothing": 0.1}))
    assert parse_recipe(recipe_to_toml(noah)) == noah and parse_recipe(recipe_to_toml(plain)) == plain


def test_the_domain_adaptation_recipe_trains_with_noahs_defaults():
    """NOAH's supernet_train_prompt.py argparse defaults (its ImageNet scripts pass no augmentation flags)."""
    from pathlib import Path

    from pace_cli.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "domain-adaptation" / "imagenet.toml")
    assert recipe.augment.timm_transform_options() == {
        "auto_augment": "rand-m9-mstd0.5-inc1", "color_jitter": 0.0, "scale": [0.08, 1.0], "ratio": [3 / 4, 4 / 3],
        "hflip": 0.5, "interpolation": "bicubic", "re_prob": 0.25, "re_mode": "pixel", "re_count": 1}
    assert recipe.augment.batch_mix_options() == {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mix_prob": 1.0,
                                                  "switch_prob": 0.5, "label_smoothing": 0.1}


@pytest.mark.parametrize("policy,ignored", [("rand-m9-bogus", "'bogus'"), ("rand-mX-n2", "'mX'"),
                                            ("rand-m9-mstd", "'mstd'")])
def test_a_randaugment_section_timm_would_skip_silently_is_refused(policy, ignored):
    timm.data.create_transform(32, is_training=True, auto_augment=policy)  # timm takes it without a word
    with pytest.raises(PaceError) as caught:
        timm_train_transform(32, [0.5] * 3, [0.5] * 3, auto_augment=policy)
    assert str(caught.value).startswith(f"[augment] auto_augment = {policy!r}: timm would silently ignore {ignored}")
