"""The recipe's [pace] and [regularizer] sections: PACE and the alternatives of the paper's Table 6.

Torch-free like the rest of the recipe package; :mod:`.schema` puts them in the recipe.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pace_cli.recipe.base import _Section

# The enums, written once; the modules that act on them take their tuples with typing.get_args.
PaceVariant = Literal["off", "pace", "lazy", "fast", "noise_only"]
PaceNoise = Literal["gaussian", "additive", "dropout"]
PacePerturb = Literal["adapter", "output"]
SigmaProfile = Literal["decreasing", "constant", "increasing"]


class PaceSection(_Section):
    variant: PaceVariant = Field(
        "pace", description="Consistency regulariser variant; off disables it."
    )
    lambda_: float = Field(1.0, alias="lambda", ge=0, description="Weight of the consistency loss.")
    sigma: float = Field(1.0, ge=0, description="Std of the multiplicative noise on adapter outputs.")
    lazy_interval: int = Field(2, ge=1, description="Steps between regularised steps (lazy variant).")
    noise_free_blocks: int = Field(0, ge=0, description="Leading blocks whose adapters get no noise.")
    noise: PaceNoise = Field(
        "gaussian", description="gaussian: z ~ N(1, σ²) times the adapter output (PACE); additive: h0 + Δh + ε, "
        "ε ~ N(0, σ²) (PACE_add); dropout: z ~ Bernoulli(1 − p) / (1 − p) with p = σ² / (1 + σ²), the same "
        "variance (PACE_drop)."
    )
    perturb: PacePerturb = Field(
        "adapter", description="adapter: noise on the adapter output, h0 + z ⊙ Δh (PACE); output: on the whole "
        "layer output, z ⊙ (h0 + Δh) (PACE_h)."
    )
    sigma_profile: SigmaProfile = Field(
        "decreasing", description="Noise over depth, G noisy groups with the head last: decreasing σ·(G − g)/G "
        "(PACE), constant σ (PACE_σ=), increasing σ·(g + 1)/G (PACE_σ↑)."
    )
    copies: int = Field(
        2, ge=2, description="Noisy copies of each image (pace, lazy; paper Figure 5): CE on the first, "
        "consistency = mean squared distance over all pairs; memory and compute grow copies-fold."
    )


class RegularizerSection(_Section):
    """The alternatives to PACE in the paper's Table 6, alone (variant = 'off') or beside a PACE variant."""

    fpa: float = Field(0.0, ge=0, description="λ of fine-tuned/pre-trained alignment: λ·mean ||f(θ0 + Δθ) − f(θ0)||² "
                       "on the logits, f(θ0) as the logged fp_distance takes it (adapters off, eval mode, no grad).")
    l1: float = Field(0.0, ge=0, description="λ of the ℓ1 penalty λ·Σ|θ| on the adapter tensors.")
    gp: float = Field(0.0, ge=0, description="λ of the gradient penalty λ·||∂L/∂θ||² over the trainable tensors, by "
                      "finite differences: a second gradient pass per update.")
    sam_rho: float = Field(0.0, ge=0, description="Radius ρ of sharpness-aware minimisation: the update takes the "
                           "gradient at θ + ρ·g/||g||, a second gradient pass per update; 0 = off.")
