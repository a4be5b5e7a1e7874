"""`ia3` and `dora`: ΔW, Δb and the noisy forward against float64 references written here, and
forward and gradients against Hugging Face PEFT's own layers (IA3, LoRA with use_dora)."""
from __future__ import annotations

import pytest
import torch
from helpers import tiny_vit
from torch import nn

from pace_cli.adapters import (
    AdaptedLinear, AdapterConfig, adapted_layers, adapter_delta, dora_row_norm, inject_adapters,
)
from pace_cli.errors import PaceError


def ia3_reference(W0, b0, scale, mode):
    """(ΔW, Δb) entry by entry: input scaling W0[i, j] l[j]; output scaling l[i] W0[i, j] and l[i] b0[i]."""
    d_out, d_in = W0.shape
    dW = torch.zeros(d_out, d_in, dtype=torch.float64)
    db = torch.zeros(d_out, dtype=torch.float64)
    for i in range(d_out):
        for j in range(d_in):
            factor = float(scale[j]) if mode == "input" else float(scale[i])
            dW[i, j] = float(W0[i, j]) * factor - float(W0[i, j])
        if mode == "output" and b0 is not None:
            db[i] = float(scale[i]) * float(b0[i]) - float(b0[i])
    return dW, db


def dora_reference(W0, A, B, m):
    """ΔW = m_i (W0 + B A)[i, :] / ‖(W0 + B A)[i, :]‖ − W0[i, :], by explicit sums."""
    d_out, d_in = W0.shape
    V = [[float(W0[i, j]) + sum(float(B[i, k]) * float(A[k, j]) for k in range(A.shape[0])) for j in range(d_in)]
         for i in range(d_out)]
    dW = torch.zeros(d_out, d_in, dtype=torch.float64)
    for i in range(d_out):
        norm = sum(v * v for v in V[i]) ** 0.5
        for j in range(d_in):
            dW[i, j] = float(m[i]) * V[i][j] / norm - float(W0[i, j])
    return dW


def randomised_layer(kind, mode=None, bias=True, d_in=5, d_out=7, rank=3, seed=0):
    torch.manual_seed(seed)
    layer = AdaptedLinear(nn.Linear(d_in, d_out, bias=bias).double(), kind, rank=rank, mode=mode).double()
    with torch.no_grad():
        for name, p in layer.adapter_tensors().items():
            p.mul_(1 + 0.3 * torch.randn_like(p)) if name != "lora_A" and name != "lora_B" else p.normal_()
    return layer


def reference_delta(layer):
    W0 = layer.weight.detach()
    b0 = None if layer.bias is None else layer.bias.detach()
    if layer.kind == "dora":
        return dora_reference(W0, layer.lora_A.detach(), layer.lora_B.detach(), layer.dora_magnitude.detach()), \
            torch.zeros(W0.shape[0], dtype=torch.float64)
    scale = (layer.ia3_in if layer.mode == "input" else layer.ia3_out).detach().flatten()
    return ia3_reference(W0, b0, scale, layer.mode)


CASES = [("ia3", "output", True), ("ia3", "output", False), ("ia3", "input", True), ("dora", None, True),
         ("dora", None, False)]
IDS = ["ia3-output", "ia3-output-nobias", "ia3-input", "dora", "dora-nobias"]


