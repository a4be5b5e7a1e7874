"""GPU self-check: the adapter maths, merge and eval agree on CUDA in fp32, bf16 and fp16.

Run on a CUDA machine with ``pytest -m cuda -rs`` (or ``benchmarks/gpu_check.sh``, which adds a
throughput table). Everything here is skipped, with the reason shown by ``-rs``, where torch
sees no CUDA device. References are computed in float64 (on the GPU) by formulas written out
in the tests, not by the library's code paths.
"""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_swin, tiny_vit

from pace_cli.adapters import (
    AdapterConfig, adapted_layers, adapter_delta, adapter_state_dict, inject_adapters, merge_state_dict,
    registered_tensor_names,
)
from pace_cli.adapters.factored import low_rank_linear
from pace_cli.adapters.fused import noisy_linear

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU self-check needs one"),
]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# What a layer's output may differ from float64 by, relative to its scale: fp32 (TF32 off),
# bf16 (8-bit mantissa) and fp16 (11-bit) matmuls over a few hundred terms.
TOLERANCE = {"fp32": 1e-4, "bf16": 4e-2, "fp16": 5e-3}


@pytest.fixture(autouse=True)
def _no_tf32():
    """TF32 would make "fp32" a 10-bit-mantissa check; the fp32 case means real fp32."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _close(actual: torch.Tensor, expected: torch.Tensor, precision: str, what: str) -> None:
    scale = expected.abs().max().item() + 1e-12
    err = (actual.double() - expected.double()).abs().max().item() / scale
    assert err <= TOLERANCE[precision], f"{what}: max error {err:.2e} of scale > {TOLERANCE[precision]} ({precision})"


def _dense_noisy(x, w0, b0, dw, db, z):
    """W0 x + b0 + z ⊙ (ΔW x + Δb), per sample z [B, d_out], float64 einsums."""
    delta = torch.einsum("bti,oi->bto", x, dw) + db
    return torch.einsum("bti,oi->bto", x, w0) + b0 + z[:, None, :] * delta


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("layer", ["noisy_linear", "low_rank_linear"])
def test_fused_noisy_layers_match_reference_on_cuda(precision, layer):
    g = torch.Generator(device="cuda").manual_seed(0)
    B, T, d_in, d_out, r = 4, 64, 96, 128, 8
    cuda64 = dict(device="cuda", dtype=torch.float64)
    x = torch.randn(B, T, d_in, generator=g, **cuda64)
    w0, b0 = torch.randn(d_out, d_in, generator=g, **cuda64) / d_in**0.5, torch.randn(d_out, generator=g, **cuda64)
    a, bb = torch.randn(r, d_in, generator=g, **cuda64) / d_in**0.5, torch.randn(d_out, r, generator=g, **cuda64)
    db = torch.randn(d_out, generator=g, **cuda64)
    z = 1 + 0.5 * torch.randn(B, d_out, generator=g, **cuda64)
    upstream = torch.randn(B, T, d_out, generator=g, **cuda64)
    dw = bb @ a if layer == "low_rank_linear" else w0 * (bb @ a)  # lora_add / lora_mul

    # float64 reference: values and the gradient of <out, upstream> w.r.t. x
    x_ref = x.clone().requires_grad_(True)
    ref = _dense_noisy(x_ref, w0, b0, dw, db, z)
    (ref * upstream).sum().backward()

    x32 = x.float().requires_grad_(True)
    with torch.autocast("cuda", dtype=PRECISIONS[precision], enabled=precision != "fp32"):
        if layer == "low_rank_linear":
            out = low_rank_linear(x32, w0.float(), b0.float(), a.float(), bb.float(), db.float(), z.float())
        else:
            out = noisy_linear(x32, w0.float(), b0.float(), dw.float(), db.float(), z.float())
    (out.float() * upstream.float()).sum().backward()
    _close(out, ref, precision, f"{layer} output")
    _close(x32.grad, x_ref.grad, precision, f"{layer} input gradient")


def _adapted(factory, kind):
    torch.manual_seed(0)
    model = factory(drop_path_rate=0.0)
    inject_adapters(model, AdapterConfig(kind=kind, rank=4), num_classes=4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind", ["lora_add", "lora_mul+vpt_add", "lora_add+vpt_add", "ssf"])
@pytest.mark.parametrize("factory", [tiny_vit, tiny_swin])
def test_train_forward_unmerged_eval_and_merged_agree_on_cuda(precision, kind, factory):
    """Training forward (no noise) = unmerged eval exactly; merged = float64 reference to tolerance."""
    model = _adapted(factory, kind)
    base_state = {k: v.clone() for k, v in model.state_dict().items()
                  if k.rpartition(".")[2] not in registered_tensor_names()}
    merged_state = merge_state_dict(base_state, adapter_state_dict(model), kind)
    merged = factory(drop_path_rate=0.0)
    merged.reset_classifier(4)
    merged.load_state_dict(merged_state)
    reference = factory(drop_path_rate=0.0)  # float64 on the GPU: the merged weights, exactly
    reference.reset_classifier(4)
    reference.load_state_dict(merged_state)
    x = torch.randn(3, 3, 32, 32, device="cuda")
    model.cuda()
    merged.cuda().eval()
    reference.cuda().double().eval()
    with torch.no_grad():
        expected = reference(x.double())
        with torch.autocast("cuda", dtype=PRECISIONS[precision], enabled=precision != "fp32"):
            train_logits = model.train()(x)
            eval_logits = model.eval()(x)
            merged_logits = merged(x)
    assert torch.equal(train_logits, eval_logits)
    _close(eval_logits.float(), expected, precision, "unmerged logits")
    _close(merged_logits.float(), expected, precision, "merged logits")


@pytest.mark.parametrize("kind", ["lora_add", "lora_mul", "lora_mul+vpt_add", "lora_add+vpt_add", "bitfit", "ssf"])
def test_layer_delta_on_cuda_equals_cpu(kind):
    """adapter_delta (what merge uses) gives the CPU numbers on the GPU, in float64."""
    model = _adapted(tiny_vit, kind).double()
    layer = next(iter(adapted_layers(model).values()))
    cpu = adapter_delta(kind, layer.weight, layer.bias, layer.adapter_tensors())
    layer.cuda()
    gpu = adapter_delta(kind, layer.weight, layer.bias, layer.adapter_tensors())
    for c, g in zip(cpu, gpu):
        if c is not None:
            torch.testing.assert_close(g.cpu(), c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("variant", ["pace", "fast"])
def test_cli_train_merge_eval_round_trip_on_cuda(tmp_path, precision, variant):
    """The whole command line on the GPU: train, merge; merged and unmerged eval agree."""
    from test_cli import invoke, json_of, write_recipe

    recipe = write_recipe(tmp_path, kind="lora_add" if variant == "fast" else "lora_mul+vpt_add",
                          variant=variant)
    overrides = ["--set", "train.device=cuda", "--set", f"train.precision={precision}"]
    trained = invoke("train", recipe, *overrides, "--json")
    assert trained.exit_code == 0, trained.output
    run = tmp_path / "run"
    base, merged = tmp_path / "base.safetensors", tmp_path / "merged.safetensors"
    assert invoke("export-base", recipe, "-o", base).exit_code == 0
    assert invoke("merge", base, run / "adapter.safetensors", "-o", merged, "--json").exit_code == 0
    merged_eval = json_of(invoke("eval", recipe, *overrides, "--weights", merged, "--json"))
    unmerged_eval = json_of(invoke("eval", recipe, *overrides, "--adapter", run / "adapter.safetensors",
                                   "--unmerged", "--json"))
    loss_tol = 1e-4 if precision == "fp32" else 2e-2
    assert abs(merged_eval["loss"] - unmerged_eval["loss"]) < loss_tol
    # one near-tie flipping under bf16/fp16 rounding is allowed; fp32 must agree exactly
    flips = 0 if precision == "fp32" else 1
    assert abs(merged_eval["top1"] - unmerged_eval["top1"]) * merged_eval["samples"] <= flips + 1e-6
