"""Adapters on frozen linear layers: the delta math, the adapted layer, injection into timm models.

The adapter file format rests on the tensor names defined here. For an adapted layer at module
path ``P`` the trainable tensors are ``P.lora_A`` [r, d_in], ``P.lora_B`` [d_out, r],
``P.delta_bias`` [d_out], ``P.prompt_B`` [d_in, r] and ``P.prompt_A`` [r, 1], depending on the kind.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pace_cli.adapters.kinds import KINDS
from pace_cli.errors import PaceError, describe_key_mismatch
from pace_cli.adapters.factored import low_rank_linear
from pace_cli.adapters.fused import noisy_linear, worth_fusing

ADAPTER_KINDS = tuple(KINDS)
DEFAULT_TARGETS = ("qkv", "proj", "fc1", "fc2")

LORA_TENSORS = ("lora_A", "lora_B")
PROMPT_TENSORS = ("prompt_A", "prompt_B")
ADAPTER_TENSOR_NAMES = ("lora_A", "lora_B", "delta_bias", "prompt_A", "prompt_B")


def kind_parts(kind: str) -> tuple[str | None, bool]:
    """Split a kind into its LoRA flavour ('add', 'mul' or None) and whether it has a VPT prompt."""
    if kind not in ADAPTER_KINDS:
        raise PaceError(f"unknown adapter kind {kind!r}; choose one of {', '.join(ADAPTER_KINDS)}")
    lora = {"lora_add": "add", "lora_mul": "mul", "lora_mul+vpt_add": "mul"}.get(kind)
    return lora, kind.endswith("vpt_add")


def adapter_tensor_names(kind: str, has_bias: bool) -> tuple[str, ...]:
    """The tensors a layer of this kind owns.

    A bias-less base layer gets no ``delta_bias``: for ``lora_mul`` the term b0 * delta_bias is
    zero anyway, and for ``lora_add`` it would add a bias the base architecture cannot hold, so
    the merged file would stop being a plain checkpoint of that architecture.
    """
    lora, prompt = kind_parts(kind)
    names: list[str] = []
    if lora:
        names += LORA_TENSORS
        if has_bias:
            names.append("delta_bias")
    if prompt:
        if not has_bias:
            # VPT's whole effect is a bias shift W0 p; a layer without a bias has nowhere to keep
            # it after merging, and silently dropping it would change the model.
            raise PaceError(
                f"adapter kind {kind!r} needs layers with a bias, but a targeted layer has none; "
                "use lora_add or lora_mul, or leave that layer out of [adapter] targets"
            )
        names += PROMPT_TENSORS
    return tuple(names)


def adapter_delta(
    kind: str, weight: Tensor, bias: Tensor | None, tensors: Mapping[str, Tensor]
) -> tuple[Tensor | None, Tensor | None]:
    """(ΔW, Δb) of one adapted layer; None stands for an exact zero.

    The single source of the adapter math: the training forward pass, evaluation without
    merging and ``merge`` all call this, so they cannot disagree. ``tensors`` maps the local
    names (``lora_A``, ``lora_B``, ``delta_bias``, ``prompt_A``, ``prompt_B``) to tensors.
    Gradients flow through it, so it is also what training differentiates.
    """
    lora, prompt = kind_parts(kind)
    delta_w: Tensor | None = None
    delta_b: Tensor | None = None
    if lora:
        low_rank = tensors["lora_B"] @ tensors["lora_A"]  # [d_out, d_in]
        delta_w = low_rank if lora == "add" else weight * low_rank
        db = tensors.get("delta_bias")
        if db is not None:
            if lora == "add":
                delta_b = db
            elif bias is not None:
                delta_b = bias * db
    if prompt:
        prompt_vector = (tensors["prompt_B"] @ tensors["prompt_A"]).squeeze(-1)  # [d_in]
        shift = weight @ prompt_vector  # [d_out]
        delta_b = shift if delta_b is None else delta_b + shift
    return delta_w, delta_b


def _add(base: Tensor | None, delta: Tensor | None) -> Tensor | None:
    if delta is None:
        return base
    return delta if base is None else base + delta


def draw_noise(rows: int, channels: int, sigma: float, samples: int | None = None, *,
               device: torch.device | str | None = None, dtype: torch.dtype | None = None,
               batch=None) -> Tensor:
    """Multiplicative noise z ~ N(1, sigma^2), one draw per sample and channel: [samples, channels].

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
    layout = getattr(batch, "layout", None)
    if layout is not None:
        copies = 2 if batch.paired else 1
        z = layout.draw(groups, (channels,), copies=copies, normal=True, dtype=dtype or torch.float32)
        return z.mul_(sigma).add_(1.0)
    return torch.randn(groups, channels, device=device, dtype=dtype).mul_(sigma).add_(1.0)


