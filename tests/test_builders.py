"""Optimiser and compile helpers: what the training loop builds from [train] and [optim]."""

import pytest
import torch
from helpers import tiny_vit

from pace_cli.adapters import AdapterConfig, inject_adapters
from pace_cli.builders import make_optimizer, maybe_compile
from pace_cli.recipe.schema import Recipe
from pace_cli.regularizer import PaceConfig, PaceRegularizer


def _recipe(**train):
    return Recipe.model_validate({"model": {"name": "vit_tiny_patch16_224"}, "data": {"source": "synthetic"},
                                  "optim": {"lr": 3e-3, "weight_decay": 0.01}, "train": train})


def test_make_optimizer_takes_the_recipe_and_fuses_only_on_cuda():
    param = torch.nn.Parameter(torch.zeros(3))
    opt = make_optimizer([param], _recipe(), "cpu")
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["lr"] == 3e-3 and group["weight_decay"] == 0.01 and not group["fused"]


def test_maybe_compile_is_a_no_op_by_default():
    model = torch.nn.Linear(2, 2)
    assert maybe_compile(model, _recipe()) is model
    assert getattr(model, "_compiled_call_impl", None) is None


def _losses(compiled: bool, variant: str, steps: int = 3) -> list[float]:
    torch.manual_seed(0)
    model = tiny_vit(depth=2, drop_path_rate=0.0)
    inject_adapters(model, AdapterConfig(kind="lora_add", rank=4), num_classes=3)
    reg = PaceRegularizer(model, PaceConfig(variant=variant, sigma=0.5), num_train_samples=8, num_classes=3)
    maybe_compile(model, _recipe(compile=compiled))
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], _recipe(), "cpu")
    g = torch.Generator().manual_seed(1)
    images, labels = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 0])
    model.train()
    losses = []
    for step in range(steps):
        torch.manual_seed(100 + step)  # same noise draws in both runs (see fallback_random below)
        parts = reg.loss(images, labels, torch.arange(4), step)
        opt.zero_grad(set_to_none=True)
        parts.total.backward()
        opt.step()
        losses.append(parts.total.item())
    return losses


@pytest.mark.parametrize("variant", ["off", "pace"])
def test_compiled_training_gives_the_eager_losses(variant):
    """A few AdamW steps through torch.compile reach the eager losses (CPU, inductor)."""
    try:
        import torch._inductor.config as inductor_config
    except ImportError:  # pragma: no cover - builds without inductor
        pytest.skip("torch was built without inductor")
    # Inductor draws random numbers with its own generator unless told to fall back to eager's;
    # with the fallback the PACE noise is the same draw in both runs, so the losses can match.
    torch._dynamo.reset()
    eager = _losses(False, variant)
    try:
        with inductor_config.patch(fallback_random=True):
            compiled = _losses(True, variant)
    except Exception as exc:  # no C compiler or another toolchain problem: say so, visibly
        if "compiler" in str(exc).lower() or "InvalidCxxCompiler" in type(exc).__name__:
            pytest.skip(f"torch.compile cannot build kernels on this machine: {exc}")
        raise
    finally:
        torch._dynamo.reset()
    assert eager[0] != eager[-1]  # training moved
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=1e-5)
