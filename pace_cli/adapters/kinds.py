"""The registry of adapter kinds: one row per kind, read by recipe validation and by the adapters.

Torch-free on purpose: recipe validation checks ``[adapter] kind`` against this table without
importing torch. Each kind's maths is written with tensor operators only (``@``, ``*``, ``+``), so
it runs on whatever tensors it is given; :func:`pace_cli.adapters.adapter_delta` dispatches to
it for training, unmerged evaluation and merging alike. Every lookup reads ``KINDS`` when it is
made, so a row added at run time is a kind like the built-in ones: adding a kind is one module
with its maths plus one row here (``tests/toy_kind.py`` does exactly that).

The adapter file format rests on the tensor names of these rows: for an adapted layer at module
path ``P`` a tensor ``name`` is stored as ``P.name``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pace_cli.errors import PaceError

# A dimension of an adapter tensor: the layer's input or output width, the adapter rank, or a fixed size.
Dim = Literal["d_in", "d_out", "rank"] | int
# (W0, b0, tensors by local name) -> (ΔW, Δb), None standing for an exact zero.
DeltaFunction = Callable[[Any, Any, Mapping[str, Any]], tuple[Any, Any]]
# (W0, b0, tensors) -> Δb alone, for a path that never forms ΔW.
BiasFunction = Callable[[Any, Any, Mapping[str, Any]], Any]
# (h0 = W0 x + b0, tensors) -> Δh, for a kind whose Δh is a per-channel function of the base output.
OutputFunction = Callable[[Any, Mapping[str, Any]], Any]
# How the noisy training forward runs (see AdaptedLinear.forward):
#   factored  ΔW = lora_B @ lora_A and Δb = delta_bias, run as B (A x) without forming ΔW
#   fused     ΔW is full rank: per-sample weights W0 + diag(z) ΔW, one batched matmul
#   dense     h0(x) + z ⊙ (ΔW x + Δb) as written (e.g. a kind whose ΔW is zero)
#   elementwise  h0(x) + z ⊙ Δh(h0(x)) from the kind's ``output_delta``, no ΔW formed (SSF; adapters/rescale.py)
#   scale     (IA)³: h0 = W0 x + b0 once, Δh element-wise from it or from the scaled input (adapters/rescale.py)
#   dora      DoRA: the row norms of W0 + B A once per forward, Δh from W0 x and B (A x) (adapters/rescale.py)
TrainingPath = Literal["factored", "fused", "dense", "elementwise", "scale", "dora"]
FACTORED_TENSORS = ("lora_A", "lora_B")


@dataclass(frozen=True)
class TensorSpec:
    """One trainable tensor of an adapted layer: local name, shape and initial value.

    Every kind starts at ΔW = Δb = 0: one factor of each product is zeros, the other Xavier-uniform;
    a tensor that is no product's factor (bitfit's Δb, ssf's γ − 1 and β) starts at zeros; a scale
    starts at ones, and DoRA's magnitude at the row norms of W0 (``row_norm``).
    """

    name: str
    shape: tuple[Dim, ...]
    init: Literal["zeros", "xavier", "ones", "row_norm"]
    # A bias shift of the layer's own bias: left out on a layer without one (see KindSpec.tensor_names).
    only_with_bias: bool = False
    # The tensor belongs to layers in this mode only (a kind's ``modes``); None: to every layer.
    mode: str | None = None

    def shape_for(self, d_in: int, d_out: int, rank: int | None) -> tuple[int | None, ...]:
        sizes = {"d_in": d_in, "d_out": d_out, "rank": rank}
        return tuple(sizes[dim] if isinstance(dim, str) else dim for dim in self.shape)


@dataclass(frozen=True)
class KindSpec:
    """What pace knows about one adapter kind."""

    name: str
    tensors: tuple[TensorSpec, ...]
    delta: DeltaFunction
    training: TrainingPath = "dense"
    # The kind's whole effect or part of it is a bias shift (VPT's Δb = W0 p, BitFit's Δb): a
    # layer without a bias cannot hold it.
    needs_bias: bool = False
    # Why PEFT cannot express the kind exactly; None when it can, as ``peft_method`` says (a "lora"
    # kind exports as a plain LoRA: ΔW = lora_B lora_A, or zero without LoRA factors, and Δb carried
    # whole as PEFT's "lora_only" bias).
    peft_refusal: str | None = "PEFT has no exact equivalent"
    # How PEFT expresses it: "lora" (ΔW = lora_B lora_A, Δb = delta_bias), "dora" (LoRA, use_dora) or "ia3".
    peft_method: Literal["lora", "dora", "ia3"] = "lora"
    # The modes a layer can be in, the first the default: (IA)³ scales a layer's output or, on a
    # feed-forward layer, its input; the tensor names of a layer say which (TensorSpec.mode).
    modes: tuple[str, ...] = ()
    # [adapter] targets / feedforward when the recipe leaves them unset; None: the recipe's own default.
    default_targets: tuple[str, ...] | None = None
    default_feedforward: tuple[str, ...] = ()
    # factored path: Δb alone (None: the tensor delta_bias, if the layer has it)
    factored_bias: BiasFunction | None = None
    # elementwise path: Δh from the base output h0
    output_delta: OutputFunction | None = None

    def __post_init__(self):
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            raise ValueError(f"adapter kind {self.name!r} names a tensor twice: {names}")
        if self.training in ("factored", "dora") and not set(FACTORED_TENSORS) <= set(names):
            raise ValueError(f"adapter kind {self.name!r} runs as a factored LoRA, so it needs tensors "
                             f"{FACTORED_TENSORS}")
        if (self.training == "elementwise") != (self.output_delta is not None):
            raise ValueError(f"adapter kind {self.name!r}: the elementwise path and output_delta go together")

    @property
    def adapts_layers(self) -> bool:
        """False for a kind that trains only the new head (a linear probe): no layer is adapted."""
        return bool(self.tensors)

    @property
    def has_rank(self) -> bool:
        """Whether ``[adapter] rank`` sizes any of the kind's tensors."""
        return any("rank" in t.shape for t in self.tensors)

    def tensor_names(self, has_bias: bool, mode: str | None = None) -> tuple[str, ...]:
        """The tensors a layer of this kind owns.

        A bias-less base layer gets no bias shift: for ``lora_mul`` the term b0 * delta_bias is
        zero anyway, and for ``lora_add`` it would add a bias the base architecture cannot hold,
        so the merged file would stop being a plain checkpoint of that architecture.
        """
        if self.needs_bias and not has_bias:
            # VPT's whole effect is a bias shift W0 p; a layer without a bias has nowhere to keep
            # it after merging, and silently dropping it would change the model.
            others = " or ".join(name for name, spec in KINDS.items() if not spec.needs_bias)
            raise PaceError(f"adapter kind {self.name!r} needs layers with a bias, but a targeted layer has none",
                            remedy=f"use {others}, or leave that layer out of [adapter] targets")
        mode = mode or (self.modes[0] if self.modes else None)
        return tuple(t.name for t in self.tensors
                     if (has_bias or not t.only_with_bias) and t.mode in (None, mode))

    def mode_of(self, names) -> str | None:
        """The mode a layer holding tensors ``names`` is in: the mode of its first moded tensor."""
        for spec in self.tensors:
            if spec.mode is not None and spec.name in names:
                return spec.mode
        return self.modes[0] if self.modes else None

    def shapes(self, d_in: int, d_out: int, rank: int | None) -> dict[str, tuple[int | None, ...]]:
        return {t.name: t.shape_for(d_in, d_out, rank) for t in self.tensors}

    def rank_of(self, tensors: Mapping[str, Any]) -> int | None:
        """The rank the given tensors were made with: read off the first one with a rank dimension."""
        for spec in self.tensors:
            tensor = tensors.get(spec.name)
            if tensor is not None and "rank" in spec.shape and len(tensor.shape) == len(spec.shape):
                return int(tensor.shape[spec.shape.index("rank")])
        return None


