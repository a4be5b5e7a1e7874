import pytest
import torch
from helpers import tiny_swin, tiny_vit
from torch import nn

from pace_cli.adapters import AdapterConfig, adapter_state_dict, inject_adapters, merge_layer, merge_state_dict
from pace_cli.adapters.kinds import KINDS
from pace_cli.errors import PaceError
from pace_cli.regularizer import PaceConfig, PaceRegularizer

MERGE_ERRORS: dict[str, float] = {}


def train_a_little(factory, kind, steps=4):
    torch.manual_seed(1)
    base = factory(drop_path_rate=0.1)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model = factory(drop_path_rate=0.1)
    model.load_state_dict(base_state)
    inject_adapters(model, AdapterConfig(kind=kind, rank=3), num_classes=3)
    reg = PaceRegularizer(model, PaceConfig(variant="pace", sigma=1.0, lambda_=1.0))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.05)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))
        opt.zero_grad()
        reg.loss(x, y).total.backward()
        opt.step()
    reg.remove()
    return base_state, model


@pytest.mark.parametrize("arch,factory", [("vit", tiny_vit), ("swin", tiny_swin)])
@pytest.mark.parametrize("kind", list(KINDS))
def test_merged_plain_model_matches_adapted_model(arch, factory, kind):
    base_state, model = train_a_little(factory, kind)
    adapter = adapter_state_dict(model)
    zero_init = {t.name for t in KINDS[kind].tensors if t.init == "zeros"}  # lora_B, prompt_B, ssf_scale, ...
    ones_init = {t.name for t in KINDS[kind].tensors if t.init == "ones"}  # ia3's scales
    moved = [k for k, v in adapter.items() if k.rpartition(".")[2] in zero_init and v.abs().sum() > 0]
    moved += [k for k, v in adapter.items() if k.rpartition(".")[2] in ones_init and (v != 1).any()]
    assert moved or not KINDS[kind].adapts_layers  # training moved the adapters off ΔW = Δb = 0
    merged = merge_state_dict(base_state, adapter, kind)
    plain = factory(num_classes=3)
    assert set(merged) == set(plain.state_dict())
    plain.load_state_dict(merged, strict=True)
    plain.eval()
    model.eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected, got = model(x), plain(x)
    scale = expected.abs().max().item()
    error = (expected - got).abs().max().item()
    MERGE_ERRORS[f"{arch}/{kind}"] = error / scale
    print(f"merge {arch} {kind}: max abs diff {error:.2e}, logit scale {scale:.2f}")
    assert error <= 1e-5 * max(scale, 1.0)


def test_merge_layer_bf16_computed_in_float32():
    torch.manual_seed(3)
    W0 = torch.randn(16, 8).to(torch.bfloat16)
    b0 = torch.randn(16).to(torch.bfloat16)
    t = {"lora_A": torch.randn(2, 8), "lora_B": torch.randn(16, 2) * 0.01, "delta_bias": torch.randn(16) * 0.01,
         "prompt_B": torch.randn(8, 2) * 0.01, "prompt_A": torch.randn(2, 1)}
    W, b = merge_layer("lora_mul+vpt_add", W0, b0, t)
    assert W.dtype == torch.bfloat16 and b.dtype == torch.bfloat16
    # reference in float64 from the formula, then rounded to bf16
    w64, b64 = W0.double(), b0.double()
    ref_W = w64 + w64 * (t["lora_B"].double() @ t["lora_A"].double())
    ref_b = b64 + b64 * t["delta_bias"].double() + w64 @ (t["prompt_B"].double() @ t["prompt_A"].double()).squeeze(1)
    ulp = 2.0 ** -7  # bf16 has 8 significant bits: one rounding step is at most this, relatively
    assert ((W.double() - ref_W).abs() <= ulp * ref_W.abs() + 1e-30).all()
    assert ((b.double() - ref_b).abs() <= ulp * ref_b.abs() + 1e-30).all()
    # computing in bf16 would lose the small update that float32 keeps
    assert not torch.equal(W, W0)


def test_merge_state_dict_bf16_base_keeps_dtype():
    base_state, model = train_a_little(tiny_vit, "lora_add", steps=2)
    bf16_base = {k: v.to(torch.bfloat16) for k, v in base_state.items()}
    merged = merge_state_dict(bf16_base, adapter_state_dict(model), "lora_add")
    assert all(v.dtype == torch.bfloat16 for v in merged.values())
    reference = merge_state_dict(base_state, adapter_state_dict(model), "lora_add")
    for key in merged:
        torch.testing.assert_close(merged[key].float(), reference[key].to(torch.bfloat16).float(), rtol=1e-2, atol=1e-2)


def test_merge_refuses_nan_and_shape_mismatch_and_unknown_layer():
    base_state, model = train_a_little(tiny_vit, "lora_mul", steps=1)
    adapter = adapter_state_dict(model)
    bad = dict(adapter)
    bad["blocks.0.attn.qkv.lora_B"] = bad["blocks.0.attn.qkv.lora_B"].clone()
    bad["blocks.0.attn.qkv.lora_B"][0, 0] = float("nan")
    with pytest.raises(PaceError, match="NaN"):
        merge_state_dict(base_state, bad, "lora_mul")
    other_base = tiny_vit(embed_dim=48, num_heads=2).state_dict()
    with pytest.raises(PaceError, match="another base model"):
        merge_state_dict(other_base, adapter, "lora_mul")
    with pytest.raises(PaceError, match="another base model"):
        merge_state_dict(tiny_vit(depth=1).state_dict(), adapter, "lora_mul")
    with pytest.raises(PaceError, match="kind"):
        merge_state_dict(base_state, adapter, "vpt_add")


def test_bias_less_base_layer():
    layer_w = torch.randn(4, 6)
    t = {"lora_A": torch.randn(2, 6), "lora_B": torch.randn(4, 2)}
    W, b = merge_layer("lora_add", layer_w, None, t)
    assert b is None
    torch.testing.assert_close(W, layer_w + t["lora_B"] @ t["lora_A"])
    with pytest.raises(PaceError, match="no bias"):
        merge_layer("lora_add", layer_w, None, {**t, "delta_bias": torch.zeros(4)})
    with pytest.raises(PaceError, match="no bias"):
        merge_layer("vpt_add", layer_w, None, {"prompt_A": torch.randn(2, 1), "prompt_B": torch.randn(6, 2)})


def test_merge_of_bias_less_model_loads_strictly():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(nn.Sequential(nn.Linear(5, 5, bias=False)))
            self.head = nn.Linear(5, 2)

        def get_classifier(self):
            return self.head

        def reset_classifier(self, n):
            self.head = nn.Linear(5, n)

        def forward(self, x):
            return self.head(self.blocks(x))

    base = Tiny()
    model = Tiny()
    model.load_state_dict(base.state_dict())
    inject_adapters(model, AdapterConfig(kind="lora_add", rank=2, targets=("blocks.0.0",)), num_classes=3)
    with torch.no_grad():
        model.blocks[0][0].lora_B.normal_()
    merged = merge_state_dict(base.state_dict(), adapter_state_dict(model), "lora_add")
    plain = Tiny()
    plain.reset_classifier(3)
    plain.load_state_dict(merged, strict=True)
    x = torch.randn(4, 5)
    torch.testing.assert_close(plain(x), model.eval()(x))
