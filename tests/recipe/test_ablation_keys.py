"""The ablation keys in recipes: which variant reads which, what is refused, what only warns."""

import pytest
from helpers import tiny_recipe_text

from pace_cli.errors import PaceError
from pace_cli.recipe import ineffective_settings, parse_recipe

RECIPE = tiny_recipe_text(data={"batch_size": 8})


def warnings(*overrides: str) -> list[str]:
    return ineffective_settings(parse_recipe(RECIPE, list(overrides)))


@pytest.mark.parametrize("overrides,inert", [
    (["pace.variant=off", "pace.noise=dropout", "pace.copies=3"], "noise, copies"),
    (["pace.variant=noise_only", "pace.lambda=0.5", "pace.copies=3"], "lambda, copies"),
    (["pace.variant=fast", "pace.copies=4"], "copies"),
    (["pace.variant=pace", "pace.lazy_interval=3"], "lazy_interval"),
])
def test_keys_the_variant_does_not_read_are_warned(overrides, inert):
    notes = warnings(*overrides)
    assert len(notes) == 1 and notes[0].startswith(f"[pace] {inert} set but ignored"), notes


@pytest.mark.parametrize("overrides", [
    ["pace.variant=lazy", "pace.copies=3", "pace.lazy_interval=4", "pace.sigma_profile=increasing"],
    ["pace.variant=noise_only", "pace.noise=additive", "pace.sigma=0.1"],
    ["pace.variant=off", "regularizer.fpa=0.5", "regularizer.gp=0.1", "regularizer.l1=1e-4"],
    ["pace.variant=fast", "pace.perturb=output", "regularizer.sam_rho=0.0"],
])
def test_keys_the_variant_reads_are_not_warned(overrides):
    assert warnings(*overrides) == []


def test_l1_is_inert_for_a_linear_probe():
    notes = warnings("adapter.kind=head", "regularizer.l1=1e-4")
    assert notes == ["[regularizer] l1 set but ignored with [adapter] kind = 'head' (it penalises adapter "
                     "tensors, and a linear probe has none; the head's weights take [optim] weight_decay)"]


def test_perturb_is_inert_with_additive_noise():
    notes = warnings("pace.noise=additive", "pace.perturb=output")
    assert notes == ["[pace] perturb set but ignored with noise = 'additive' (h0 + Δh + ε adds the same noise "
                     "whatever it perturbs)"]


@pytest.mark.parametrize("overrides,named", [
    (["pace.copies=1"], "[pace] copies"),
    (["pace.noise=pink"], "[pace] noise"),
    (["pace.perturb=input"], "[pace] perturb"),
    (["pace.sigma_profile=wavy"], "[pace] sigma_profile"),
    (["regularizer.fpa=-1.0"], "[regularizer] fpa"),
    (["regularizer.l1=-1e-4"], "[regularizer] l1"),
    (["regularizer.gp=-0.1"], "[regularizer] gp"),
    (["regularizer.sam_rho=-0.05"], "[regularizer] sam_rho"),
    (["regularizer.gp=0.1", "regularizer.sam_rho=0.05"], "[regularizer] gp and sam_rho"),
    (["regularizer.sam_rho=0.05", "pace.variant=fast"], "[regularizer] sam_rho"),
    (["regularizer.gp=0.1", "train.precision=fp16"], "[regularizer] gp"),
])
def test_out_of_range_and_conflicting_values_name_the_key(overrides, named):
    with pytest.raises(PaceError) as error:
        parse_recipe(RECIPE, overrides)
    assert named in str(error.value) and "\n" not in str(error.value)
