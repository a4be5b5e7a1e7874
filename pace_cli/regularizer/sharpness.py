"""The two-pass alternatives of the paper's Table 6: the gradient penalty (GP) and SAM.

Both take the gradient g at θ, then a second gradient at a point displaced along g, and make the
update's gradient from the two:

- GP, λ·||∂L/∂θ||²: its gradient 2λ·H g needs a Hessian-vector product. Double backward would
  give it, but DistributedDataParallel does not support it and the fused per-sample-weight layers
  have no second derivative, so it is taken by finite differences:
  H g ≈ ||g|| · (∇L(θ + r·ĝ) − g) / r with ĝ = g / ||g|| and radius r = :data:`GP_RADIUS`.
- SAM (Foret et al.): the update takes ∇L(θ + ρ·ĝ), the gradient at the worst nearby point.

The second pass replays the step's noise and drop masks (they are keyed by seed and step), so the
two gradients differ only by the displacement. θ is restored bit for bit afterwards.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn

GP_RADIUS = 0.01  # r of the finite difference: small next to the adapters' scale, large next to float32 rounding


def gradients(params: list[nn.Parameter]) -> list[Tensor]:
    """Copies of the parameters' gradients (zeros where a parameter got none)."""
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]


def unit_direction(grads: list[Tensor]) -> tuple[list[Tensor], float]:
    """ĝ = g / ||g|| over all tensors together, and ||g|| (ĝ = 0 for g = 0)."""
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    scale = 1.0 / norm if norm > 0 else 0.0
    return [g * scale for g in grads], norm


@contextlib.contextmanager
def displaced(params: list[nn.Parameter], direction: list[Tensor], radius: float):
    """θ + radius·direction inside the block; θ exactly as it was after it."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(d, alpha=radius)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def penalised_gradient(grad: Tensor, probe: Tensor, norm: float, radius: float, gp: float) -> Tensor:
    """g + gp·2·H g, with H g ≈ ||g|| · (∇L(θ + r·ĝ) − g) / r: the gradient of L + gp·||∂L/∂θ||²."""
    return grad + (probe - grad) * (2.0 * gp * norm / radius)


def second_pass(params: list[nn.Parameter], backward, *, gp: float = 0.0, sam_rho: float = 0.0,
                gp_radius: float = GP_RADIUS) -> float:
    """Turn the gradients in ``params``' ``.grad`` (from the step's first pass) into GP's or SAM's.

    ``backward()`` runs the step's forward and backward passes again, leaving the gradient at the
    current θ in ``.grad``. Returns ||g|| of the first pass.
    """
    if (gp > 0) == (sam_rho > 0):
        raise ValueError("second_pass needs exactly one of gp and sam_rho")
    first = gradients(params)
    direction, norm = unit_direction(first)
    radius = sam_rho if sam_rho > 0 else gp_radius
    for p in params:
        p.grad = None
    with displaced(params, direction, radius):
        backward()
    for p, grad, probe in zip(params, first, gradients(params)):
        p.grad = probe if sam_rho > 0 else penalised_gradient(grad, probe, norm, radius, gp)
    return norm
