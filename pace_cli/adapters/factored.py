"""The ``lora_add`` layer in factored form: W0 x + b0 + z ⊙ (B (A x) + Δb), never forming B A.

Written densely, h(x) = (W0 + B A) x + b0 + Δb needs a d_out × d_in weight gradient in backward
(one more full-size matmul, Σ_t g_t x_tᵀ) only to squeeze it back through B and A; that matmul
is what made the plain ``off`` step slower than PEFT's LoRA (profile in benchmarks/RESULTS.md).
Factored, every adapter product is rank-sized:

    forward   u = x Aᵀ [N, r];   y = x W0ᵀ + b;   y += u Bᵀ          (accumulated in place)
    backward  v = g B [N, r];    ∂x = g W0 + v A;   ∂A = vᵀ x;   ∂B = gᵀ u;   ∂Δb = Σ g

With PACE noise z [samples, d_out] (shared by a sample's tokens), sample i's adapter is
diag(z_i) B, a [d_out, r] matrix, so the noisy term is one batched rank-r product too. Δb rides
along as one more rank-1 column: B' = [B | Δb], u' = [u | 1], so B' u' = B u + Δb and the noise
scales both with no extra pass over the output.

Every update is accumulated into a freshly allocated output or gradient (``addmm_``), so no
element-wise pass over [N, d_out] or [N, d_in] is spent on adding the adapter's share.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _with_bias_column(lora_B: Tensor, delta_b: Tensor | None) -> Tensor:
    return lora_B if delta_b is None else torch.cat([lora_B, delta_b.unsqueeze(1)], dim=1)


def _with_ones_column(u: Tensor, has_delta_b: bool) -> Tensor:
    return torch.cat([u, u.new_ones(u.shape[0], 1)], dim=1) if has_delta_b else u


class _LowRankLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, lora_A: Tensor, lora_B: Tensor,
                delta_b: Tensor | None, z: Tensor | None) -> Tensor:
        d_out = weight.shape[0]
        x2 = x.reshape(-1, x.shape[-1])
        u = x2 @ lora_A.t()  # [N, r]
        if z is None:
            full_bias = bias if delta_b is None else (delta_b if bias is None else bias + delta_b)
            out = torch.addmm(full_bias, x2, weight.t()) if full_bias is not None else x2 @ weight.t()
            out.addmm_(u, lora_B.t())
            ctx.save_for_backward(x, weight, lora_A, lora_B, u, None)
        else:
            out = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
            samples = z.shape[0]
            b_ext = _with_bias_column(lora_B, delta_b)  # [d_out, r(+1)]
            # each sample's own diag(z_i) B': [S, d_out, r(+1)], multiplied in z's float32, rounded once
            b_noisy = (z.unsqueeze(-1) * b_ext.to(z.dtype)).to(b_ext.dtype)
            u_ext = _with_ones_column(u, delta_b is not None)
            out.view(samples, -1, d_out).baddbmm_(u_ext.view(samples, -1, u_ext.shape[1]), b_noisy.transpose(1, 2))
            ctx.save_for_backward(x, weight, lora_A, b_noisy, u_ext, z)
        ctx.has_bias, ctx.has_delta_b = bias is not None, delta_b is not None
        return out.view(*x.shape[:-1], d_out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, lora_A, b_saved, u, z = ctx.saved_tensors
        need_x, need_w, need_b, need_A, need_B, need_db, _ = ctx.needs_input_grad
        d_out, rank = weight.shape[0], lora_A.shape[0]
        x2 = x.reshape(-1, x.shape[-1])
        g = grad_out.reshape(-1, d_out)
        grad_x = grad_w = grad_b = grad_A = grad_B = grad_db = None
        if z is None:
            v = g @ b_saved  # g B: [N, r]
            if need_B:
                grad_B = g.t() @ u
            if need_db and ctx.has_delta_b:
                grad_db = g.sum(0)
        else:
            samples = z.shape[0]
            g3 = g.view(samples, -1, d_out)
            v = torch.bmm(g3, b_saved).view(-1, b_saved.shape[-1])[:, :rank]  # g_i diag(z_i) B
            if need_B or (need_db and ctx.has_delta_b):
                # ∂B'[o, k] = Σ_i z_io Σ_t g_ito u'_itk: per sample gᵢᵀ u'ᵢ, scaled by z_i, summed
                per_sample = torch.bmm(g3.transpose(1, 2), u.view(samples, -1, u.shape[1]))  # [S, d_out, r(+1)]
                grad_ext = torch.einsum("so,sok->ok", z, per_sample.to(z.dtype))
                if need_B:
                    grad_B = grad_ext[:, :rank]
                if need_db and ctx.has_delta_b:
                    grad_db = grad_ext[:, rank]
        if need_x:
            grad_x = g @ weight
            grad_x.addmm_(v, lora_A)
            grad_x = grad_x.view(x.shape)
        if need_A:
            grad_A = v.t() @ x2
        if need_w:
            grad_w = g.t() @ x2
        if need_b and ctx.has_bias:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, grad_A, grad_B, grad_db, None


def low_rank_linear(x: Tensor, weight: Tensor, bias: Tensor | None, lora_A: Tensor, lora_B: Tensor,
                    delta_b: Tensor | None, z: Tensor | None = None) -> Tensor:
    """W0 x + b0 + B (A x) + Δb, or with noise z [samples, d_out]: W0 x + b0 + z ⊙ (B (A x) + Δb).

    x is [rows, ..., d_in]; with z its rows are grouped into ``len(z)`` samples, a sample's rows
    next to each other (Swin's windows), each sample's noise shared by all its tokens.
    Equal to the dense formula with ΔW = B A (``adapters.adapter_delta``) up to float rounding.
    Under autocast the inputs are cast to the autocast dtype, as an autocast matmul would, but
    the noise z stays float32 (``draw_noise``): z ⊙ B' is taken in float32 and rounded once.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        with torch.autocast(device_type, enabled=False):
            return _LowRankLinear.apply(cast(x), cast(weight), cast(bias), cast(lora_A), cast(lora_B),
                                        cast(delta_b), z)
    return _LowRankLinear.apply(x, weight, bias, lora_A, lora_B, delta_b, z)