@pytest.mark.parametrize("kind, mode, bias", CASES, ids=IDS)
def test_delta_matches_dense_reference(kind, mode, bias):
    layer = randomised_layer(kind, mode, bias)
    dW, db = adapter_delta(kind, layer.weight, layer.bias, layer.adapter_tensors())
    ref_dW, ref_db = reference_delta(layer)
    torch.testing.assert_close(dW, ref_dW, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.zeros_like(ref_db) if db is None else db, ref_db, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind, mode, bias", CASES, ids=IDS)
def test_eval_and_noisy_forward_match_dense_reference(kind, mode, bias):
    layer = randomised_layer(kind, mode, bias)
    ref_dW, ref_db = reference_delta(layer)
    W0 = layer.weight.detach()
    b0 = torch.zeros(W0.shape[0], dtype=torch.float64) if layer.bias is None else layer.bias.detach()
    x = torch.randn(3, 4, W0.shape[1], dtype=torch.float64)
    base_out = x @ W0.T + b0
    delta_out = x @ ref_dW.T + ref_db
    layer.eval()
    torch.testing.assert_close(layer(x).detach(), base_out + delta_out, rtol=1e-10, atol=1e-10)

    layer.train()
    layer.noise_sigma = 0.7
    torch.manual_seed(5)
    out = layer(x).detach()
    torch.manual_seed(5)
    z = 1 + 0.7 * torch.randn(3, W0.shape[0], dtype=torch.float64)  # one draw per sample and channel
    torch.testing.assert_close(out, base_out + z[:, None, :] * delta_out, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind, mode", [("ia3", "output"), ("ia3", "input"), ("dora", None)])
def test_initial_delta_is_exactly_zero(kind, mode):
    layer = AdaptedLinear(nn.Linear(9, 6), kind, rank=2, mode=mode)
    dW, db = layer.delta()
    assert torch.equal(dW, torch.zeros_like(dW)) and (db is None or torch.equal(db, torch.zeros_like(db)))
    x = torch.randn(2, 3, 9)
    layer.eval()
    assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_dora_row_norm_is_the_norm_of_the_summed_weight():
    W0, A, B = torch.randn(7, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64), \
        torch.randn(7, 3, dtype=torch.float64)
    expected = torch.tensor([sum(float(v) ** 2 for v in row) ** 0.5 for row in W0 + B @ A], dtype=torch.float64)
    torch.testing.assert_close(dora_row_norm(W0, A, B), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- against PEFT's own layers


def peft_twin(layer: AdaptedLinear):
    """PEFT's layer with the same tensors: an IA3 (feed-forward by the layer's mode) or a LoRA with use_dora."""
    peft = pytest.importorskip("peft")
    holder = nn.Sequential()
    holder.add_module("lin", nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None).double())
    holder.lin.load_state_dict({k: v for k, v in layer.state_dict().items() if k in ("weight", "bias")})
    if layer.kind == "ia3":
        config = peft.IA3Config(target_modules=["lin"], feedforward_modules=["lin"] if layer.mode == "input" else [])
        model = peft.get_peft_model(holder, config)
        with torch.no_grad():
            model.base_model.model.lin.ia3_l["default"].copy_(layer.ia3_in if layer.mode == "input" else layer.ia3_out)
        return model, {"ia3_in" if layer.mode == "input" else "ia3_out": model.base_model.model.lin.ia3_l["default"]}
    config = peft.LoraConfig(r=layer.rank, lora_alpha=layer.rank, target_modules=["lin"], use_dora=True)
    model = peft.get_peft_model(holder, config).double()
    lin = model.base_model.model.lin
    with torch.no_grad():
        lin.lora_A["default"].weight.copy_(layer.lora_A)
        lin.lora_B["default"].weight.copy_(layer.lora_B)
        lin.lora_magnitude_vector["default"].weight.copy_(layer.dora_magnitude)
    return model, {"lora_A": lin.lora_A["default"].weight, "lora_B": lin.lora_B["default"].weight,
                   "dora_magnitude": lin.lora_magnitude_vector["default"].weight}


@pytest.mark.parametrize("kind, mode", [("ia3", "output"), ("ia3", "input"), ("dora", None)])
def test_forward_and_gradients_equal_peft(kind, mode):
    """Training without noise is PEFT's training: the same outputs and the same gradients, which for DoRA
    means the row norm is detached exactly where PEFT detaches it."""
    layer = randomised_layer(kind, mode)
    twin, twin_tensors = peft_twin(layer)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    target = torch.randn(3, 4, 7, dtype=torch.float64)
    layer.train()
    twin.train()
    ours, theirs = layer(x), twin(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    ((ours - target) ** 2).sum().backward()
    ((theirs - target) ** 2).sum().backward()
    for name, tensor in twin_tensors.items():
        torch.testing.assert_close(getattr(layer, name).grad, tensor.grad, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- injection


def test_ia3_modes_follow_feedforward_patterns():
    model = tiny_vit()
    report = inject_adapters(model, AdapterConfig(kind="ia3", targets=("qkv", "fc2"), feedforward=("fc2",)))
    modes = {path: layer.mode for path, layer in adapted_layers(model).items()}
    assert modes == {f"blocks.{b}.{n}": m for b in range(2) for n, m in (("attn.qkv", "output"), ("mlp.fc2", "input"))}
    # per block: qkv scales its 96 outputs, fc2 its 128 inputs
    assert report.adapter_parameters == 2 * (96 + 128)


def test_feedforward_pattern_matching_no_targeted_layer_is_refused():
    with pytest.raises(PaceError, match=r"\[adapter\] feedforward pattern 'fc1' matches no targeted layer"):
        inject_adapters(tiny_vit(), AdapterConfig(kind="ia3", targets=("qkv", "fc2"), feedforward=("fc1",)))
