"""PACE's multiplicative noise on adapter outputs: one draw per sample and output channel."""

from __future__ import annotations

import torch
from torch import Tensor


def draw_noise(rows: int, channels: int, sigma: float, samples: int | None = None, *,
               device: torch.device | str | None = None, dtype: torch.dtype | None = None,
               batch=None) -> Tensor:
    """Multiplicative noise z ~ N(1, sigma^2), one draw per sample and channel: [samples, channels].

    In float32 for a half-precision ``dtype`` (a layer under autocast), else in ``dtype``: in
    bfloat16, 1 + z is spaced 2^-8 apart above 1, so at sigma = 0.01 a bf16 draw would take
    about 18 distinct values. :func:`add_noisy` multiplies with it in float32 too.

    Shared by every token of a sample, this equals noise on the rows of ΔW (paper §3.5) at a
    fraction of the cost. ``rows`` is the leading dim of a layer's input; in Swin's window
    attention that is samples × windows, with a sample's windows next to each other, and each
    sample's draw covers all its rows. Without a ``samples`` count that divides ``rows``, every
    row is taken for a sample.

    ``batch`` (the regulariser's batch state) may carry a :class:`~pace_cli.distributed.SampleLayout`:
    then the draw comes from the step's shared generator, keyed by the sample's place in the global
    batch, so it does not depend on which process or how many handle the sample.
    """
    groups = samples if samples and rows % samples == 0 else rows
    dtype = noise_dtype(dtype)
    layout = getattr(batch, "layout", None)
    if layout is not None:
        copies = 2 if batch.paired else 1
        z = layout.draw(groups, (channels,), copies=copies, normal=True, dtype=dtype)
        return z.mul_(sigma).add_(1.0)
    return torch.randn(groups, channels, device=device, dtype=dtype).mul_(sigma).add_(1.0)


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
    """``draw_noise`` with a draw per row of ``like`` [rows, ..., d_out], shaped to multiply it
    (float32 for a half-precision ``like``)."""
    return noise_for(like, draw_noise(like.shape[0], like.shape[-1], sigma, device=like.device, dtype=like.dtype,
                                      batch=batch))


def add_noisy(base: Tensor, delta: Tensor, z: Tensor) -> Tensor:
    """base + z ⊙ delta for ``base`` and ``delta`` [rows, ..., d_out] and noise z [samples, d_out].

    Computed in z's dtype (float32 when the layer runs in half precision under autocast) and
    rounded once to ``base``'s dtype, so the layer keeps the output dtype autocast gives it
    without rounding z or its product first. For float32 tensors the casts are no-ops.
    """
    wide = torch.promote_types(base.dtype, z.dtype)
    return (base.to(wide) + noise_for(base, z) * delta.to(wide)).to(base.dtype)
