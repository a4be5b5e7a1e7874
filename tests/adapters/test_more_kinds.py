"""The kinds lora_add+vpt_add, bitfit, ssf and head: ΔW, Δb, noisy training forward and merge
against float64 references written here from the formulas (pace-method.md §1, the issue's list)."""

import numpy as np
import pytest
import torch
from helpers import tiny_vit
from torch import nn

from pace_cli.adapters import (
    AdaptedLinear, AdapterConfig, adapter_delta, adapter_state_dict, inject_adapters, kind_spec, merge_state_dict,
)
from pace_cli.errors import PaceError
from pace_cli.regularizer import PaceConfig, PaceRegularizer

NEW_KINDS = ("lora_add+vpt_add", "bitfit", "ssf")
D_IN, D_OUT, RANK = 6, 5, 3


def random_tensors(kind: str, has_bias: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    spec = kind_spec(kind)
    shapes = spec.shapes(D_IN, D_OUT, RANK)
    return {name: rng.normal(size=shapes[name]) for name in spec.tensor_names(has_bias)}


def reference_delta(kind: str, w0: np.ndarray, b0: np.ndarray | None, t: dict[str, np.ndarray]):
    """(ΔW, Δb) from the formulas, with explicit loops where the library uses broadcasting."""
    if kind == "lora_add+vpt_add":
        prompt = t["prompt_B"] @ t["prompt_A"][:, 0]  # p [d_in]
        return t["lora_B"] @ t["lora_A"], t["delta_bias"] + w0 @ prompt
    if kind == "bitfit":
        return np.zeros_like(w0), t["delta_bias"]
    if kind == "ssf":
        gamma = 1.0 + t["ssf_scale"]
        # h = γ ⊙ (W0 x + b0) + β  ⇒  W = diag(γ) W0, b = γ ⊙ b0 + β
        new_w = np.array([[gamma[o] * w0[o, i] for i in range(w0.shape[1])] for o in range(w0.shape[0])])
        new_b = gamma * (b0 if b0 is not None else 0.0) + t.get("ssf_shift", 0.0)
        return new_w - w0, new_b - (b0 if b0 is not None else 0.0)
    raise AssertionError(kind)


def as_torch(t: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in t.items()}


def dense(delta):
    return None if delta is None else delta.numpy()


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_delta_matches_the_formula(kind):
    rng = np.random.default_rng(1)
    w0, b0 = rng.normal(size=(D_OUT, D_IN)), rng.normal(size=D_OUT)
    t = random_tensors(kind)
    delta_w, delta_b = adapter_delta(kind, torch.from_numpy(w0), torch.from_numpy(b0), as_torch(t))
    ref_w, ref_b = reference_delta(kind, w0, b0, t)
    np.testing.assert_allclose(np.zeros_like(w0) if delta_w is None else dense(delta_w), ref_w, atol=1e-12)
    np.testing.assert_allclose(dense(delta_b), ref_b, atol=1e-12)


def test_ssf_on_a_layer_without_bias_scales_only():
    rng = np.random.default_rng(2)
    w0 = rng.normal(size=(D_OUT, D_IN))
    t = random_tensors("ssf", has_bias=False)
    assert set(t) == {"ssf_scale"}
    delta_w, delta_b = adapter_delta("ssf", torch.from_numpy(w0), None, as_torch(t))
    np.testing.assert_allclose(dense(delta_w), reference_delta("ssf", w0, None, t)[0], atol=1e-12)
    assert delta_b is None


def test_head_kind_adapts_nothing():
    assert adapter_delta("head", torch.zeros(2, 2), None, {}) == (None, None)
    model = tiny_vit()
    report = inject_adapters(model, AdapterConfig(kind="head", rank=4, targets=("no_such_layer",)), num_classes=3)
    assert report.adapted_layers == [] and report.adapter_parameters == 0
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_every_new_kind_starts_at_the_base_layer(kind):
    torch.manual_seed(0)
    base = nn.Linear(D_IN, D_OUT)
    layer = AdaptedLinear(base, kind, rank=RANK)
    x = torch.randn(4, D_IN)
    torch.testing.assert_close(layer.eval()(x), base(x), rtol=0, atol=0)


def _layer(kind: str, sigma: float) -> AdaptedLinear:
    torch.manual_seed(3)
    layer = AdaptedLinear(nn.Linear(D_IN, D_OUT), kind, rank=RANK).double()
    with torch.no_grad():
        for name in layer.adapter_names:
            getattr(layer, name).normal_()
    layer.noise_sigma = sigma
    return layer


@pytest.mark.parametrize("kind", NEW_KINDS)
@pytest.mark.parametrize("noisy", [False, True])
def test_training_forward_and_gradients_match_the_dense_formula(kind, noisy):
    """h0 + z ⊙ (ΔW x + Δb) with ΔW, Δb from the reference: the training path (factored for
    lora_add+vpt_add, element-wise for ssf, dense for bitfit) never forms ΔW, yet agrees."""
    sigma = 0.7 if noisy else 0.0
    layer = _layer(kind, sigma).train()
    samples, tokens = 3, 4
    x = torch.randn(samples, tokens, D_IN, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    out = layer(x)
    torch.manual_seed(11)  # the layer's draw: torch.randn(samples, d_out) * σ + 1, without a batch state
    z = (torch.randn(samples, D_OUT, dtype=torch.float64) * sigma + 1).numpy() if noisy else np.ones((samples, D_OUT))
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()

    w0 = layer.weight.detach().numpy()
    b0 = layer.bias.detach().numpy()
    own = {name: getattr(layer, name).detach().numpy() for name in layer.adapter_names}
    ref_w, ref_b = reference_delta(kind, w0, b0, own)
    xs = x.detach().numpy()
    expected = xs @ w0.T + b0 + z[:, None, :] * (xs @ ref_w.T + ref_b)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    # ∂x of the formula: (g ⊙ z) ΔW + g W0
    g = upstream.numpy()
    np.testing.assert_allclose(x.grad.numpy(), g @ w0 + (g * z[:, None, :]) @ ref_w, rtol=1e-10, atol=1e-10)
    assert all(getattr(layer, name).grad is not None for name in layer.adapter_names)


def test_ssf_gradients_match_the_formula():
    """∂γ−1 = Σ z ⊙ g ⊙ h0, ∂β = Σ z ⊙ g: the element-wise path's parameter gradients."""
    layer = _layer("ssf", 0.5).train()
    x = torch.randn(2, 3, D_IN, dtype=torch.float64)
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)
    z = (torch.randn(2, D_OUT, dtype=torch.float64) * 0.5 + 1).numpy()[:, None, :]
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    h0 = x.numpy() @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()
    g = upstream.numpy()
    np.testing.assert_allclose(layer.ssf_scale.grad.numpy(), (z * g * h0).sum(axis=(0, 1)), rtol=1e-10)
    np.testing.assert_allclose(layer.ssf_shift.grad.numpy(), (z * g).sum(axis=(0, 1)), rtol=1e-10)


@pytest.mark.parametrize("kind", NEW_KINDS + ("head",))
def test_merged_model_gives_the_unmerged_logits(kind):
    torch.manual_seed(0)
    base = tiny_vit(num_classes=4)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model = tiny_vit(num_classes=4)
    model.load_state_dict(base_state)
    inject_adapters(model, AdapterConfig(kind=kind, rank=2), num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    merged = tiny_vit(num_classes=3)
    merged.load_state_dict(merge_state_dict(base_state, adapter_state_dict(model), kind), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        unmerged, folded = model.eval()(x), merged.eval()(x)
        plain = tiny_vit(num_classes=3)
        plain.load_state_dict({**base_state, **{k: v for k, v in model.state_dict().items() if k.startswith("head.")}})
        head_only = plain.eval()(x)
    assert (unmerged - folded).abs().max() <= 1e-5
    if kind != "head":  # the adapters move the logits, so the agreement is not the head's alone
        assert (unmerged - head_only).abs().max() > 1e-3


def test_bitfit_on_a_layer_without_bias_names_the_key_and_the_layer():
    model = tiny_vit(qkv_bias=False)
    with pytest.raises(PaceError) as caught:
        inject_adapters(model, AdapterConfig(kind="bitfit", rank=2, targets=("qkv",)), num_classes=3)
    text = str(caught.value)
    assert "[adapter] targets" in text and "blocks.0.attn.qkv" in text and "\n" not in text


def test_head_kind_takes_all_the_noise_and_ignores_noise_free_blocks():
    """A linear probe has no adapted block: the head is the one noisy group (σ itself), the two
    copies split at the head's input, and noise_free_blocks = 1 (the paper recipes) is not read."""
    model = tiny_vit(num_classes=4)
    inject_adapters(model, AdapterConfig(kind="head", rank=2), num_classes=3)
    regularizer = PaceRegularizer(model, PaceConfig(variant="pace", sigma=0.4, noise_free_blocks=1))
    assert regularizer.sigmas == {"head": 0.4} and regularizer.duplicate_at == "head"
    model.train()
    parts = regularizer.loss(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    # The copies differ by the noise on the logits alone: (z1 − z2) ⊙ f, so the term is > 0.
    assert parts.consistency.item() > 0


def test_head_on_a_paper_recipe_only_warns_about_the_keys_it_does_not_read():
    """The paper recipes set noise_free_blocks = 1 (and rank, for LoRA): `--set adapter.kind=head`
    on them must run, so those keys are inert-key warnings, not errors."""
    from pathlib import Path

    from pace_cli.recipe import ineffective_settings, load_recipe
    from pace_cli.regularizer.schedule import sigma_schedule

    path = Path(__file__).resolve().parents[2] / "recipes" / "fewshot" / "flowers102.toml"
    recipe = load_recipe(path, ["adapter.kind=head"])
    assert recipe.pace.noise_free_blocks == 1
    notes = ineffective_settings(recipe)
    assert any(n.startswith("[pace] noise_free_blocks set but ignored") for n in notes), notes
    assert sigma_schedule([], "head", 0.5, recipe.pace.noise_free_blocks) == {"head": 0.5}
    lora = ineffective_settings(load_recipe(path, ["adapter.kind=lora_add"]))
    assert not any(n.startswith(("[adapter]", "[pace] noise_free_blocks")) for n in lora), lora
    ssf = ineffective_settings(load_recipe(path, ["adapter.kind=ssf"]))
    assert any(n.startswith("[adapter] rank set but ignored") for n in ssf), ssf  # the recipe sets rank = 18


@pytest.mark.parametrize("noisy", [False, True])
def test_ssf_under_bf16_autocast_keeps_the_matmul_dtype(noisy):
    """The element-wise path under autocast: the output has the matmul's dtype (bf16), like any
    linear layer's, and stays close to the float64 formula."""
    layer = _layer("ssf", 0.5 if noisy else 0.0).float().train()
    x = torch.randn(2, 3, D_IN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    if not noisy:
        w0, b0 = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
        own = {name: getattr(layer, name).detach().double().numpy() for name in layer.adapter_names}
        ref_w, ref_b = reference_delta("ssf", w0, b0, own)
        expected = x.double().numpy() @ (w0 + ref_w).T + b0 + ref_b
        np.testing.assert_allclose(out.double().detach().numpy(), expected, rtol=0.05, atol=0.05)
