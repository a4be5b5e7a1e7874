"""PACE under bf16 autocast: the noise is drawn and applied in float32, the head runs in float32,
and the consistency term stays close to its float32 value (issue 18, item 1)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_vit
from torch import nn

from pace_cli.adapters import AdaptedLinear, AdapterConfig, adapted_layers, draw_noise, inject_adapters
from pace_cli.distributed import SampleLayout
from pace_cli.evaluation import evaluate
from pace_cli.recipe import load_recipe
from pace_cli.regularizer import PaceConfig, PaceRegularizer, PairState, float32_forward

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_noise_for_a_half_precision_layer_is_a_float32_draw(half):
    sigma, shape = 0.01, (64, 48)
    torch.manual_seed(3)
    z = draw_noise(*shape, sigma, dtype=half)
    torch.manual_seed(3)
    expected = torch.randn(shape, dtype=torch.float32) * sigma + 1
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-7)
    rounded = z.to(half).float()
    assert (rounded != z).float().mean() > 0.99  # a half-precision draw would have lost these digits
    # 3072 draws: bf16 keeps about 30 distinct values of 1 + 0.01 N(0, 1), fp16 about 100
    assert z.unique().numel() > 3000 and rounded.unique().numel() < 120


def test_noise_from_the_step_generator_is_float32_under_a_half_precision_layer():
    def draw(dtype):
        state = PairState()
        state.layout = SampleLayout.for_step(torch.Generator(), seed=1, step=7, global_size=6, offset=2, local_size=2)
        return draw_noise(2, 16, 0.01, 2, dtype=dtype, batch=state)

    assert draw(torch.bfloat16).dtype == torch.float32
    assert torch.equal(draw(torch.bfloat16), draw(torch.float32))  # the same keyed draw as an fp32 run


def test_a_float64_layer_keeps_float64_noise():
    torch.manual_seed(0)
    z = draw_noise(3, 4, 0.5, dtype=torch.float64)
    torch.manual_seed(0)
    assert z.dtype == torch.float64 and torch.equal(z, torch.randn(3, 4, dtype=torch.float64) * 0.5 + 1)


def _layer(kind, rank=16, zero_base=False, zero_bias=False, d_in=64, d_out=16):
    torch.manual_seed(0)
    layer = AdaptedLinear(nn.Linear(d_in, d_out), kind, rank=rank)
    with torch.no_grad():
        for tensor in layer.adapter_tensors().values():
            tensor.normal_()
        if zero_base:
            layer.weight.zero_()
        if zero_base or zero_bias:
            layer.bias.zero_()
    return layer.train()


def test_reference_path_multiplies_by_float32_noise_and_rounds_once():
    """vpt_add (ΔW = 0) takes the two-term path h0 + z ⊙ Δh: under autocast the sum is taken in
    float32 with the float32 draw and rounded once to the layer's bf16 output."""
    layer = _layer("vpt_add")
    layer.noise_sigma = 0.01
    x = torch.randn(4, 5, 64).bfloat16()
    with torch.no_grad(), torch.autocast(**BF16):
        torch.manual_seed(5)
        out = layer(x)
        base = F.linear(x, layer.weight, layer.bias)
        _, shift = layer.delta()
    torch.manual_seed(5)
    z = torch.randn(4, 16) * 0.01 + 1
    expected = (base.float() + z[:, None, :] * shift.float()).bfloat16()
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    twice_rounded = base + z.bfloat16()[:, None, :] * shift.bfloat16()
    assert not torch.equal(out, twice_rounded)


# The noise each path applied, recovered by least squares over a sample's 256 tokens from the noisy,
# the noise-free and the adapter-free bf16 outputs, against the float32 draw. Measured mean error
# (base bias zero, and for lora_add the base weight too): 4e-4 to 9e-4 with the float32 draw,
# 1.7e-3 to 1.9e-3 when the draw was rounded to bf16 first (that rounding alone is 1.6e-3 on
# average at sigma = 0.01).
@pytest.mark.parametrize("kind,factored,per_sample", [
    ("lora_add", True, True),  # factored B (A x)
    ("lora_add", False, True),  # two-term reference with thin matmuls
    ("lora_mul", True, True),  # fused per-sample weights
    ("lora_mul", True, False),  # two-term reference with a full ΔW
    ("lora_mul+vpt_add", True, True),
])
def test_every_training_path_applies_the_float32_draw_under_autocast(kind, factored, per_sample):
    sigma, samples, tokens = 0.01, 8, 256
    layer = _layer(kind, zero_base=kind == "lora_add", zero_bias=True)
    layer.factored_lora, layer.per_sample_weights = factored, per_sample
    x = torch.randn(samples, tokens, 64).bfloat16()
    with torch.no_grad(), torch.autocast(**BF16):
        layer.noise_sigma = 0.0
        clean = layer(x).double()
        layer.adapter_enabled = False
        base = layer(x).double()
        layer.adapter_enabled, layer.noise_sigma = True, sigma
        torch.manual_seed(5)
        noisy = layer(x)
    torch.manual_seed(5)
    z = (torch.randn(samples, 16) * sigma + 1).double()
    delta = clean - base
    recovered = ((noisy.double() - base) * delta).sum(1) / (delta * delta).sum(1)
    assert noisy.dtype == torch.bfloat16
    assert (recovered - z).abs().mean() < 1.2e-3


