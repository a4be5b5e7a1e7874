import pytest
import torch
from helpers import tiny_swin, tiny_vit
from torch import nn

from pace_cli.adapters import AdaptedLinear, AdapterConfig, inject_adapters
from pace_cli.errors import PaceError
from pace_cli.regularizer import PaceConfig, PaceRegularizer, fp_distance, sigma_schedule


def noisy_layer(kind="lora_add", sigma=0.5, d_in=8, d_out=6):
    layer = AdaptedLinear(nn.Linear(d_in, d_out), kind, rank=2)
    with torch.no_grad():
        for p in layer.adapter_tensors().values():
            p.normal_()
    layer.noise_sigma = sigma
    return layer


def implied_noise(layer, x):
    """z recovered from h = h0 + z * Δh, with h0 and Δh computed densely in the test."""
    with torch.no_grad():
        out = layer(x)
        h0 = x @ layer.weight.T + layer.bias
        dW, db = layer.delta()
        dh = (x @ dW.T if dW is not None else 0) + db
    return (out - h0) / dh


@pytest.mark.parametrize("kind", ["lora_add", "lora_mul", "lora_mul+vpt_add"])
def test_noise_statistics_and_sharing(kind):
    sigma = 0.5
    layer = noisy_layer(kind, sigma).double().train()
    x = torch.randn(4000, 3, 8, dtype=torch.float64)
    z = implied_noise(layer, x)  # [B, T, d_out]
    # shared by every token of a sample
    torch.testing.assert_close(z, z[:, :1].expand_as(z), rtol=1e-6, atol=1e-6)
    per_sample = z[:, 0]
    assert abs(per_sample.mean().item() - 1.0) < 0.03
    assert abs(per_sample.std().item() - sigma) < 0.03
    # independent across samples and across channels
    corr_samples = torch.corrcoef(torch.stack([per_sample[:-1, 0], per_sample[1:, 0]]))[0, 1]
    corr_channels = torch.corrcoef(torch.stack([per_sample[:, 0], per_sample[:, 1]]))[0, 1]
    assert abs(corr_samples) < 0.1 and abs(corr_channels) < 0.1


@pytest.mark.parametrize("kind", ["lora_add", "lora_mul+vpt_add"])
@pytest.mark.parametrize("fused", [False, True])
def test_windows_of_one_sample_share_its_noise(monkeypatch, kind, fused):
    """Swin's window attention sees [samples x windows, tokens, C]; a sample's draw covers its windows."""
    from types import SimpleNamespace

    import pace_cli.adapters.fused as nl

    monkeypatch.setattr(nl, "MIN_TOKENS_PER_SAMPLE", 1 if fused else 10**9)
    samples, windows = 3, 4
    layer = noisy_layer(kind, sigma=0.7).double().train()
    layer.batch_state = SimpleNamespace(samples=samples)
    z = implied_noise(layer, torch.randn(samples * windows, 5, 8, dtype=torch.float64))[:, 0]
    per_sample = z.view(samples, windows, -1)
    torch.testing.assert_close(per_sample, per_sample[:, :1].expand_as(per_sample), rtol=1e-6, atol=1e-6)
    assert (per_sample[0, 0] - per_sample[1, 0]).abs().min() > 0  # samples differ
    layer.batch_state = None  # no sample count known: every row gets its own draw
    z = implied_noise(layer, torch.randn(samples * windows, 5, 8, dtype=torch.float64))[:, 0]
    assert (z[0] - z[1]).abs().min() > 0


def test_swin_window_attention_is_told_the_sample_count():
    model = tiny_swin(drop_path_rate=0.1)
    inject_adapters(model, AdapterConfig(kind="lora_mul+vpt_add", rank=2), num_classes=5)
    regularizer = PaceRegularizer(model, PaceConfig(variant="pace", sigma=1.0))
    seen = []
    qkv = model.get_submodule("layers.0.blocks.0.attn.qkv")
    qkv.register_forward_hook(lambda m, args, out: seen.append((args[0].shape[0], m.batch_state.samples)))
    model.train()
    batch = 3
    regularizer.loss(torch.randn(batch, 3, 32, 32), torch.randint(0, 5, (batch,)))
    rows, samples = seen[-1]
    assert samples == 2 * batch and rows % samples == 0 and rows > samples  # several windows per sample
    model(torch.randn(batch, 3, 32, 32))  # a plain pass resets the count
    assert seen[-1][1] == batch


