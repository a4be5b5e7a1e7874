"""Keeping the two copies of a sample paired: the same drop masks for both, noise drawn per sample.

PACE compares two noisy passes over the same batch (paper §3.5): every other random layer,
DropPath and dropout, must draw the same mask for both copies, so the adapter noise is the only
difference. :class:`PairState` tells the model's modules whether the batch is duplicated, and
the hooks duplicate it where the copies start to differ, noise the head, and count samples.
:func:`float32_forward` keeps the head in float32 under autocast, so the logits whose
differences make the consistency term are not rounded to bf16.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pace_cli.adapters import PACE_NOISE, NoiseMode, noise_dtype, sample_noise
from pace_cli.distributed import SampleLayout


class PairState:
    """Whether the batch flowing through the model right now is [x; x; …] (``copies`` copies of each
    sample, two for PACE), how many samples it holds (copies · B once duplicated), for the adapters'
    per-sample noise, where those samples sit in the global batch (``layout``), so random draws do
    not depend on the rank, and which noise the adapters draw (``noise_mode``, read by
    :func:`pace_cli.adapters.draw_noise` and :func:`pace_cli.adapters.add_noisy`)."""

    def __init__(self, copies: int = 2, noise_mode: NoiseMode = PACE_NOISE):
        self.armed = False
        self.paired = False
        self.copies = copies
        self.noise_mode = noise_mode
        self.samples: int | None = None
        self.layout: SampleLayout | None = None

    def uniform(self, like: Tensor, rows: int, rest: tuple[int, ...]) -> Tensor:
        """U[0, 1) draws [rows, *rest] for one copy of the batch's samples, from the step's generator
        when there is one; float32 for a half-precision ``like``, so a mask compared with them is
        the same under autocast as without."""
        dtype = noise_dtype(like.dtype)
        if self.layout is None:
            return like.new_empty((rows,) + rest, dtype=dtype).uniform_()
        return self.layout.draw(rows, rest, copies=1, normal=False, dtype=dtype)

    def keep_mask(self, x: Tensor, keep: float, rest: tuple[int, ...]) -> Tensor:
        """A 0/1 mask in ``x``'s dtype, [rows of x, *rest], keeping each entry with probability
        ``keep``; drawn once per sample and repeated for its other copies when the batch is paired."""
        rows = x.shape[0] // self.copies if self.paired else x.shape[0]
        mask = (self.uniform(x, rows, rest) < keep).to(x.dtype)
        return torch.cat([mask] * self.copies) if self.paired else mask


class SharedDropPath(nn.Module):
    """Stochastic depth whose per-sample mask is shared by both copies of a duplicated batch."""

    def __init__(self, drop_prob: float, state: PairState, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep
        self.state = state

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = self.state.keep_mask(x, keep, (1,) * (x.dim() - 1))
        if self.scale_by_keep and keep > 0:
            mask.div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, shared by pairs"


class SharedDropout(nn.Module):
    """Dropout whose element mask is shared by both copies of a duplicated batch."""

    def __init__(self, p: float, state: PairState):
        super().__init__()
        self.p = p
        self.state = state

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        return x * self.state.keep_mask(x, keep, tuple(x.shape[1:])).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}, shared by pairs"


def share_random_masks(model: nn.Module, state: PairState) -> int:
    """Swap every DropPath and Dropout for a pair-aware twin; returns how many were swapped.

    Fused attention draws its dropout inside the kernel where no mask can be shared, so
    attention modules with a non-zero attention dropout fall back to their explicit path.
    """
    from timm.layers import DropPath

    swapped = 0
    for name, module in list(model.named_modules()):
        replacement = None
        if isinstance(module, DropPath):
            replacement = SharedDropPath(module.drop_prob, state, getattr(module, "scale_by_keep", True))
        elif isinstance(module, nn.Dropout):
            replacement = SharedDropout(module.p, state)
        elif getattr(module, "fused_attn", False) and getattr(getattr(module, "attn_drop", None), "p", 0.0) > 0:
            module.fused_attn = False
        if replacement is not None:
            parent_path, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, child, replacement)
            swapped += 1
    return swapped


class Float32Forward:
    """A module's forward run in float32 under autocast: float tensor arguments cast to float32 and
    autocast off inside. Outside autocast it calls the forward untouched.

    Installed as the module's own ``forward`` attribute (:func:`float32_forward`), so the module,
    its parameters and its state-dict keys stay as they are, and its hooks still run around it.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.inner = module.forward

    def __call__(self, *args, **kwargs):
        device_type = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        if not torch.is_autocast_enabled(device_type):
            return self.inner(*args, **kwargs)
        widen = lambda a: a.float() if isinstance(a, Tensor) and a.is_floating_point() else a  # noqa: E731
        with torch.autocast(device_type, enabled=False):
            return self.inner(*(widen(a) for a in args), **{k: widen(v) for k, v in kwargs.items()})

    def remove(self) -> None:
        """Give the module back its own forward (if this wrapper is still the one installed)."""
        if self.module.__dict__.get("forward") is self:
            del self.module.forward


def float32_forward(module: nn.Module) -> Float32Forward:
    """Make ``module`` run in float32 under autocast until the returned handle's ``remove()``.

    For the classifier head: the consistency term compares the two copies' logits, and a bf16
    head would round them (and the head noise's effect) to 8 bits. On a module that already runs
    this way nothing is installed and the handle's ``remove()`` does nothing, so an inner
    installation (evaluation during training) does not undo the outer one (the regulariser's).
    """
    wrapper = Float32Forward(module)
    if not isinstance(module.__dict__.get("forward"), Float32Forward):
        module.forward = wrapper
    return wrapper


def head_noise_hook(state: PairState):
    def hook(module: nn.Module, inputs, output: Tensor):
        sigma = getattr(module, "pace_sigma", 0.0)
        if module.training and sigma > 0:
            # The whole head output counts as adapter output (h0 = 0, Δh = the logits), so the
            # adapter and output perturbations are one here and only additive noise differs.
            z = sample_noise(output, sigma, batch=state)
            return output + z if state.noise_mode.noise == "additive" else output * z
        return None

    return hook


def duplicate_hook(state: PairState):
    def hook(module: nn.Module, args):
        if state.armed and not state.paired:
            state.paired = True
            state.samples = state.copies * args[0].shape[0]
            return (torch.cat([args[0]] * state.copies),) + tuple(args[1:])
        return None

    return hook


def count_samples_hook(state: PairState):
    def hook(module: nn.Module, args):
        state.samples = args[0].shape[0] if args and isinstance(args[0], Tensor) else None

    return hook
