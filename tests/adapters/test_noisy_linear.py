"""The fused noisy forward (per-sample weights) against the two-matmul formula, values and gradients."""

import pytest
import torch
from helpers import tiny_swin, tiny_vit

from pace_cli.adapters import AdaptedLinear, AdapterConfig, inject_adapters
from pace_cli.adapters import fused as nl
from pace_cli.regularizer import PaceConfig, PaceRegularizer


def _dense_reference(x, w0, b0, dw, db, z):
    """W0 x + b0 + z ⊙ (ΔW x + Δb), written out with einsum in float64."""
    zb = z.reshape(z.shape[0], *([1] * (x.dim() - 2)), z.shape[1])
    delta = torch.einsum("...i,oi->...o", x, dw)
    if db is not None:
        delta = delta + db
    out = torch.einsum("...i,oi->...o", x, w0) + zb * delta
    return out + b0 if b0 is not None else out


@pytest.mark.parametrize("shape", [(5, 7, 6), (4, 6), (3, 2, 3, 6)])
@pytest.mark.parametrize("with_bias,with_delta_b", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("chunk_elements", [1 << 24, 50])  # one chunk, and one sample per chunk
def test_noisy_linear_matches_dense_reference(monkeypatch, shape, with_bias, with_delta_b, chunk_elements):
    monkeypatch.setattr(nl, "CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(0)
    d_in, d_out, batch = shape[-1], 9, shape[0]
    tensors = {
        "x": torch.randn(shape, generator=g),
        "w0": torch.randn(d_out, d_in, generator=g),
        "b0": torch.randn(d_out, generator=g) if with_bias else None,
        "dw": torch.randn(d_out, d_in, generator=g),
        "db": torch.randn(d_out, generator=g) if with_delta_b else None,
    }
    z = 1 + 0.7 * torch.randn(batch, d_out, generator=g)
    upstream = torch.randn(*shape[:-1], d_out, generator=g)

    def run(fn, dtype):
        leaves = {k: (v.detach().to(dtype, copy=True).requires_grad_(k != "w0") if v is not None else None) for k, v in tensors.items()}
        out = fn(leaves["x"], leaves["w0"], leaves["b0"], leaves["dw"], leaves["db"], z.to(dtype))
        (out * upstream.to(dtype)).sum().backward()
        grads = {k: v.grad for k, v in leaves.items() if v is not None and v.requires_grad}
        return out, grads

    fused, fused_grads = run(nl.noisy_linear, torch.float32)
    dense, dense_grads = run(_dense_reference, torch.float64)
    torch.testing.assert_close(fused, dense.float(), rtol=1e-5, atol=1e-5)
    assert fused_grads.keys() == dense_grads.keys()
    for key in dense_grads:
        torch.testing.assert_close(fused_grads[key], dense_grads[key].float(), rtol=1e-4, atol=1e-4, msg=key)


def _noisy_training_layer(d_in, d_out, kind, rank, sigma):
    """An adapted layer in training mode with non-zero adapters and PACE noise on."""
    layer = AdaptedLinear(torch.nn.Linear(d_in, d_out), kind, rank=rank)
    with torch.no_grad():
        for name in layer.adapter_names:
            getattr(layer, name).normal_()
    layer.noise_sigma = sigma
    return layer.train()


@pytest.mark.parametrize("kind", ["lora_mul", "lora_mul+vpt_add"])
def test_adapted_layer_fused_and_reference_paths_agree(monkeypatch, kind):
    monkeypatch.setattr(nl, "MIN_TOKENS_PER_SAMPLE", 1)
    layer = _noisy_training_layer(12, 10, kind, rank=3, sigma=0.8)
    x = torch.randn(4, 5, 12)

    def run(per_sample):
        layer.per_sample_weights = per_sample
        layer.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        out = layer(x)
        out.square().sum().backward()
        return out.detach(), {n: getattr(layer, n).grad.clone() for n in layer.adapter_names}

    fused, fused_grads = run(True)
    reference, reference_grads = run(False)
    assert not torch.allclose(fused, layer.eval()(x))  # the noise is really there
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    for name in reference_grads:
        torch.testing.assert_close(fused_grads[name], reference_grads[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("factory", [tiny_vit, tiny_swin])
def test_pace_loss_and_gradients_same_on_both_paths(monkeypatch, factory):
    monkeypatch.setattr(nl, "MIN_TOKENS_PER_SAMPLE", 1)
    model = factory(drop_path_rate=0.1)
    inject_adapters(model, AdapterConfig(kind="lora_mul+vpt_add", rank=4), num_classes=5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    regularizer = PaceRegularizer(model, PaceConfig(variant="pace", sigma=1.0, noise_free_blocks=1))
    model.train()
    images, labels = torch.randn(6, 3, 32, 32), torch.randint(0, 5, (6,))

    def run(per_sample):
        monkeypatch.setattr(AdaptedLinear, "per_sample_weights", per_sample)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        parts = regularizer.loss(images, labels)
        parts.total.backward()
        return parts, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    fused, fused_grads = run(True)
    reference, reference_grads = run(False)
    assert fused.consistency.item() > 0
    torch.testing.assert_close(fused.total, reference.total, rtol=1e-4, atol=1e-5)
    for name, grad in reference_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_fusing_needs_enough_tokens_per_sample():
    assert nl.worth_fusing(torch.zeros(2, 197, 8), 2) and nl.worth_fusing(torch.zeros(2, 7, 7, 8), 2)
    assert not nl.worth_fusing(torch.zeros(2, 17, 8), 2) and not nl.worth_fusing(torch.zeros(64, 8), 64)
    # Swin: 2 samples x 4 windows of 16 tokens = 64 tokens per sample
    assert nl.worth_fusing(torch.zeros(8, 16, 8), 2) and not nl.worth_fusing(torch.zeros(8, 16, 8), 8)


def test_noisy_linear_with_windows_matches_dense_reference():
    """Rows = samples x windows: one per-sample weight covers all of a sample's windows."""
    g = torch.Generator().manual_seed(1)
    samples, windows, tokens, d_in, d_out = 3, 4, 5, 6, 7
    x = torch.randn(samples * windows, tokens, d_in, generator=g, dtype=torch.float64, requires_grad=True)
    w0, b0 = torch.randn(d_out, d_in, generator=g, dtype=torch.float64), torch.randn(d_out, generator=g, dtype=torch.float64)
    dw = torch.randn(d_out, d_in, generator=g, dtype=torch.float64, requires_grad=True)
    db = torch.randn(d_out, generator=g, dtype=torch.float64, requires_grad=True)
    z = 1 + 0.5 * torch.randn(samples, d_out, generator=g, dtype=torch.float64)
    fused = nl.noisy_linear(x, w0, b0, dw, db, z)
    grads = torch.autograd.grad(fused.square().sum(), (x, dw, db))
    dense = _dense_reference(x, w0, b0, dw, db, z.repeat_interleave(windows, dim=0))
    dense_grads = torch.autograd.grad(dense.square().sum(), (x, dw, db))
    torch.testing.assert_close(fused, dense)
    for got, expected in zip(grads, dense_grads):
        torch.testing.assert_close(got, expected)


def test_fused_path_under_cpu_bf16_autocast_matches_float32(monkeypatch):
    monkeypatch.setattr(nl, "MIN_TOKENS_PER_SAMPLE", 1)
    layer = _noisy_training_layer(16, 8, "lora_mul+vpt_add", rank=2, sigma=0.5)
    x = torch.randn(3, 6, 16)

    def run(autocast):
        layer.zero_grad(set_to_none=True)
        torch.manual_seed(5)  # the same noise: it is drawn in the input's dtype, float32
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = layer(x)
        out.float().square().sum().backward()
        return out, layer.lora_B.grad.clone()

    low, low_grad = run(True)
    full, full_grad = run(False)
    assert low.dtype == torch.bfloat16 and full.dtype == torch.float32
    assert low_grad.dtype == torch.float32  # parameters stay float32 under autocast
    torch.testing.assert_close(low.float(), full, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(low_grad, full_grad, rtol=5e-2, atol=5e-2 * full_grad.abs().max().item())
