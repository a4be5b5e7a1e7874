"""Putting adapters into a timm model: finding the target layers, injecting, and their state dicts."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn

from pace_cli.adapters.kinds import kind_spec
from pace_cli.adapters.layer import AdaptedLinear
from pace_cli.errors import PaceError, describe_key_mismatch

DEFAULT_TARGETS = ("qkv", "proj", "fc1", "fc2")


@dataclass(frozen=True)
class AdapterConfig:
    kind: str = "lora_mul+vpt_add"
    rank: int = 10
    targets: tuple[str, ...] = DEFAULT_TARGETS
    # (IA)³: patterns (matched like targets) of the targeted layers whose input is scaled, not their output.
    feedforward: tuple[str, ...] = ()


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
            raise PaceError(f"[adapter] targets pattern {pattern!r} matches no nn.Linear layer of "
                            f"{type(model).__name__}", remedy=f"layer names look like: {sample}")
        chosen += [name for name in hits if name not in chosen]
    return [name for name in linears if name in chosen]  # model order, i.e. depth order


def feedforward_layers(layers: Sequence[str], patterns: Sequence[str]) -> set[str]:
    """The targeted layers each feed-forward pattern matches; a pattern matching none of them is an error."""
    chosen: set[str] = set()
    for pattern in patterns:
        hits = {name for name in layers if _pattern_matches(pattern, name)}
        if not hits:
            raise PaceError(f"[adapter] feedforward pattern {pattern!r} matches no targeted layer",
                            remedy="feed-forward layers must also be in [adapter] targets (unset, feedforward is "
                                   "the kind's default, ia3: [\"fc2\"]; feedforward = [] scales every output); "
                                   f"targeted layers look like: {', '.join(layers[:3])}{', ...' if len(layers) > 3 else ''}")
        chosen |= hits
    return chosen


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def inject_adapters(model: nn.Module, config: AdapterConfig, num_classes: int | None = None) -> InjectionReport:
    """Adapt the targeted linears in place, give the model a fresh head, freeze everything else.

    With ``num_classes`` the head is replaced by a new trainable one (timm's ``reset_classifier``);
    without it the existing head is kept and trained. A kind with no tensors (``head``) adapts no
    layer, so ``targets`` and ``rank`` are not read.
    """
    spec = kind_spec(config.kind)  # an unknown kind fails before the model is touched
    if num_classes is not None:
        if num_classes <= 0:
            raise PaceError(f"num_classes must be > 0, got {num_classes}")
        model.reset_classifier(num_classes)
    head_name = head_module_name(model)
    model.requires_grad_(False)
    # A linear probe (kind head) reads no targets: only the new head trains.
    layers = find_target_layers(model, config.targets, exclude=head_name) if spec.adapts_layers else []
    modes = spec.modes
    feedforward = feedforward_layers(layers, config.feedforward) if modes else set()
    for path in layers:
        base = model.get_submodule(path)
        if spec.needs_bias and base.bias is None:
            raise PaceError(f"[adapter] targets: layer {path} has no bias, but kind {config.kind!r} moves biases",
                            remedy="leave that layer out of [adapter] targets, or pick a kind that needs no bias")
        mode = (modes[1] if path in feedforward else modes[0]) if modes else None
        _set_submodule(model, path, AdaptedLinear(base, config.kind, config.rank, mode))
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
        raise PaceError(f"the adapter does not fit this model: {mismatch}",
                        remedy="check that the recipe's model and [adapter] settings match the ones it was trained with")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise PaceError(f"adapter tensor {name} has shape {list(tensor.shape)} but the model expects "
                            f"{list(expected[name].shape)}", remedy="was it trained for another base model?")
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
