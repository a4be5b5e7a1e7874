"""The adapter maths of one layer, as a pure function of its base weights and adapter tensors."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from pace_cli.adapters.kinds import kind_spec


def adapter_delta(
    kind: str, weight: Tensor, bias: Tensor | None, tensors: Mapping[str, Tensor]
) -> tuple[Tensor | None, Tensor | None]:
    """(ΔW, Δb) of one adapted layer; None stands for an exact zero.

    The single source of the adapter math: the training forward pass, evaluation without
    merging and ``merge`` all call this, so they cannot disagree. ``tensors`` maps the local
    names of the kind's tensors (``lora_A``, ``lora_B``, ``delta_bias``, ``prompt_A``,
    ``prompt_B`` for the built-in kinds) to tensors. Gradients flow through it, so it is also
    what training differentiates. The maths itself is the kind's row in
    :data:`pace_cli.adapters.kinds.KINDS`.
    """
    return kind_spec(kind).delta(weight, bias, tensors)


def plus(base: Tensor | None, delta: Tensor | None) -> Tensor | None:
    """base + delta, where None is an exact zero on either side."""
    if delta is None:
        return base
    return delta if base is None else base + delta


def merged_weight_and_bias(kind: str, weight: Tensor, bias: Tensor | None,
                           tensors: Mapping[str, Tensor]) -> tuple[Tensor, Tensor | None]:
    """(W0 + ΔW, b0 + Δb), in the dtype of the tensors given."""
    delta_w, delta_b = adapter_delta(kind, weight, bias, tensors)
    return plus(weight, delta_w), plus(bias, delta_b)