@pytest.mark.parametrize("kind,per_sample", [("lora_add", True), ("lora_mul", True), ("lora_mul", False)])
def test_backward_under_autocast_matches_float32(kind, per_sample):
    layer = _layer(kind, rank=4)
    layer.per_sample_weights = per_sample
    layer.noise_sigma = 0.5
    x = torch.randn(4, 40, 64)
    grads = {}
    for name, enabled in (("fp32", False), ("bf16", True)):
        layer.zero_grad()
        torch.manual_seed(9)
        with torch.autocast(**BF16, enabled=enabled):
            out = layer(x)
        out.float().pow(2).sum().backward()
        grads[name] = {n: t.grad.clone() for n, t in layer.adapter_tensors().items()}
    for name, reference in grads["fp32"].items():
        got = grads["bf16"][name]
        assert got.dtype == torch.float32
        assert (got - reference).norm() / reference.norm() < 2e-2, name


def _adapted_vit(depth=2, num_classes=10, adapter_std=0.1, seed=0):
    torch.manual_seed(seed)
    model = tiny_vit(depth=depth, num_classes=num_classes)
    inject_adapters(model, AdapterConfig(kind="lora_mul+vpt_add", rank=4), num_classes=num_classes)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            for name, tensor in layer.adapter_tensors().items():
                if name in ("lora_B", "prompt_B"):
                    tensor.normal_(0, adapter_std)
    return model


def test_head_runs_in_float32_under_autocast_and_is_given_back():
    model = _adapted_vit()
    keys = list(model.state_dict())
    regularizer = PaceRegularizer(model, PaceConfig(variant="pace", sigma=1.0))
    model.eval()
    features = torch.randn(6, 32).bfloat16()
    with torch.no_grad(), torch.autocast(**BF16):
        out = model.head(features)
        logits = model(torch.randn(2, 3, 32, 32))
    expected = (features.double() @ model.head.weight.double().T + model.head.bias.double()).float()
    assert out.dtype == torch.float32 and logits.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert list(model.state_dict()) == keys and isinstance(model.head, nn.Linear)
    regularizer.remove()
    with torch.no_grad(), torch.autocast(**BF16):
        assert model.head(features).dtype == torch.bfloat16


def test_an_inner_float32_head_does_not_undo_the_outer_one():
    head = nn.Linear(4, 3)
    outer = float32_forward(head)
    float32_forward(head).remove()
    with torch.autocast(**BF16):
        assert head(torch.randn(2, 4)).dtype == torch.float32
    outer.remove()
    with torch.autocast(**BF16):
        assert head(torch.randn(2, 4)).dtype == torch.bfloat16


def test_evaluation_under_autocast_runs_the_head_in_float32():
    model = _adapted_vit()
    seen = []
    model.head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), torch.arange(4))]
    evaluate(model, batches, class_names=[str(i) for i in range(10)], split="val", autocast_dtype=torch.bfloat16)
    assert seen == [torch.float32]
    with torch.no_grad(), torch.autocast(**BF16):
        model(torch.randn(1, 3, 32, 32))
    assert seen[-1] == torch.bfloat16  # evaluation gave the head back as it was



def test_a_batch_that_fails_during_evaluation_leaves_the_head_and_mode_as_they_were():
    model = _adapted_vit()
    model.train()

    def batches():
        yield torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), torch.arange(4)
        raise OSError("unreadable image")

    with pytest.raises(OSError):
        evaluate(model, batches(), class_names=[str(i) for i in range(10)], split="val",
                 autocast_dtype=torch.bfloat16)
    assert model.training
    with torch.no_grad(), torch.autocast(**BF16):
        assert model.head(torch.randn(2, model.head.in_features)).dtype == torch.bfloat16

def _consistency(regularizer, images, labels, step, bf16):
    with torch.no_grad(), torch.autocast(**BF16, enabled=bf16):
        return regularizer.loss(images, labels, step=step).consistency.item()


def test_consistency_under_bf16_is_within_half_a_percent_of_float32_at_sigma_1():
    """Measured here (3 models x 3 batches of 16): at most 0.36% off, 0.14% on average; 0.82% at
    most with the noise drawn in bf16 and a bf16 head. Smaller sigmas and a wider toy: see
    benchmarks/bf16_consistency.py and the README's "Precision" section."""
    errors = []
    for seed in range(3):
        model = _adapted_vit(depth=3, seed=seed)
        regularizer = PaceRegularizer(model, PaceConfig(variant="pace", sigma=1.0, noise_free_blocks=1), seed=seed)
        model.train()
        for step in range(3):
            data = torch.Generator().manual_seed(100 * seed + step)
            images, labels = torch.randn(16, 3, 32, 32, generator=data), torch.randint(0, 10, (16,), generator=data)
            reference = _consistency(regularizer, images, labels, step, bf16=False)
            errors.append(abs(_consistency(regularizer, images, labels, step, bf16=True) - reference) / reference)
    assert max(errors) < 5e-3


PAPER_RECIPES = sorted(p for group in ("vtab1k", "fewshot", "fgvc", "domain-adaptation")
                       for p in (Path(__file__).resolve().parents[2] / "recipes" / group).glob("*.toml"))


def test_paper_recipes_train_in_float32_as_the_authors_did():
    """bf16 misses the consistency term by tens of percent at the schedule's small sigmas (README, Precision)."""
    assert len(PAPER_RECIPES) >= 30  # 19 VTAB-1K, 5 few-shot, 5 FGVC, 1 domain adaptation, and any added since
    assert [p.name for p in PAPER_RECIPES if load_recipe(p).train.precision != "fp32"] == []
