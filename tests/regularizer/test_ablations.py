"""The ablations of the paper's Table 6 and Figure 5, each against a computation written out here.

Noise modes against h0 + Δh + ε (and the others) built densely in float64; the σ profiles
against their formulas; M copies against the mean over pairs; FPA against a forward of the
plain timm model with the trained head; ℓ1 against a sum over the named parameters; the
finite-difference gradient penalty against autograd's double backward; SAM against the gradient
taken at the displaced point by hand.
"""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_vit
from torch import nn

from pace_cli.adapters import AdaptedLinear, AdapterConfig, NoiseMode, adapter_state_dict, draw_noise, inject_adapters
from pace_cli.adapters import merge_state_dict
from pace_cli.check import check_recipe
from pace_cli.errors import PaceError
from pace_cli.regularizer import PaceConfig, PaceRegularizer, PairState, sigma_schedule
from pace_cli.regularizer.sharpness import second_pass

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.toml"
SIGMA = 0.7
MODES = [("gaussian", "adapter"), ("gaussian", "output"), ("additive", "adapter"), ("dropout", "adapter"),
         ("dropout", "output")]


def adapted_linear(kind: str) -> AdaptedLinear:
    torch.manual_seed(0)
    layer = AdaptedLinear(nn.Linear(8, 6).double(), kind, rank=3)
    with torch.no_grad():
        for tensor in layer.adapter_tensors().values():
            tensor.normal_(std=0.3)
    layer.noise_sigma = SIGMA
    return layer.train()


@pytest.mark.parametrize("kind", ["lora_mul+vpt_add", "lora_add"])  # the fused and the factored fast paths
@pytest.mark.parametrize("noise,perturb", MODES)
def test_a_noisy_layer_is_the_dense_formula_of_its_mode(kind, noise, perturb):
    layer = adapted_linear(kind)
    state = PairState(noise_mode=NoiseMode(noise, perturb))
    state.samples = 4
    layer.batch_state = state
    x = torch.randn(4, 40, 8, dtype=torch.float64)  # 40 tokens per sample: enough for the fused path
    torch.manual_seed(5)
    got = layer(x)
    torch.manual_seed(5)
    draws = (torch.rand if noise == "dropout" else torch.randn)(4, 6, dtype=torch.float64)[:, None, :]
    weight, bias = layer.merged_weight_and_bias()
    h0 = x @ layer.weight.T + layer.bias
    h = x @ weight.T + bias
    keep = 1 / (1 + SIGMA ** 2)
    z = {"gaussian": 1 + SIGMA * draws, "dropout": (draws < keep).double() / keep}.get(noise)
    if noise == "additive":
        want = h + SIGMA * draws
    elif perturb == "output":
        want = z * h
    else:
        want = h0 + z * (h - h0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_dropout_noise_has_the_gaussian_variance():
    sigma = 0.8
    z = draw_noise(100_000, 4, sigma, batch=PairState(noise_mode=NoiseMode("dropout")), dtype=torch.float64)
    drop = sigma ** 2 / (1 + sigma ** 2)  # p = σ² / (1 + σ²)
    values = z.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - drop))
    assert (z == 0).double().mean().item() == pytest.approx(drop, abs=0.005)
    assert z.mean().item() == pytest.approx(1.0, abs=0.01)
    assert z.var().item() == pytest.approx(sigma ** 2, rel=0.03)


LAYERS = ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.attn.qkv", "blocks.2.attn.qkv", "blocks.2.mlp.fc2"]


@pytest.mark.parametrize("profile,want", [
    ("decreasing", (1.2, 0.8, 0.4)), ("constant", (1.2, 1.2, 1.2)), ("increasing", (0.4, 0.8, 1.2))])
def test_sigma_profiles_at_three_noisy_groups(profile, want):
    """blocks.0 noise-free; blocks.1, blocks.2 and the head are G = 3 groups: σ(G − g)/G, σ, σ(g + 1)/G."""
    got = sigma_schedule(LAYERS, "head", 1.2, noise_free_blocks=1, profile=profile)
    assert got["blocks.0.attn.qkv"] == got["blocks.0.mlp.fc1"] == 0.0
    assert got["blocks.2.attn.qkv"] == got["blocks.2.mlp.fc2"]
    assert (got["blocks.1.attn.qkv"], got["blocks.2.attn.qkv"], got["head"]) == pytest.approx(want)