def noise_for(like: Tensor, z: Tensor) -> Tensor:
    """Per-sample noise z [samples, d_out] shaped to multiply ``like`` [rows, ..., d_out].

    Each sample's draw is repeated over its rows (Swin's windows) and broadcast over its tokens.
    """
    rows = like.shape[0]
    per_row = z if len(z) == rows else z.repeat_interleave(rows // len(z), dim=0)
    return per_row.view((rows,) + (1,) * (like.dim() - 2) + (z.shape[-1],))


def sample_noise(like: Tensor, sigma: float, batch=None) -> Tensor:
    """``draw_noise`` with a draw per row of ``like`` [rows, ..., d_out], shaped to multiply it."""
    return noise_for(like, draw_noise(like.shape[0], like.shape[-1], sigma, device=like.device, dtype=like.dtype,
                                      batch=batch))


class AdaptedLinear(nn.Module):
    """A frozen ``nn.Linear`` plus one adapter: h(x) = W0 x + b0 + z * (ΔW x + Δb).

    Keeps the base layer's ``weight``/``bias`` parameter names so the state-dict keys of the base
    architecture do not move. ``noise_sigma`` is set by the PACE schedule; noise is drawn only in
    training mode and when it is positive. With a full-rank ΔW (``lora_mul``) the noisy forward
    uses per-sample weights (:mod:`pace_cli.adapters.fused`) unless ``per_sample_weights`` is off.
    """

    per_sample_weights = True
    # ``lora_add`` runs factored, B (A x), in training and unmerged eval (low_rank_linear); the
    # dense (W0 + B A) x path stays behind this switch for benchmarks and tests.
    factored_lora = True
    # Set by PaceRegularizer: an object whose ``samples`` is the number of samples in the batch
    # now flowing through the model (so Swin's windows of one sample share its noise draw).
    batch_state = None

    def __init__(self, base: nn.Linear, kind: str, rank: int):
        super().__init__()
        if rank <= 0:
            raise PaceError(f"adapter rank must be > 0, got {rank}; set [adapter] rank to a positive integer")
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.kind = kind
        self.rank = rank
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.noise_sigma = 0.0
        self.adapter_enabled = True
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        shapes = {
            "lora_A": (rank, self.in_features),
            "lora_B": (self.out_features, rank),
            "delta_bias": (self.out_features,),
            "prompt_B": (self.in_features, rank),
            "prompt_A": (rank, 1),
        }
        self.adapter_names = adapter_tensor_names(kind, self.bias is not None)
        for name in self.adapter_names:
            self.register_parameter(name, nn.Parameter(torch.zeros(shapes[name], **factory)))
        self.reset_adapter()

    def reset_adapter(self) -> None:
        """Zero-init one factor of each product and Xavier-init the other, so ΔW = Δb = 0."""
        for name in self.adapter_names:
            param = getattr(self, name)
            if name in ("lora_A", "prompt_A"):
                nn.init.xavier_uniform_(param)
            else:
                nn.init.zeros_(param)

    def adapter_tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self.adapter_names}

    def delta(self) -> tuple[Tensor | None, Tensor | None]:
        return adapter_delta(self.kind, self.weight, self.bias, self.adapter_tensors())

    def merged_weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        delta_w, delta_b = self.delta()
        return _add(self.weight, delta_w), _add(self.bias, delta_b)

    def forward(self, x: Tensor) -> Tensor:
        if not self.adapter_enabled:
            return F.linear(x, self.weight, self.bias)
        noisy = self.training and self.noise_sigma > 0
        factored = self.kind == "lora_add" and self.factored_lora
        if factored and not noisy:
            return self.factored_forward(x)
        delta_w, delta_b = (None, None) if factored else self.delta()
        if not noisy:
            return F.linear(x, _add(self.weight, delta_w), _add(self.bias, delta_b))
        samples = getattr(self.batch_state, "samples", None)
        z = draw_noise(x.shape[0], self.out_features, self.noise_sigma, samples, device=x.device, dtype=x.dtype,
                       batch=self.batch_state)
        if factored:
            return self.factored_forward(x, z)
        if delta_w is not None and self.kind != "lora_add" and self.per_sample_weights and worth_fusing(x, len(z)):
            return noisy_linear(x, self.weight, self.bias, delta_w, delta_b, z)
        return self.noisy_forward_reference(x, delta_w, delta_b, z)

    def factored_forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """``lora_add`` as W0 x + b0 + z ⊙ (B (A x) + Δb) without forming ΔW = B A (z = 1 without noise).

        Used in training and in unmerged evaluation alike, so both run the same code; it equals
        ``adapter_delta``'s dense ΔW up to float rounding (tested against a float64 reference).
        """
        return low_rank_linear(x, self.weight, self.bias, self.lora_A, self.lora_B,
                               getattr(self, "delta_bias", None), z)

    def noisy_forward_reference(self, x: Tensor, delta_w: Tensor | None, delta_b: Tensor | None, z: Tensor) -> Tensor:
        """h0(x) + z ⊙ Δh(x) as written, for noise z [samples, d_out] from ``draw_noise``.

        The plain path, and the reference the fused one is tested against.
        """
        base_out = F.linear(x, self.weight, self.bias)
        if delta_w is None:
            delta_out = delta_b.expand_as(base_out)
        elif self.kind == "lora_add":
            # ΔW = B A is low rank: two thin matmuls instead of one full one.
            delta_out = F.linear(F.linear(x, self.lora_A), self.lora_B, delta_b)
        else:
            delta_out = F.linear(x, delta_w, delta_b)
        return base_out + noise_for(base_out, z) * delta_out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}, rank={self.rank}"


