"""The adapted layer: a frozen ``nn.Linear`` plus the trainable tensors of one adapter kind.

What the tensors are, their shapes and initial values, the maths and which training path the
noisy forward takes all come from the kind's row in :data:`pace_cli.adapters.kinds.KINDS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pace_cli.adapters.delta import adapter_delta, merged_weight_and_bias, plus
from pace_cli.adapters.factored import low_rank_linear
from pace_cli.adapters.fused import noisy_linear, worth_fusing
from pace_cli.adapters.kinds import kind_spec, row_norm
from pace_cli.adapters.noise import add_noisy, draw_noise, noise_mode
from pace_cli.adapters.rescale import KIND_FORWARDS
from pace_cli.errors import PaceError

_INITS = {"zeros": nn.init.zeros_, "xavier": nn.init.xavier_uniform_, "ones": nn.init.ones_}


class AdaptedLinear(nn.Module):
    """A frozen ``nn.Linear`` plus one adapter: h(x) = W0 x + b0 + z * (ΔW x + Δb).

    Keeps the base layer's ``weight``/``bias`` parameter names so the state-dict keys of the base
    architecture do not move. ``noise_sigma`` is set by the PACE schedule; noise is drawn only in
    training mode and when it is positive. A kind on the ``fused`` path (a full-rank ΔW, such as
    ``lora_mul``) runs the noisy forward with per-sample weights (:mod:`pace_cli.adapters.fused`)
    unless ``per_sample_weights`` is off. A kind on the ``elementwise``, ``scale`` or ``dora`` path
    (SSF, (IA)³, DoRA) runs its own forward from :mod:`pace_cli.adapters.rescale`, the same h0 + z ⊙ Δh.
    """

    per_sample_weights = True
    # A kind on the ``factored`` path (``lora_add``) runs as B (A x) in training and unmerged eval
    # (low_rank_linear); the dense (W0 + B A) x path stays behind this switch for benchmarks and tests.
    factored_lora = True
    # Set by PaceRegularizer: an object whose ``samples`` is the number of samples in the batch
    # now flowing through the model (so Swin's windows of one sample share its noise draw).
    batch_state = None

    def __init__(self, base: nn.Linear, kind: str, rank: int, mode: str | None = None):
        super().__init__()
        if rank <= 0:
            raise PaceError(f"adapter rank must be > 0, got {rank}", remedy="set [adapter] rank to a positive integer")
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.kind = kind
        self.spec = kind_spec(kind)
        self.rank = rank
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.noise_sigma = 0.0
        self.adapter_enabled = True
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        shapes = self.spec.shapes(self.in_features, self.out_features, rank)
        self.adapter_names = self.spec.tensor_names(self.bias is not None, mode)
        self.mode = self.spec.mode_of(self.adapter_names)
        for name in self.adapter_names:
            self.register_parameter(name, nn.Parameter(torch.zeros(shapes[name], **factory)))
        self.reset_adapter()

    def reset_adapter(self) -> None:
        """Each tensor to its kind's initial value: one factor of each product zeros, a scale ones, DoRA's
        magnitude ‖W0‖ per row, so ΔW = Δb = 0."""
        inits = {t.name: t.init for t in self.spec.tensors}
        for name in self.adapter_names:
            if inits[name] == "row_norm":  # DoRA's magnitude: ‖W0‖ per row, so m / ‖W0 + B A‖ = 1 at B = 0
                with torch.no_grad():
                    getattr(self, name).copy_(row_norm(self.weight.float()))
            else:
                _INITS[inits[name]](getattr(self, name))

    def adapter_tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self.adapter_names}

    def delta(self) -> tuple[Tensor | None, Tensor | None]:
        return adapter_delta(self.kind, self.weight, self.bias, self.adapter_tensors())

    def merged_weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        return merged_weight_and_bias(self.kind, self.weight, self.bias, self.adapter_tensors())

    def forward(self, x: Tensor) -> Tensor:
        if not self.adapter_enabled:
            return F.linear(x, self.weight, self.bias)
        noisy = self.training and self.noise_sigma > 0
        kind_forward = KIND_FORWARDS.get(self.spec.training)
        if kind_forward is not None:
            return kind_forward(self, x, self.layer_noise(x) if noisy else None)
        factored = self.spec.training == "factored" and self.factored_lora
        if factored and not noisy:
            return self.factored_forward(x)
        delta_w, delta_b = (None, None) if factored else self.delta()
        if not noisy:
            return F.linear(x, plus(self.weight, delta_w), plus(self.bias, delta_b))
        z = self.layer_noise(x)
        # The fast paths compute h0 + z ⊙ Δh only; another noise mode takes the reference path.
        if not noise_mode(self.batch_state).scales_delta:
            if factored:
                delta_w, delta_b = self.delta()
            return self.noisy_forward_reference(x, delta_w, delta_b, z)
        if factored:
            return self.factored_forward(x, z)
        if (delta_w is not None and self.spec.training == "fused" and self.per_sample_weights
                and worth_fusing(x, len(z))):
            return noisy_linear(x, self.weight, self.bias, delta_w, delta_b, z)
        return self.noisy_forward_reference(x, delta_w, delta_b, z)

    def layer_noise(self, x: Tensor) -> Tensor:
        """This forward's PACE noise z [samples, d_out] for input x."""
        samples = getattr(self.batch_state, "samples", None)
        return draw_noise(x.shape[0], self.out_features, self.noise_sigma, samples, device=x.device, dtype=x.dtype,
                          batch=self.batch_state)

    def factored_bias(self) -> Tensor | None:
        """Δb of a factored kind, without forming ΔW: delta_bias, plus W0 p for lora_add+vpt_add."""
        bias_of = self.spec.factored_bias
        return getattr(self, "delta_bias", None) if bias_of is None else bias_of(
            self.weight, self.bias, self.adapter_tensors())

    def factored_forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """W0 x + b0 + z ⊙ (B (A x) + Δb) without forming ΔW = B A (z = 1 without noise).

        Used in training and in unmerged evaluation alike, so both run the same code; it equals
        ``adapter_delta``'s dense ΔW up to float rounding (tested against a float64 reference).
        """
        return low_rank_linear(x, self.weight, self.bias, self.lora_A, self.lora_B, self.factored_bias(), z)

    def noisy_forward_reference(self, x: Tensor, delta_w: Tensor | None, delta_b: Tensor | None, z: Tensor) -> Tensor:
        """h0(x) + z ⊙ Δh(x) as written (or the batch state's other noise mode, ``add_noisy``), for
        noise z [samples, d_out] from ``draw_noise``.

        The plain path, every noise mode's path, and the reference the fused one is tested against.
        """
        base_out = F.linear(x, self.weight, self.bias)
        if delta_w is None:
            delta_out = delta_b.expand_as(base_out)
        elif self.spec.training == "factored":
            # ΔW = B A is low rank: two thin matmuls instead of one full one.
            delta_out = F.linear(F.linear(x, self.lora_A), self.lora_B, delta_b)
        else:
            delta_out = F.linear(x, delta_w, delta_b)
        return add_noisy(base_out, delta_out, z, batch=self.batch_state)

    def extra_repr(self) -> str:
        rank = f", rank={self.rank}" if self.spec.has_rank else ""
        mode = f", mode={self.mode}" if self.mode else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}{rank}{mode}"