def kind_spec(kind: str) -> KindSpec:
    spec = KINDS.get(kind)
    if spec is None:
        raise PaceError(f"unknown adapter kind {kind!r}", remedy=f"choose one of {', '.join(KINDS)}")
    return spec


def registered_tensor_names() -> frozenset[str]:
    """Local names of every adapter tensor of every registered kind (what is not a base tensor)."""
    return frozenset(t.name for spec in KINDS.values() for t in spec.tensors)


# ---------------------------------------------------------------- the built-in kinds (pace-method.md §1)


def lora_add_delta(weight, bias, tensors):
    """ΔW = B A, Δb = db."""
    return tensors["lora_B"] @ tensors["lora_A"], tensors.get("delta_bias")


def lora_mul_delta(weight, bias, tensors):
    """ΔW = W0 ⊙ (B A), Δb = b0 ⊙ db (zero without a base bias)."""
    delta_b = tensors.get("delta_bias")
    return weight * (tensors["lora_B"] @ tensors["lora_A"]), (None if delta_b is None or bias is None
                                                             else bias * delta_b)


def vpt_add_delta(weight, bias, tensors):
    """ΔW = 0, Δb = W0 (Pd Pu): a prompt p = Pd Pu [d_in] seen through the frozen weight."""
    prompt_vector = (tensors["prompt_B"] @ tensors["prompt_A"]).squeeze(-1)
    return None, weight @ prompt_vector