def test_pace_check_prints_the_increasing_profile():
    report = check_recipe(QUICKSTART, ["pace.sigma_profile=increasing", "pace.copies=3"])
    assert report.ok, report.problems
    assert report.sigma_per_block["blocks.0"] == pytest.approx(1 / 7, abs=1e-6)  # 6 blocks + the head
    assert report.sigma_per_block["blocks.5"] == pytest.approx(6 / 7, abs=1e-6) and report.sigma_per_block["head"] == 1.0
    assert report.memory.images_per_step == 48  # 3 copies of each of the 16 images
    assert any("copies = 3" in note for note in report.notes)


def pace_model(drop_path=0.3, sigma=1.0, **config):
    torch.manual_seed(0)
    model = tiny_vit(drop_path_rate=drop_path, num_classes=4)
    inject_adapters(model, AdapterConfig(kind="lora_mul+vpt_add", rank=2), num_classes=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("lora_B", "prompt_B")):
                p.normal_(std=0.1)
    config.setdefault("variant", "pace")
    return model.train(), PaceRegularizer(model, PaceConfig(sigma=sigma, lambda_=1.0, **config))


@pytest.mark.parametrize("copies", [2, 3, 4])
def test_m_copies_consistency_is_the_mean_squared_distance_over_pairs(copies):
    model, reg = pace_model(copies=copies)
    x, y = torch.randn(5, 3, 32, 32), torch.randint(0, 4, (5,))
    parts = reg.loss(x, y, step=3)
    reg.use_step_noise(3, 5, 0, 5)  # the same step's noise again
    views = reg.paired_forward(x).double().chunk(copies)
    pairs = [(i, j) for i in range(copies) for j in range(copies) if i < j]
    per_sample = sum(((views[i] - views[j]) ** 2).sum(dim=1) for i, j in pairs) / len(pairs)
    assert parts.consistency.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert parts.ce.item() == pytest.approx(F.cross_entropy(views[0], y).item(), rel=1e-6)
    assert all((views[i] - views[j]).abs().min() > 0 for i, j in pairs)  # each copy its own noise
    if copies == 2:  # today's PACE term, operation for operation
        first, second = views[0].float(), views[1].float()
        assert torch.equal(parts.consistency, (first - second).pow(2).sum() / 5)


def test_m_copies_share_their_drop_masks():
    """Without noise only drop path could tell the copies apart, and it draws one mask for all of them."""
    _, reg = pace_model(drop_path=0.5, sigma=0.0, copies=3)
    logits = reg.paired_forward(torch.randn(4, 3, 32, 32))
    a, b, c = logits.chunk(3)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_noise_only_is_one_noisy_pass_without_consistency():
    model, reg = pace_model(variant="noise_only", drop_path=0.0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    parts = reg.loss(x, y, step=1)
    assert parts.consistency.item() == 0 and parts.logits.shape == (4, 4)
    assert parts.loss.item() == pytest.approx(F.cross_entropy(parts.logits, y).item(), rel=1e-6)
    with torch.no_grad():
        clean = model.eval()(x)
    assert (parts.logits - clean).abs().max() > 1e-3  # the adapters were noisy
    assert reg.sigmas["blocks.0.attn.qkv"] == 1.0


def test_fpa_is_the_distance_to_the_plain_model_with_the_trained_head():
    torch.manual_seed(0)
    base = tiny_vit(drop_path_rate=0.0, num_classes=4)
    base_state = copy.deepcopy(base.state_dict())
    model, reg = pace_model(variant="off", drop_path=0.0, fpa=0.3)
    model.load_state_dict(base_state, strict=False)  # the same frozen weights as `base`
    with torch.no_grad():
        model.head.weight.normal_()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 4, (6,))
    parts = reg.loss(x, y)
    plain = tiny_vit(num_classes=4)
    plain.load_state_dict({**base_state, "head.weight": model.head.weight, "head.bias": model.head.bias})
    with torch.no_grad():
        reference, tuned = plain.eval()(x).double(), model.eval()(x).double()
    want = F.cross_entropy(tuned, y) + 0.3 * ((tuned - reference) ** 2).sum(dim=1).mean()
    assert parts.loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert (tuned - reference).abs().max() > 1e-3  # the adapters do move the logits


def test_fpa_takes_no_draws_from_the_step_noise():
    """Its reference forward runs in eval mode, so PACE's consistency is the same with and without it."""
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    with_fpa = pace_model(fpa=0.5)[1].loss(x, y, step=2)
    without = pace_model()[1].loss(x, y, step=2)
    assert torch.equal(with_fpa.consistency, without.consistency) and torch.equal(with_fpa.ce, without.ce)
    assert with_fpa.loss > without.loss


