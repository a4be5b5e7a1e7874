"""The noisy training forward of a layer whose ΔW is full rank (``lora_mul``), at one matmul's cost.

PACE trains with h(x) = W0 x + b0 + z ⊙ (ΔW x + Δb), z drawn once per sample and output channel.
Written that way it costs two matmuls forward and three backward, against one and two for the
baseline's single merged weight. Because z is shared by every token of a sample, sample i's
layer is an ordinary linear layer with weight W_i = W0 + diag(z_i) ΔW (ΔW's rows scaled by z_i):

    forward   y_i   = x_i W_iᵀ + b0 + z_i ⊙ Δb                       one batched matmul
    backward  ∂x_i  = g_i W_i                                         one batched matmul
              ∂ΔW   = Σ_i (z_i ⊙ g_i)ᵀ x_i,  ∂Δb = Σ_i z_i ⊙ g_i    one matmul

Building W_i costs d_out·d_in per sample against T·d_out·d_in for its matmul (T tokens), and
the building is memory-bound, so it pays only with enough tokens per sample: below
``MIN_TOKENS_PER_SAMPLE`` the two-matmul formula is as fast (measured on 2 CPU cores: ViT-S,
197 tokens, fused forward+backward of fc1 = the baseline's; 17 tokens, fused ≈ two matmuls).
The per-sample weights are never kept for backward (they would be B copies of the layer): they
are rebuilt a chunk of samples at a time, small enough (``CHUNK_ELEMENTS``) to stay in cache
between being built and being used, which measured faster than larger chunks.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 20  # per-sample weights built at once (4 MiB in float32)
MIN_TOKENS_PER_SAMPLE = 32


def worth_fusing(x: Tensor, samples: int) -> bool:
    """Whether x [rows, ..., d_in] holds enough tokens per sample for per-sample weights to pay."""
    return x.dim() > 2 and x.numel() // (samples * x.shape[-1]) >= MIN_TOKENS_PER_SAMPLE


def _sample_chunks(batch: int, weight_elements: int):
    step = max(1, CHUNK_ELEMENTS // max(1, weight_elements))
    for start in range(0, batch, step):
        yield slice(start, min(batch, start + step))


def _per_sample_matmul(left: Tensor, weight: Tensor, delta_w: Tensor, z: Tensor, transpose: bool) -> Tensor:
    """left_i @ W_iᵀ (transpose) or left_i @ W_i, for W_i = W0 + diag(z_i) ΔW; left: [B, T, ·]."""
    out_features = weight.shape[0] if transpose else weight.shape[1]
    out = left.new_empty(left.shape[0], left.shape[1], out_features)
    for chunk in _sample_chunks(left.shape[0], weight.numel()):
        # Built in the weights' own dtype (float32 under autocast), rounded once for the matmul.
        weights = torch.addcmul(weight, z[chunk].unsqueeze(-1), delta_w).to(left.dtype)  # [c, d_out, d_in]
        torch.bmm(left[chunk], weights.transpose(1, 2) if transpose else weights, out=out[chunk])
    return out


class _NoisyLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, delta_w: Tensor,
                delta_b: Tensor | None, z: Tensor) -> Tensor:
        x3 = x.reshape(z.shape[0], -1, x.shape[-1])  # [samples, tokens, d_in]
        out = _per_sample_matmul(x3, weight, delta_w, z, transpose=True)
        if bias is not None:
            out += bias
        if delta_b is not None:
            out.addcmul_(z.unsqueeze(1), delta_b)
        ctx.save_for_backward(x, weight, delta_w, z)
        ctx.has_bias, ctx.has_delta_b = bias is not None, delta_b is not None
        return out.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, delta_w, z = ctx.saved_tensors
        need_x, need_w, need_b, need_dw, need_db, _ = ctx.needs_input_grad
        g = grad_out.reshape(z.shape[0], -1, weight.shape[0])
        x2 = x.reshape(-1, x.shape[-1])
        grad_x = grad_w = grad_b = grad_dw = grad_db = None
        if need_x:
            grad_x = _per_sample_matmul(g, weight, delta_w, z, transpose=False).reshape(x.shape)
        if need_w:
            grad_w = g.reshape(-1, g.shape[-1]).t() @ x2
        if need_b and ctx.has_bias:
            grad_b = g.sum(dim=(0, 1))
        if need_dw or (need_db and ctx.has_delta_b):
            gz = g * z.unsqueeze(1)
            if need_dw:
                grad_dw = gz.to(x2.dtype).reshape(-1, gz.shape[-1]).t() @ x2
            if need_db and ctx.has_delta_b:
                grad_db = gz.sum(dim=(0, 1))
        return grad_x, grad_w, grad_b, grad_dw, grad_db, None


def noisy_linear(x: Tensor, weight: Tensor, bias: Tensor | None, delta_w: Tensor, delta_b: Tensor | None,
                 z: Tensor) -> Tensor:
    """W0 x + b0 + z ⊙ (ΔW x + Δb) for x [B, ..., d_in] and per-sample noise z [B, d_out].

    x's leading dim may also be B × windows (Swin), a sample's rows next to each other: each
    sample then gets one weight for all its windows' tokens.

    Equal (to float rounding) to the two-matmul formula, with its gradients, at about the cost
    of one linear layer. Under autocast x and the biases are cast to the autocast dtype, as an
    autocast matmul would, while the per-sample weights W0 + diag(z) ΔW are built from the
    float32 W0, ΔW and z and rounded once (rounding z first would leave few distinct values at a
    small sigma); the function runs with autocast off so backward sees the dtypes it was given.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x = x.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
        delta_b = delta_b.to(dtype) if delta_b is not None else None
        with torch.autocast(device_type, enabled=False):
            return _NoisyLinear.apply(x, weight, bias, delta_w, delta_b, z)
    return _NoisyLinear.apply(x, weight, bias, delta_w, delta_b, z)