def lora_mul_vpt_add_delta(weight, bias, tensors):
    """ΔW = W0 ⊙ (B A), Δb = b0 ⊙ db + W0 (Pd Pu)."""
    delta_w, delta_b = lora_mul_delta(weight, bias, tensors)
    _, shift = vpt_add_delta(weight, bias, tensors)
    return delta_w, shift if delta_b is None else delta_b + shift


def row_norm(matrix):
    """‖row‖₂ of each row: one function for DoRA's initial magnitude, training and merge, so at
    step 0 the magnitude over the norm is exactly 1."""
    return (matrix * matrix).sum(-1).sqrt()


def ia3_delta(weight, bias, tensors):
    """(IA)³ as PEFT defines it: a feed-forward layer scales its input, W0 ⊙ l [1, d_in], bias
    unchanged; any other its output, l [d_out, 1] ⊙ W0 and l ⊙ b0. ΔW = W − W0, Δb = b − b0."""
    if "ia3_in" in tensors:
        return weight * (tensors["ia3_in"] - 1), None
    scale = tensors["ia3_out"] - 1
    return weight * scale, None if bias is None else bias * scale.squeeze(-1)


def dora_direction(weight, tensors):
    """(V, m / ‖V‖) for V = W0 + B A, ‖V‖ detached as PEFT's use_dora does (DoRA §4.3)."""
    direction = weight + tensors["lora_B"] @ tensors["lora_A"]
    return direction, tensors["dora_magnitude"] / row_norm(direction.detach())


def dora_delta(weight, bias, tensors):
    """ΔW = m / ‖W0 + B A‖ ⊙ (W0 + B A) − W0 (norm per output row), Δb = 0."""
    direction, row_scale = dora_direction(weight, tensors)
    return direction * row_scale.unsqueeze(-1) - weight, None


def lora_add_vpt_add_delta(weight, bias, tensors):
    """ΔW = B A, Δb = db + W0 (Pd Pu) (the paper's Table 5 row)."""
    return tensors["lora_B"] @ tensors["lora_A"], lora_add_vpt_add_bias(weight, bias, tensors)


def lora_add_vpt_add_bias(weight, bias, tensors):
    """Δb = db + W0 p alone: the factored path adds it as a bias column and never forms B A."""
    return tensors["delta_bias"] + vpt_add_delta(weight, bias, tensors)[1]


def bitfit_delta(weight, bias, tensors):
    """ΔW = 0, Δb = db: only the targeted layers' biases move (Zaken et al.)."""
    return None, tensors["delta_bias"]


def ssf_delta(weight, bias, tensors):
    """h = γ ⊙ h0 + β per output channel, stored as s = γ − 1: ΔW = diag(s) W0, Δb = s ⊙ b0 + β."""
    scale, shift = tensors["ssf_scale"], tensors.get("ssf_shift")
    delta_b = None if bias is None else scale * bias
    if shift is not None:
        delta_b = shift if delta_b is None else delta_b + shift
    return scale[:, None] * weight, delta_b


def ssf_output_delta(base_out, tensors):
    """Δh = s ⊙ h0 + β, element-wise on the base output (equal to ΔW x + Δb of ssf_delta)."""
    shift = tensors.get("ssf_shift")
    delta = base_out * tensors["ssf_scale"]
    return delta if shift is None else delta + shift


