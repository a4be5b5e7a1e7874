"""The training and unmerged forward of the kinds that rescale the base layer: SSF, (IA)³ and DoRA.

Both are written as h = h0 + Δh with h0 = W0 x + b0, so PACE's noise multiplies Δh alone,
h = h0 + z ⊙ Δh, as for every kind (z [samples, d_out], shared by a sample's tokens). Neither
forms a d_out × d_in tensor per sample:

    SSF (``elementwise``)   h0 once;  Δh = the kind's ``output_delta`` of h0        element-wise
    (IA)³, output scaling   h0 once;  Δh = (l − 1) ⊙ h0                          element-wise
    (IA)³, input scaling    h0 once;  Δh = W0 ((l − 1) ⊙ x)                      one more matmul
    DoRA                    s = m / ‖W0 + B A‖ once per forward (row norms, detached as PEFT does);
                            Δh = (s − 1) ⊙ W0 x + s ⊙ B (A x)

Without noise each is the formula PEFT runs (``peft.tuners.ia3.layer.Linear.forward`` and
``peft.tuners.lora.dora.DoraLinearLayer.forward``), so unmerged evaluation is PEFT's forward. The
maths of ΔW itself stays in :data:`pace_cli.adapters.kinds.KINDS` (``ia3_delta``, ``dora_delta``),
which merge uses; these paths are tested against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pace_cli.adapters.noise import add_noisy, noise_dtype


def _finish(base_out: Tensor, delta_out: Tensor, z: Tensor | None, batch=None) -> Tensor:
    if z is None:
        wide = torch.promote_types(base_out.dtype, delta_out.dtype)
        return (base_out.to(wide) + delta_out).to(base_out.dtype)
    return add_noisy(base_out, delta_out, z, batch=batch)


def elementwise_forward(layer, x: Tensor, z: Tensor | None) -> Tensor:
    """h0 + z ⊙ Δh(h0) for a kind whose Δh is per-channel in the base output (SSF): one matmul and a few
    passes over [N, d_out], never ΔW = diag(s) W0 (tested equal to ``adapter_delta`` in float64)."""
    base_out = F.linear(x, layer.weight, layer.bias)
    return _finish(base_out, layer.spec.output_delta(base_out, layer.adapter_tensors()), z, layer.batch_state)


def ia3_forward(layer, x: Tensor, z: Tensor | None) -> Tensor:
    """(IA)³: a feed-forward layer scales its input, W0 (l ⊙ x) + b0; any other its output, l ⊙ (W0 x + b0)."""
    if layer.mode == "input":
        scale = layer.ia3_in.squeeze(0)
        if z is None:
            return F.linear(x * scale, layer.weight, layer.bias)
        return add_noisy(F.linear(x, layer.weight, layer.bias), F.linear(x * (scale - 1), layer.weight), z,
                          batch=layer.batch_state)
    scale = layer.ia3_out.squeeze(-1)
    base_out = F.linear(x, layer.weight, layer.bias)
    if z is None:
        return (base_out * scale).to(base_out.dtype)
    return add_noisy(base_out, base_out * (scale - 1), z, batch=layer.batch_state)


def dora_row_norm(weight: Tensor, lora_A: Tensor, lora_B: Tensor) -> Tensor:
    """‖W0 + B A‖ per row, detached, without forming W0 + B A:

    ‖W0 + B A‖² = ‖W0‖² + 2 Σ_k B_ok (W0 Aᵀ)_ok + (B (A Aᵀ) ⊙ B) summed over k,

    rank-sized products only. In float32 at least (the norm of a bf16 weight is not rounded to bf16).
    At B = 0 it is exactly ``kinds.row_norm(W0)``, DoRA's initial magnitude, so ΔW starts at 0.
    """
    with torch.no_grad():
        dtype = noise_dtype(weight.dtype)
        w, a, b = weight.to(dtype), lora_A.to(dtype), lora_B.to(dtype)
        squares = (w * w).sum(-1)
        cross = (b * (w @ a.t())).sum(-1)
        lora_squares = ((b @ (a @ a.t())) * b).sum(-1)
        return (squares + 2 * cross + lora_squares).clamp_min(0).sqrt()


def dora_forward(layer, x: Tensor, z: Tensor | None) -> Tensor:
    """DoRA as PEFT's use_dora: h = (m / ‖W0 + B A‖) ⊙ (W0 x + B (A x)) + b0, the norm taken as a constant."""
    row_scale = layer.dora_magnitude / dora_row_norm(layer.weight, layer.lora_A, layer.lora_B)
    plain = F.linear(x, layer.weight)
    lora = F.linear(F.linear(x, layer.lora_A), layer.lora_B)
    delta_out = (row_scale - 1) * plain + row_scale * lora
    base_out = plain if layer.bias is None else plain + layer.bias.to(plain.dtype)
    return _finish(base_out, delta_out, z, layer.batch_state)


# AdaptedLinear.forward runs a kind whose row names one of these training paths through it.
KIND_FORWARDS = {"elementwise": elementwise_forward, "scale": ia3_forward, "dora": dora_forward}
