import pytest
import torch
from helpers import MODEL_FACTORIES, tiny_swin, tiny_vit
from torch import nn

from pace_cli.adapters import (
    AdaptedLinear, AdapterConfig, adapter_delta, adapter_state_dict, adapters_disabled, inject_adapters,
    load_adapter_state_dict,
)
from pace_cli.adapters.kinds import KINDS
from pace_cli.errors import PaceError


def random_adapter(d_out, d_in, r, with_bias=True):
    return {
        "lora_A": torch.randn(r, d_in, dtype=torch.float64),
        "lora_B": torch.randn(d_out, r, dtype=torch.float64),
        "delta_bias": torch.randn(d_out, dtype=torch.float64),
        "prompt_B": torch.randn(d_in, r, dtype=torch.float64),
        "prompt_A": torch.randn(r, 1, dtype=torch.float64),
        "ssf_scale": torch.randn(d_out, dtype=torch.float64),
        "ssf_shift": torch.randn(d_out, dtype=torch.float64),
    }


def dense_reference(kind, W0, b0, t):
    """ΔW and Δb with explicit loops over entries: independent of the library's matmul formulation."""
    d_out, d_in = W0.shape
    r = t["lora_A"].shape[0]
    dW = torch.zeros(d_out, d_in, dtype=torch.float64)
    db = torch.zeros(d_out, dtype=torch.float64)
    if kind in ("lora_add", "lora_mul", "lora_mul+vpt_add", "lora_add+vpt_add"):
        for i in range(d_out):
            for j in range(d_in):
                s = sum(float(t["lora_B"][i, k]) * float(t["lora_A"][k, j]) for k in range(r))
                dW[i, j] = s if kind.startswith("lora_add") else float(W0[i, j]) * s
        if kind.startswith("lora_add"):
            db += t["delta_bias"]
        elif b0 is not None:
            db += b0 * t["delta_bias"]
    if kind == "bitfit":
        db += t["delta_bias"]
    if kind == "ssf":  # h = (1 + s) ⊙ (W0 x + b0) + β
        for i in range(d_out):
            for j in range(d_in):
                dW[i, j] = float(t["ssf_scale"][i]) * float(W0[i, j])
            db[i] = float(t["ssf_scale"][i]) * (float(b0[i]) if b0 is not None else 0.0) + float(t["ssf_shift"][i])
    if kind in ("vpt_add", "lora_mul+vpt_add", "lora_add+vpt_add"):
        p = [sum(float(t["prompt_B"][j, k]) * float(t["prompt_A"][k, 0]) for k in range(r)) for j in range(d_in)]
        for i in range(d_out):
            db[i] += sum(float(W0[i, j]) * p[j] for j in range(d_in))
    return dW, db


# The kinds whose dense reference is written here; the others have theirs in their own test modules.
LOW_RANK_KINDS = ["lora_add", "lora_mul", "vpt_add", "lora_mul+vpt_add"]


@pytest.mark.parametrize("kind", LOW_RANK_KINDS)
def test_delta_matches_dense_reference(kind):
    d_out, d_in, r = 7, 5, 3
    W0 = torch.randn(d_out, d_in, dtype=torch.float64)
    b0 = torch.randn(d_out, dtype=torch.float64)
    tensors = random_adapter(d_out, d_in, r)
    names = KINDS[kind].tensor_names(has_bias=True)
    dW, db = adapter_delta(kind, W0, b0, {n: tensors[n] for n in names})
    ref_dW, ref_db = dense_reference(kind, W0, b0, tensors)
    dW = torch.zeros_like(W0) if dW is None else dW
    torch.testing.assert_close(dW, ref_dW, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.zeros_like(b0) if db is None else db, ref_db, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["lora_add", "lora_mul"])
def test_bias_less_layer_gets_no_delta_bias(kind):
    layer = AdaptedLinear(nn.Linear(6, 4, bias=False), kind, rank=2)
    assert "delta_bias" not in dict(layer.named_parameters())
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 6)
    W0 = layer.weight.detach().double()
    ref_dW, _ = dense_reference(kind, W0, None, {**random_adapter(4, 6, 2), "lora_A": layer.lora_A.detach().double(),
                                                  "lora_B": layer.lora_B.detach().double()})
    layer.eval()
    torch.testing.assert_close(layer(x).double(), x.double() @ (W0 + ref_dW).T, rtol=1e-5, atol=1e-5)


def test_vpt_on_bias_less_layer_is_refused():
    with pytest.raises(PaceError, match="bias"):
        AdaptedLinear(nn.Linear(6, 4, bias=False), "vpt_add", rank=2)


