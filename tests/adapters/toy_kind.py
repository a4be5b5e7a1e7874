"""A toy adapter kind, added the way any new kind is: this one module plus one row in KINDS.

``scaled_lora``: a rank-r LoRA whose product is scaled by a fixed ``SCALE`` (as PEFT's alpha / r
does), with its own tensor names and a bias shift. ΔW = SCALE · (up @ down), Δb = shift.
Its ΔW is formed in full, so the noisy training forward takes the ``fused`` path.
"""

from pace_cli.adapters.kinds import KindSpec, TensorSpec

SCALE = 0.5
NAME = "scaled_lora"


def scaled_lora_delta(weight, bias, tensors):
    return SCALE * (tensors["toy_up"] @ tensors["toy_down"]), tensors.get("toy_shift")


SPEC = KindSpec(
    NAME,
    (
        TensorSpec("toy_down", ("rank", "d_in"), "xavier"),
        TensorSpec("toy_up", ("d_out", "rank"), "zeros"),
        TensorSpec("toy_shift", ("d_out",), "zeros", only_with_bias=True),
    ),
    scaled_lora_delta,
    training="fused",
)
