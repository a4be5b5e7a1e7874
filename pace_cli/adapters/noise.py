"""PACE's noise on adapter outputs, one draw per sample and output channel, in every mode of the ablations.

The single place the noise mode lives (paper Table 6): :func:`draw_noise` draws z for the mode the
regulariser's batch state names, and :func:`add_noisy` combines it with a layer's frozen output h0
and adapter output Δh. An adapter kind whose noisy forward ends in
``add_noisy(base, delta, z, batch=self.batch_state)`` gets every mode without code of its own.

=========================  ==================  ==========================================
mode (noise, perturb)      z                   output
=========================  ==================  ==========================================
gaussian, adapter (PACE)   1 + σ·N(0, 1)       h0 + z ⊙ Δh
dropout, adapter           Bernoulli(q) / q    h0 + z ⊙ Δh,  q = 1 − p,  p = σ² / (1 + σ²)
gaussian|dropout, output   as above            z ⊙ (h0 + Δh)              (PACE_h)
additive                   σ·N(0, 1)           h0 + Δh + z                (PACE_add)
=========================  ==================  ==========================================

The dropout keep rate q is chosen so that Var(z) = (1 − q) / q = σ², the Gaussian mode's variance.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import torch
from torch import Tensor

from pace_cli.recipe.schema import PaceNoise, PacePerturb

NOISES = typing.get_args(PaceNoise)
PERTURBS = typing.get_args(PacePerturb)


@dataclass(frozen=True)
class NoiseMode:
    """Which noise PACE draws (``noise``) and what it multiplies (``perturb``); the default is the paper's PACE."""

    noise: str = "gaussian"
    perturb: str = "adapter"

    def __post_init__(self):
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {', '.join(NOISES)}, got {self.noise!r}")
        if self.perturb not in PERTURBS:
            raise ValueError(f"perturb must be one of {', '.join(PERTURBS)}, got {self.perturb!r}")

    @property
    def scales_delta(self) -> bool:
        """Whether the output is h0 + z ⊙ Δh, the form the fused and factored fast paths compute."""
        return self.noise != "additive" and self.perturb == "adapter"


PACE_NOISE = NoiseMode()


def noise_mode(batch) -> NoiseMode:
    """The mode the regulariser's batch state carries (the paper's PACE when there is none)."""
    return getattr(batch, "noise_mode", None) or PACE_NOISE


def dropout_keep(sigma: float) -> float:
    """Keep rate q of the dropout mode: Bernoulli(q) / q has variance (1 − q) / q = σ²."""
    return 1.0 / (1.0 + sigma * sigma)


def draw_noise(rows: int, channels: int, sigma: float, samples: int | None = None, *,
               device: torch.device | str | None = None, dtype: torch.dtype | None = None,
               batch=None) -> Tensor:
    """Noise z for the batch state's mode (module docstring), one draw per sample and channel: [samples, channels].

    In float32 for a half-precision ``dtype`` (a layer under autocast), else in ``dtype``: in
    bfloat16, 1 + z is spaced 2^-8 apart above 1, so at sigma = 0.01 a bf16 draw would take
    about 18 distinct values. :func:`add_noisy` combines with it in float32 too.

    Shared by every token of a sample, this equals noise on the rows of ΔW (paper §3.5) at a
    fraction of the cost. ``rows`` is the leading dim of a layer's input; in Swin's window
    attention that is samples × windows, with a sample's windows next to each other, and each
    sample's draw covers all its rows. Without a ``samples`` count that divides ``rows``, every
    row is taken for a sample.

    ``batch`` (the regulariser's batch state) may carry a :class:`~pace_cli.distributed.SampleLayout`:
    then the draw comes from the step's shared generator, keyed by the sample's place in the global
    batch, so it does not depend on which process or how many handle the sample. Every mode takes
    one tensor of draws per call, so the modes share that keying. A paired batch holds
    ``batch.copies`` noisy copies of each sample (two when unset).
    """
    groups = samples if samples and rows % samples == 0 else rows
    dtype = noise_dtype(dtype)
    mode = noise_mode(batch)
    normal = mode.noise != "dropout"
    layout = getattr(batch, "layout", None)
    if layout is not None:
        copies = getattr(batch, "copies", 2) if batch.paired else 1
        draws = layout.draw(groups, (channels,), copies=copies, normal=normal, dtype=dtype)
    elif normal:
        draws = torch.randn(groups, channels, device=device, dtype=dtype)
    else:
        draws = torch.rand(groups, channels, device=device, dtype=dtype)
    if mode.noise == "gaussian":
        return draws.mul_(sigma).add_(1.0)
    if mode.noise == "additive":
        return draws.mul_(sigma)
    keep = dropout_keep(sigma)
    return (draws < keep).to(dtype).div_(keep)


def noise_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The dtype PACE noise is drawn and applied in for a layer computing in ``dtype``: float32 or wider."""
    return torch.float32 if dtype is None else torch.promote_types(dtype, torch.float32)


def noise_for(like: Tensor, z: Tensor) -> Tensor:
    """Per-sample noise z [samples, d_out] shaped to multiply ``like`` [rows, ..., d_out].

    Each sample's draw is repeated over its rows (Swin's windows) and broadcast over its tokens.
    """
    rows = like.shape[0]
    per_row = z if len(z) == rows else z.repeat_interleave(rows // len(z), dim=0)
    return per_row.view((rows,) + (1,) * (like.dim() - 2) + (z.shape[-1],))


def sample_noise(like: Tensor, sigma: float, batch=None) -> Tensor:
    """``draw_noise`` with a draw per row of ``like`` [rows, ..., d_out], shaped to combine with it
    (float32 for a half-precision ``like``)."""
    return noise_for(like, draw_noise(like.shape[0], like.shape[-1], sigma, device=like.device, dtype=like.dtype,
                                      batch=batch))


def add_noisy(base: Tensor, delta: Tensor, z: Tensor, *, batch=None) -> Tensor:
    """h0 + z ⊙ Δh (the paper's PACE), or the batch state's other mode (module docstring), for
    ``base`` = h0 and ``delta`` = Δh [rows, ..., d_out] and z [samples, d_out] from :func:`draw_noise`
    with the same ``batch``.

    Computed in z's dtype (float32 when the layer runs in half precision under autocast) and
    rounded once to ``base``'s dtype, so the layer keeps the output dtype autocast gives it
    without rounding z or its product first. For float32 tensors the casts are no-ops.
    """
    out_dtype, wide = base.dtype, torch.promote_types(base.dtype, z.dtype)
    mode = noise_mode(batch)
    noise = noise_for(base, z)
    base, delta = base.to(wide), delta.to(wide)
    if mode.noise == "additive":
        out = base + delta + noise
    elif mode.perturb == "output":
        out = noise * (base + delta)
    else:
        out = base + noise * delta
    return out.to(out_dtype)