@dataclass(frozen=True)
class AdapterConfig:
    kind: str = "lora_mul+vpt_add"
    rank: int = 10
    targets: tuple[str, ...] = DEFAULT_TARGETS


@dataclass
class InjectionReport:
    adapted_layers: list[str]
    head_name: str
    adapter_parameters: int
    head_parameters: int
    total_parameters: int
    frozen_parameters: int = field(init=False)

    def __post_init__(self):
        self.frozen_parameters = self.total_parameters - self.adapter_parameters - self.head_parameters

    @property
    def trainable_parameters(self) -> int:
        return self.adapter_parameters + self.head_parameters


def head_module_name(model: nn.Module) -> str:
    """Module path of the classifier (``head`` for ViT/DeiT, ``head.fc`` for Swin)."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if classifier is None:
        raise PaceError(f"{type(model).__name__} has no get_classifier(); pace supports timm classification models")
    for name, module in model.named_modules():
        if module is classifier:
            return name
    raise PaceError(f"could not locate the classifier module of {type(model).__name__}")


def _pattern_matches(pattern: str, path: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(path, pattern)
    return path == pattern or path.endswith("." + pattern)


def find_target_layers(model: nn.Module, targets: Sequence[str], exclude: str) -> list[str]:
    """Paths of the ``nn.Linear`` layers matched by the name patterns.

    A plain pattern matches a trailing run of path components (``qkv`` matches
    ``blocks.0.attn.qkv``; ``attn.proj`` leaves ``mlp.proj`` alone); a pattern with ``*``, ``?`` or
    ``[`` is a glob over the whole path. The classifier is never a target: it is replaced.
    """
    linears = [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name != exclude and not name.startswith(exclude + ".")
    ]
    chosen: list[str] = []
    for pattern in targets:
        hits = [name for name in linears if _pattern_matches(pattern, name)]
        if not hits:
            sample = ", ".join(linears[:6]) + (", ..." if len(linears) > 6 else "")
            raise PaceError(
                f"[adapter] targets pattern {pattern!r} matches no nn.Linear layer of {type(model).__name__}; "
                f"layer names look like: {sample}"
            )
        chosen += [name for name in hits if name not in chosen]
    return [name for name in linears if name in chosen]  # model order, i.e. depth order


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def inject_adapters(model: nn.Module, config: AdapterConfig, num_classes: int | None = None) -> InjectionReport:
    """Adapt the targeted linears in place, give the model a fresh head, freeze everything else.

    With ``num_classes`` the head is replaced by a new trainable one (timm's ``reset_classifier``);
    without it the existing head is kept and trained.
    """
    kind_parts(config.kind)
    if num_classes is not None:
        if num_classes <= 0:
            raise PaceError(f"num_classes must be > 0, got {num_classes}")
        model.reset_classifier(num_classes)
    head_name = head_module_name(model)
    model.requires_grad_(False)
    layers = find_target_layers(model, config.targets, exclude=head_name)
    for path in layers:
        base = model.get_submodule(path)
        _set_submodule(model, path, AdaptedLinear(base, config.kind, config.rank))
    head = model.get_submodule(head_name)
    head.requires_grad_(True)
    adapter_params = sum(
        p.numel() for m in model.modules() if isinstance(m, AdaptedLinear) for p in m.adapter_tensors().values()
    )
    head_params = sum(p.numel() for p in head.parameters())
    total = sum(p.numel() for p in model.parameters())
    return InjectionReport(layers, head_name, adapter_params, head_params, total)


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdaptedLinear)}


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only what training changed: every adapter tensor and the new head, detached, on the CPU."""
    head_name = head_module_name(model)
    state: dict[str, Tensor] = {}
    for path, layer in adapted_layers(model).items():
        for name, tensor in layer.adapter_tensors().items():
            state[f"{path}.{name}"] = tensor.detach().cpu().contiguous()
    for name, tensor in model.get_submodule(head_name).state_dict().items():
        state[f"{head_name}.{name}"] = tensor.detach().cpu().contiguous()
    return state


def load_adapter_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load an adapter state dict into an injected model, insisting on an exact match of names and shapes."""
    expected = adapter_state_dict(model)
    mismatch = describe_key_mismatch(expected, state, missing_what="tensors missing",
                                     unknown_what="unknown tensors")
    if mismatch:
        raise PaceError(
            f"the adapter does not fit this model: {mismatch}; check that the recipe's model and "
            "[adapter] settings match the ones it was trained with"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise PaceError(
                f"adapter tensor {name} has shape {list(tensor.shape)} but the model expects "
                f"{list(expected[name].shape)}; was it trained for another base model?"
            )
    model.load_state_dict(dict(state), strict=False)


@contextmanager
def adapters_disabled(model: nn.Module):
    """Run the model as the frozen base (adapters off, same head): used for the FP-distance."""
    layers = list(adapted_layers(model).values())
    previous = [layer.adapter_enabled for layer in layers]
    for layer in layers:
        layer.adapter_enabled = False
    try:
        yield model
    finally:
        for layer, state in zip(layers, previous):
            layer.adapter_enabled = state