def test_l1_adds_lambda_times_the_adapters_absolute_sum():
    model, reg = pace_model(variant="off", drop_path=0.0, l1=0.01)
    _, plain = pace_model(variant="off", drop_path=0.0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    adapters = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("head.")]
    assert adapters and len(adapters) == len(reg.l1_tensors)
    want = 0.01 * sum(p.detach().double().abs().sum() for p in adapters)
    assert (reg.loss(x, y).loss - plain.loss(x, y).loss).item() == pytest.approx(want.item(), rel=1e-4)


def double_model():
    model, reg = pace_model(variant="off", drop_path=0.0)
    model.double()
    for module in model.modules():  # the math attention, which has a double backward
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model, reg, [p for p in model.parameters() if p.requires_grad]


def test_the_finite_difference_gradient_penalty_matches_double_backward():
    """In float64 but for the float32 logits the loss takes: at r = 1e-4 the O(r) error and the
    rounding error divided by r are both about 1e-4 of the largest gradient entry."""
    gp = 0.5
    torch.manual_seed(3)
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 4, (4,))
    model, reg, params = double_model()
    reg.loss(x, y).total.backward()
    second_pass(params, lambda: reg.loss(x, y).total.backward(), gp=gp, gp_radius=1e-4)
    got = [p.grad for p in params]

    model, reg, params = double_model()
    loss = reg.loss(x, y).total
    grads = torch.autograd.grad(loss, params, create_graph=True)
    penalised = loss + gp * sum(g.pow(2).sum() for g in grads)
    want = torch.autograd.grad(penalised, params)
    plain = [g.detach() for g in grads]
    scale = max(w.abs().max().item() for w in want)
    assert max((w - p).abs().max().item() for w, p in zip(want, plain)) > 0.01 * scale  # the penalty counts
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) < 1e-3 * scale


def test_sam_takes_the_gradient_at_the_displaced_point_and_restores_theta():
    rho = 0.05
    torch.manual_seed(4)
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 4, (4,))
    model, reg, params = double_model()
    before = [p.detach().clone() for p in params]
    reg.loss(x, y).total.backward()
    second_pass(params, lambda: reg.loss(x, y).total.backward(), sam_rho=rho)
    assert all(torch.equal(p, b) for p, b in zip(params, before))

    _, reg2, params2 = double_model()
    grads = torch.autograd.grad(reg2.loss(x, y).total, params2)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(params2, grads):
            p.add_(rho * g / norm)
    want = torch.autograd.grad(reg2.loss(x, y).total, params2)
    for p, w in zip(params, want):
        torch.testing.assert_close(p.grad, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("noise,perturb", MODES[1:])
def test_training_in_every_mode_merges_exactly(noise, perturb):
    torch.manual_seed(1)
    base = tiny_vit(drop_path_rate=0.1, num_classes=3)
    base_state = copy.deepcopy(base.state_dict())
    model = tiny_vit(drop_path_rate=0.1, num_classes=3)
    model.load_state_dict(base_state)
    inject_adapters(model, AdapterConfig(kind="lora_mul+vpt_add", rank=3), num_classes=3)
    reg = PaceRegularizer(model, PaceConfig(sigma=1.0, noise=noise, perturb=perturb, copies=3, fpa=0.1, l1=1e-3))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.05)
    for step in range(4):
        optimizer.zero_grad()
        reg.loss(torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,)), step=step).total.backward()
        optimizer.step()
    reg.remove()
    plain = tiny_vit(num_classes=3)
    plain.load_state_dict(merge_state_dict(base_state, adapter_state_dict(model), "lora_mul+vpt_add"), strict=True)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected, got = model.eval()(x), plain.eval()(x)
    assert (expected - got).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_out_of_range_values_name_their_key():
    for bad, key in [({"copies": 1}, "copies"), ({"fpa": -1.0}, "fpa"), ({"l1": -0.1}, "l1"),
                     ({"noise": "pink"}, "noise"), ({"perturb": "input"}, "perturb")]:
        with pytest.raises(PaceError, match=key):
            PaceConfig(**bad)
    with pytest.raises(PaceError, match="sigma_profile"):
        sigma_schedule(LAYERS, "head", 1.0, profile="wavy")