def head_delta(weight, bias, tensors):
    """The linear probe adapts no layer; only the new head trains.

    PACE's noise then sits on the head output alone (the head is new, so its whole output is the
    adapter's Δh): logits z ⊙ f(x), and the consistency term of two copies is ‖(z1 − z2) ⊙ f‖²,
    2σ² ‖f‖² in expectation: a penalty on the logits' size, i.e. on the head's weights along the data.
    """
    return None, None


# Order is parameter order: it fixes the random init sequence and the optimizer state's layout.
LORA_TENSORS = (
    TensorSpec("lora_A", ("rank", "d_in"), "xavier"),
    TensorSpec("lora_B", ("d_out", "rank"), "zeros"),
    TensorSpec("delta_bias", ("d_out",), "zeros", only_with_bias=True),
)
PROMPT_TENSORS = (
    TensorSpec("prompt_A", ("rank", 1), "xavier"),
    TensorSpec("prompt_B", ("d_in", "rank"), "zeros"),
)
# (IA)³'s two modes and their one tensor each, in PEFT's shapes (ia3_l): the tensor's name is the layer's mode.
IA3_MODES = ("output", "input")
IA3_TENSORS = (
    TensorSpec("ia3_out", ("d_out", 1), "ones", mode="output"),
    TensorSpec("ia3_in", (1, "d_in"), "ones", mode="input"),
)
DORA_TENSORS = LORA_TENSORS[:2] + (TensorSpec("dora_magnitude", ("d_out",), "row_norm"),)
BIAS_TENSORS = (TensorSpec("delta_bias", ("d_out",), "zeros"),)
# s = γ − 1 rather than γ: zeros at step 0 like every other kind's tensors, and weight decay then
# pulls towards the base layer (γ = 1) instead of towards switching the channel off (γ = 0).
SSF_TENSORS = (
    TensorSpec("ssf_scale", ("d_out",), "zeros"),
    TensorSpec("ssf_shift", ("d_out",), "zeros", only_with_bias=True),
)
_NOT_LOW_RANK = "its ΔW = W0 ⊙ (B A) is not low rank, so no PEFT LoRA reproduces it"

KINDS: dict[str, KindSpec] = {
    spec.name: spec for spec in (
        KindSpec("lora_add", LORA_TENSORS, lora_add_delta, training="factored", peft_refusal=None),
        KindSpec("lora_mul", LORA_TENSORS, lora_mul_delta, training="fused", peft_refusal=_NOT_LOW_RANK),
        KindSpec("vpt_add", PROMPT_TENSORS, vpt_add_delta, needs_bias=True,
                 peft_refusal="its Δb = W0 (prompt_B prompt_A) is a prompt, not a LoRA"),
        KindSpec("lora_mul+vpt_add", LORA_TENSORS + PROMPT_TENSORS, lora_mul_vpt_add_delta, training="fused",
                 needs_bias=True, peft_refusal=_NOT_LOW_RANK),
        KindSpec("ia3", IA3_TENSORS, ia3_delta, training="scale", peft_refusal=None, peft_method="ia3",
                 modes=IA3_MODES, default_targets=("qkv", "fc2"), default_feedforward=("fc2",)),
        KindSpec("dora", DORA_TENSORS, dora_delta, training="dora", peft_refusal=None, peft_method="dora"),
        KindSpec("lora_add+vpt_add", LORA_TENSORS + PROMPT_TENSORS, lora_add_vpt_add_delta, training="factored",
                 needs_bias=True, peft_refusal=None, factored_bias=lora_add_vpt_add_bias),
        # Δh = Δb is a broadcast add: the dense path's ΔW = 0 branch is already element-wise.
        KindSpec("bitfit", BIAS_TENSORS, bitfit_delta, needs_bias=True, peft_refusal=None),
        KindSpec("ssf", SSF_TENSORS, ssf_delta, training="elementwise", output_delta=ssf_output_delta,
                 peft_refusal="PEFT has no per-channel scale and shift of a layer's output"),
        KindSpec("head", (), head_delta,
                 peft_refusal="it adapts no layer, and a PEFT adapter with only modules_to_save is not a LoRA"),
    )
}