def test_noise_independent_between_copies_and_absent_in_eval():
    layer = noisy_layer(sigma=1.0).double().train()
    x = torch.randn(2000, 3, 8, dtype=torch.float64)
    z = implied_noise(layer, torch.cat([x, x]))[:, 0, 0]
    first, second = z[:2000], z[2000:]
    assert abs(torch.corrcoef(torch.stack([first, second]))[0, 1]) < 0.1
    layer.eval()
    torch.testing.assert_close(implied_noise(layer, x), torch.ones(2000, 3, 6, dtype=torch.float64))


def test_vpt_noise_scales_the_bias_shift():
    layer = noisy_layer("vpt_add", sigma=0.8).double().train()
    x = torch.randn(3000, 2, 8, dtype=torch.float64)
    z = implied_noise(layer, x)
    torch.testing.assert_close(z, z[:, :1].expand_as(z), rtol=1e-6, atol=1e-6)
    assert abs(z[:, 0].std().item() - 0.8) < 0.04


def vit_layers(depth):
    return [f"blocks.{b}.{n}" for b in range(depth) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]


def test_sigma_schedule_vit12():
    schedule = sigma_schedule(vit_layers(12), "head", sigma=1.3)
    # 13 groups (12 blocks + head): block b gets 1.3 * (13 - b) / 13, the head 1.3 / 13
    assert schedule["blocks.0.attn.qkv"] == pytest.approx(1.3)
    assert schedule["blocks.0.mlp.fc2"] == pytest.approx(1.3)
    assert schedule["blocks.1.attn.proj"] == pytest.approx(1.2)
    assert schedule["blocks.11.mlp.fc1"] == pytest.approx(0.2)
    assert schedule["head"] == pytest.approx(0.1)
    assert len(schedule) == 12 * 4 + 1


def test_sigma_schedule_vit12_noise_free_first_block():
    schedule = sigma_schedule(vit_layers(12), "head", sigma=1.2, noise_free_blocks=1)
    # block 0 silent; 12 groups remain (11 blocks + head): 1.2, 1.1, ..., 0.1
    assert all(schedule[f"blocks.0.{n}"] == 0 for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    assert schedule["blocks.1.attn.qkv"] == pytest.approx(1.2)
    assert schedule["blocks.6.attn.qkv"] == pytest.approx(0.7)
    assert schedule["blocks.11.mlp.fc2"] == pytest.approx(0.2)
    assert schedule["head"] == pytest.approx(0.1)


def test_sigma_schedule_swin_from_real_model():
    model = tiny_swin(depths=(2, 2))
    report = inject_adapters(model, AdapterConfig(kind="lora_add", rank=2, targets=("qkv", "fc2", "reduction")))
    schedule = sigma_schedule(report.adapted_layers, report.head_name, sigma=1.0)
    # groups in depth order: stage0 block0, stage0 block1, stage1 downsample, stage1 block0, stage1 block1, head
    assert schedule["layers.0.blocks.0.attn.qkv"] == pytest.approx(1.0)
    assert schedule["layers.0.blocks.1.mlp.fc2"] == pytest.approx(5 / 6)
    assert schedule["layers.1.downsample.reduction"] == pytest.approx(4 / 6)
    assert schedule["layers.1.blocks.0.attn.qkv"] == pytest.approx(3 / 6)
    assert schedule["layers.1.blocks.1.attn.qkv"] == pytest.approx(2 / 6)
    assert schedule["head.fc"] == pytest.approx(1 / 6)
    with pytest.raises(PaceError, match="noise_free_blocks"):
        sigma_schedule(report.adapted_layers, report.head_name, 1.0, noise_free_blocks=9)


def pace_model(variant="pace", sigma=1.0, drop_path=0.3, noise_free_blocks=0, factory=tiny_vit, **kw):
    model = factory(drop_path_rate=drop_path, **kw)
    inject_adapters(model, AdapterConfig(kind="lora_mul+vpt_add", rank=2), num_classes=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("lora_B", "prompt_B")):
                p.normal_(std=0.1)
    reg = PaceRegularizer(model, PaceConfig(variant=variant, sigma=sigma, lambda_=1.0,
                                            noise_free_blocks=noise_free_blocks),
                          num_train_samples=16, num_classes=4)
    return model.train(), reg


@pytest.mark.parametrize("factory", [tiny_vit, tiny_swin])
@pytest.mark.parametrize("noise_free_blocks", [0, 1])
def test_zero_sigma_with_drop_path_gives_identical_halves(factory, noise_free_blocks):
    model, reg = pace_model(sigma=0.0, drop_path=0.5, noise_free_blocks=noise_free_blocks, factory=factory)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 4, (6,))
    logits = reg.paired_forward(x)
    first, second = logits.chunk(2)
    assert torch.equal(first, second)
    assert reg.loss(x, y).consistency.item() == 0.0
    # drop path is really active: another draw gives other logits
    assert not torch.allclose(reg.paired_forward(x)[:6], first)