@pytest.mark.parametrize("kind", LOW_RANK_KINDS)
def test_adapted_layer_eval_forward_matches_reference(kind):
    base = nn.Linear(5, 7).double()
    layer = AdaptedLinear(base, kind, rank=3).double()
    with torch.no_grad():
        for p in layer.adapter_tensors().values():
            p.normal_()
    layer.eval()
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    full = random_adapter(7, 5, 3)
    full.update({k: v.detach() for k, v in layer.adapter_tensors().items()})
    ref_dW, ref_db = dense_reference(kind, base.weight.detach(), base.bias.detach(), full)
    expected = x @ (base.weight.detach() + ref_dW).T + base.bias.detach() + ref_db
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ["vit", "deit", "swin"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_zero_init_keeps_base_logits(arch, kind):
    base = MODEL_FACTORIES[arch](drop_path_rate=0.0).eval()
    adapted = MODEL_FACTORIES[arch](drop_path_rate=0.0)
    adapted.load_state_dict(base.state_dict())
    inject_adapters(adapted, AdapterConfig(kind=kind, rank=4))  # keep the same head
    adapted.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), base(x), rtol=0, atol=1e-6)


def test_injection_report_and_freezing_vit():
    model = tiny_vit(depth=2)
    report = inject_adapters(model, AdapterConfig(kind="lora_mul+vpt_add", rank=4), num_classes=3)
    assert report.adapted_layers == [f"blocks.{b}.{n}" for b in range(2)
                                     for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    assert report.head_name == "head"
    # dims of the tiny ViT: width 32, qkv 96, mlp 128; per layer r*(d_in + d_out) + d_out + d_in*r + r
    shapes = [(96, 32), (32, 32), (128, 32), (32, 128)]
    per_block = sum(4 * (i + o) + o + i * 4 + 4 for o, i in shapes)
    assert report.adapter_parameters == 2 * per_block
    assert report.head_parameters == 3 * 32 + 3
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_state_dict(model))
    assert all(n.endswith(("lora_A", "lora_B", "delta_bias", "prompt_A", "prompt_B")) or n.startswith("head.")
               for n in trainable)
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == report.trainable_parameters


def test_adapter_state_dict_names_and_shapes():
    model = tiny_swin()
    inject_adapters(model, AdapterConfig(kind="lora_mul+vpt_add", rank=3), num_classes=4)
    state = adapter_state_dict(model)
    qkv = "layers.0.blocks.0.attn.qkv"
    assert state[f"{qkv}.lora_A"].shape == (3, 16)
    assert state[f"{qkv}.lora_B"].shape == (48, 3)
    assert state[f"{qkv}.delta_bias"].shape == (48,)
    assert state[f"{qkv}.prompt_B"].shape == (16, 3)
    assert state[f"{qkv}.prompt_A"].shape == (3, 1)
    assert state["head.fc.weight"].shape == (4, 32) and "head.fc.bias" in state
    assert not any(k.endswith(".weight") and "head" not in k for k in state)
    assert float(state[f"{qkv}.lora_B"].abs().sum()) == 0 and float(state[f"{qkv}.prompt_B"].abs().sum()) == 0
    assert float(state[f"{qkv}.lora_A"].abs().sum()) > 0


def test_target_patterns():
    model = tiny_vit()
    report = inject_adapters(model, AdapterConfig(kind="lora_add", rank=2, targets=("attn.qkv", "blocks.1.mlp.*")))
    assert report.adapted_layers == ["blocks.0.attn.qkv", "blocks.1.attn.qkv", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]
    with pytest.raises(PaceError, match="nomatch"):
        inject_adapters(tiny_vit(), AdapterConfig(kind="lora_add", rank=2, targets=("nomatch",)))
    with pytest.raises(PaceError, match="kind"):
        inject_adapters(tiny_vit(), AdapterConfig(kind="lora_typo", rank=2))


def test_load_adapter_state_dict_round_trip_and_mismatch():
    model = tiny_vit()
    inject_adapters(model, AdapterConfig(kind="lora_mul", rank=2), num_classes=3)
    state = {k: torch.randn_like(v) for k, v in adapter_state_dict(model).items()}
    other = tiny_vit()
    inject_adapters(other, AdapterConfig(kind="lora_mul", rank=2), num_classes=3)
    load_adapter_state_dict(other, state)
    for k, v in adapter_state_dict(other).items():
        assert torch.equal(v, state[k])
    wrong_rank = tiny_vit()
    inject_adapters(wrong_rank, AdapterConfig(kind="lora_mul", rank=3), num_classes=3)
    with pytest.raises(PaceError, match="shape"):
        load_adapter_state_dict(wrong_rank, state)
    with pytest.raises(PaceError, match="missing"):
        load_adapter_state_dict(other, {k: v for k, v in state.items() if "blocks.1" not in k})


def test_adapters_disabled_gives_base_outputs():
    base = tiny_vit(drop_path_rate=0.0).eval()
    adapted = tiny_vit(drop_path_rate=0.0)
    adapted.load_state_dict(base.state_dict())
    inject_adapters(adapted, AdapterConfig(kind="lora_add", rank=2))
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_()
    adapted.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(adapted(x), base(x), atol=1e-4)
        with adapters_disabled(adapted):
            torch.testing.assert_close(adapted(x), base(x), rtol=0, atol=1e-6)
