"""The factored ``lora_add`` layer against the dense formula in float64: values and gradients,
with and without PACE noise; and the layer's training, unmerged-eval and merged paths agree."""

import pytest
import torch
from helpers import tiny_swin, tiny_vit
from torch import nn

from pace_cli.adapters import (
    AdaptedLinear, AdapterConfig, adapted_layers, adapter_state_dict, inject_adapters, merge_state_dict,
)
from pace_cli.adapters.factored import low_rank_linear


def _dense_reference(x, w0, b0, a, b, db, z):
    """W0 x + b0 + z ⊙ (ΔW x + Δb) with ΔW = B A built densely, one einsum per term, float64."""
    dw = torch.einsum("ok,ki->oi", b, a)
    delta = torch.einsum("...i,oi->...o", x, dw)
    if db is not None:
        delta = delta + db
    if z is not None:
        rows = x.shape[0]
        per_row = z.repeat_interleave(rows // z.shape[0], dim=0)
        delta = per_row.reshape(rows, *([1] * (x.dim() - 2)), z.shape[1]) * delta
    out = torch.einsum("...i,oi->...o", x, w0) + delta
    return out + b0 if b0 is not None else out


@pytest.mark.parametrize("shape,samples", [((5, 7, 6), 5), ((4, 6), 4), ((3, 2, 3, 6), 3), ((6, 4, 6), 2),
                                           ((5, 7, 6), None)])
@pytest.mark.parametrize("with_bias,with_delta_b", [(True, True), (False, False), (False, True)])
def test_low_rank_linear_matches_dense_reference(shape, samples, with_bias, with_delta_b):
    g = torch.Generator().manual_seed(0)
    d_in, d_out, rank = shape[-1], 9, 3
    tensors = {
        "x": torch.randn(shape, generator=g),
        "w0": torch.randn(d_out, d_in, generator=g),
        "b0": torch.randn(d_out, generator=g) if with_bias else None,
        "a": torch.randn(rank, d_in, generator=g),
        "b": torch.randn(d_out, rank, generator=g),
        "db": torch.randn(d_out, generator=g) if with_delta_b else None,
    }
    # samples=None: no noise; (6, 4, 6) with 2 samples: three rows (windows) per sample share a draw
    z = None if samples is None else 1 + 0.7 * torch.randn(samples, d_out, generator=g)
    upstream = torch.randn(*shape[:-1], d_out, generator=g)

    def run(fn, dtype):
        leaves = {k: (v.detach().to(dtype, copy=True).requires_grad_(True) if v is not None else None)
                  for k, v in tensors.items()}
        out = fn(leaves["x"], leaves["w0"], leaves["b0"], leaves["a"], leaves["b"], leaves["db"],
                 None if z is None else z.to(dtype))
        (out * upstream.to(dtype)).sum().backward()
        return out, {k: v.grad for k, v in leaves.items() if v is not None}

    factored, factored_grads = run(low_rank_linear, torch.float32)
    dense, dense_grads = run(_dense_reference, torch.float64)
    torch.testing.assert_close(factored, dense.float(), rtol=1e-5, atol=1e-5)
    assert factored_grads.keys() == dense_grads.keys()
    for key in dense_grads:
        torch.testing.assert_close(factored_grads[key], dense_grads[key].float(), rtol=1e-4, atol=1e-4, msg=key)


def _random_lora_add_layer(bias=True):
    layer = AdaptedLinear(nn.Linear(6, 5, bias=bias), "lora_add", rank=2)
    with torch.no_grad():
        for name in layer.adapter_names:
            getattr(layer, name).normal_()
    return layer


@pytest.mark.parametrize("bias", [True, False])
def test_factored_and_dense_layer_paths_agree_in_training(bias):
    """Training (no noise) through B (A x) gives the dense (W0 + B A) x path's loss and gradients."""
    layer = _random_lora_add_layer(bias).train()
    x = torch.randn(4, 3, 6)

    def loss_and_grads(factored):
        layer.factored_lora = factored
        layer.zero_grad(set_to_none=True)
        out = layer(x)
        (out.square().sum()).backward()
        return out.detach(), {n: getattr(layer, n).grad.clone() for n in layer.adapter_names}

    dense_out, dense_grads = loss_and_grads(False)
    out, grads = loss_and_grads(True)
    torch.testing.assert_close(out, dense_out, rtol=1e-5, atol=1e-5)
    for name in dense_grads:
        torch.testing.assert_close(grads[name], dense_grads[name], rtol=1e-4, atol=1e-4, msg=name)


def test_noisy_factored_path_matches_reference_with_the_same_noise(monkeypatch):
    """With PACE noise on, the factored layer equals noisy_forward_reference for the same draw."""
    layer = _random_lora_add_layer().train()
    layer.noise_sigma = 0.5
    x = torch.randn(4, 3, 6)
    torch.manual_seed(7)
    out = layer(x)
    torch.manual_seed(7)
    layer.factored_lora = False
    reference = layer(x)
    assert not torch.equal(out, layer.eval()(x))  # the noise did something
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factory", [tiny_vit, tiny_swin])
def test_unmerged_eval_equals_training_forward_and_merged_model(factory):
    """Unmerged eval runs the training code path (same function, bit for bit); merged differs by rounding."""
    torch.manual_seed(0)
    model = factory(drop_path_rate=0.0)
    inject_adapters(model, AdapterConfig(kind="lora_add", rank=3, targets=("qkv", "proj", "fc1", "fc2")),
                    num_classes=4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    x = torch.randn(2, 3, 32, 32)
    model.train()  # no noise is set: training forward, dropout-free model
    with torch.no_grad():
        train_logits = model(x)
        model.eval()
        eval_logits = model(x)
    assert torch.equal(train_logits, eval_logits)

    base = factory(drop_path_rate=0.0)
    base.reset_classifier(4)
    state = {k: v for k, v in model.state_dict().items() if not any(t in k for t in ("lora_", "delta_bias"))}
    merged_state = merge_state_dict(state, adapter_state_dict(model), "lora_add")
    base.load_state_dict(merged_state)
    with torch.no_grad():
        merged_logits = base.eval()(x)
    torch.testing.assert_close(merged_logits, eval_logits, rtol=1e-4, atol=1e-4)
    assert len(adapted_layers(model)) > 0