def test_shared_prefix_runs_once():
    model, reg = pace_model(noise_free_blocks=1, factory=tiny_vit, depth=3)
    assert reg.duplicate_at == "blocks.1"
    seen = {}
    for name in ("blocks.0", "blocks.1", "blocks.2"):
        model.get_submodule(name).register_forward_hook(
            lambda m, a, out, name=name: seen.__setitem__(name, out.shape[0]))
    logits = reg.paired_forward(torch.randn(5, 3, 32, 32))
    assert logits.shape == (10, 4)
    assert seen == {"blocks.0": 5, "blocks.1": 10, "blocks.2": 10}


def test_consistency_positive_and_gradients_reach_only_trainable():
    model, reg = pace_model(sigma=1.0)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 4, (6,))
    parts = reg.loss(x, y)
    assert parts.consistency.item() > 0
    first, second = reg.paired_forward(x).chunk(2)
    assert not torch.allclose(first, second)
    parts.total.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("lora_A"))


def test_consistency_term_matches_definition():
    model, reg = pace_model(sigma=0.7)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    parts = reg.loss(x, y, step=5)
    reg.use_step_noise(5, global_size=4, offset=0, local_size=4)  # the same step's draws again
    f1, f2 = reg.paired_forward(x).chunk(2)
    expected = sum(((f1[i] - f2[i]) ** 2).sum() for i in range(4)) / 4
    torch.testing.assert_close(parts.consistency, expected)
    torch.testing.assert_close(parts.ce, nn.functional.cross_entropy(f1, y))
    torch.testing.assert_close(parts.total, parts.ce + expected)


def test_off_variant_has_no_noise_and_no_term():
    model, reg = pace_model(variant="off", sigma=2.0, drop_path=0.0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    assert all(s == 0 for s in reg.sigmas.values())
    parts = reg.loss(x, y)
    assert parts.consistency.item() == 0
    torch.testing.assert_close(model(x), model(x))  # deterministic: no noise


def test_lazy_alternates():
    model, reg = pace_model(variant="lazy", sigma=1.0)
    reg.config = PaceConfig(variant="lazy", sigma=1.0, lambda_=1.0, lazy_interval=3)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    regular = reg.loss(x, y, step=3)
    assert regular.consistency.item() > 0 and regular.logits.shape[0] == 4  # half the batch, duplicated
    plain = reg.loss(x, y, step=4)
    assert plain.consistency.item() == 0 and plain.logits.shape[0] == 8
    # noise stays on in the plain steps
    assert not torch.allclose(model(x), model(x))


def test_fast_memory_first_visit_and_update():
    model, reg = pace_model(variant="fast", sigma=1.0, drop_path=0.0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    idx = torch.tensor([3, 7, 8, 15])
    first = reg.loss(x, y, indices=idx)
    assert first.consistency.item() == 0.0
    assert reg.seen[idx].all() and reg.seen.sum() == 4
    torch.testing.assert_close(reg.memory[idx], first.logits.detach())
    assert reg.memory[0].abs().sum() == 0
    second = reg.loss(x, y, indices=idx, step=1)  # another step draws other noise
    expected = ((second.logits.detach() - first.logits.detach()) ** 2).sum(1).mean()
    torch.testing.assert_close(second.consistency.detach(), expected)
    assert second.consistency.item() > 0
    # half seen, half new: only the seen ones count, averaged over the batch
    idx2 = torch.tensor([3, 7, 0, 1])
    third = reg.loss(x, y, indices=idx2)
    prev = torch.cat([second.logits.detach()[:2]])
    expected = ((third.logits.detach()[:2] - prev) ** 2).sum(1).sum() / 4
    torch.testing.assert_close(third.consistency.detach(), expected)


def test_fp_distance_zero_at_init_and_positive_after_change():
    model = tiny_vit(drop_path_rate=0.0)
    inject_adapters(model, AdapterConfig(kind="lora_add", rank=2))
    x = torch.randn(3, 3, 32, 32)
    assert fp_distance(model, x) == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        model.blocks[0].attn.qkv.lora_B.normal_()
    assert fp_distance(model, x) > 0
