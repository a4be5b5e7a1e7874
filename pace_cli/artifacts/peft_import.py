"""`pace import-peft`: a PEFT folder for a timm model in as a pace adapter file.

A LoRA comes in as ``lora_add``, a LoRA with ``use_dora`` as ``dora``, an IA3 as ``ia3``. The
mapping is :mod:`.peft_format`'s, reversed: PEFT's scaling is folded into ``lora_B``, a saved
bias becomes Δb = b − b0 against the recipe's base, an IA3 layer's ``ia3_l`` becomes ``ia3_in``
or ``ia3_out`` by PEFT's own feed-forward rule, and options pace cannot express exactly
(per-layer ranks, ...) are refused by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pace_cli import files
from pace_cli.adapters import AdapterConfig, head_module_name, inject_adapters, load_adapter_state_dict
from pace_cli.artifacts.metadata import AdapterMetadata
from pace_cli.artifacts.peft_config import is_peft_feedforward, peft_method, peft_scaling
from pace_cli.artifacts.peft_format import (
    IMPORTED_KINDS, PACE_METADATA_KEY, PEFT_CONFIG_FILE, PEFT_KEY_PREFIX, PEFT_PICKLED_WEIGHTS_FILE, PEFT_WEIGHTS_FILE,
)
from pace_cli.errors import PaceError


@dataclass
class PeftFolder:
    """A PEFT adapter folder as read from disk: its config and its tensors without the PeftModel prefix."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, Tensor]
    metadata: dict[str, str] = field(default_factory=dict)


def read_peft_folder(folder: str | Path) -> PeftFolder:
    """Read ``adapter_config.json`` and the weights (safetensors, or a .bin read without running pickled code)."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise PaceError(f"PEFT adapter folder '{folder}' {what}; pass the folder PEFT's save_pretrained wrote")
    config_path = folder / PEFT_CONFIG_FILE
    if not config_path.is_file():
        raise PaceError(f"'{folder}' has no {PEFT_CONFIG_FILE}; it is not a PEFT adapter folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PaceError(f"'{config_path}' is not valid JSON ({type(e).__name__}: {e}); re-save the adapter") from None
    if not isinstance(config, dict):
        raise PaceError(f"'{config_path}' is not a JSON object; re-save the adapter")
    weights = folder / PEFT_WEIGHTS_FILE
    metadata: dict[str, str] = {}
    if weights.is_file():
        metadata = files.read_metadata(weights)
        tensors = files.load_tensors(weights)
    elif (folder / PEFT_PICKLED_WEIGHTS_FILE).is_file():
        tensors = files.load_state_dict(folder / PEFT_PICKLED_WEIGHTS_FILE)  # weights_only: never runs pickled code
    else:
        raise PaceError(f"'{folder}' has {PEFT_CONFIG_FILE} but no {PEFT_WEIGHTS_FILE}; the adapter is incomplete")
    stripped = {key.removeprefix(PEFT_KEY_PREFIX): tensor for key, tensor in tensors.items()}
    return PeftFolder(folder, config, stripped, metadata)


@dataclass
class _PeftLayers:
    """A PEFT state dict sorted by role: LoRA factors, bias information per layer, the rest."""

    lora_A: dict[str, Tensor] = field(default_factory=dict)
    lora_B: dict[str, Tensor] = field(default_factory=dict)
    lora_bias: dict[str, Tensor] = field(default_factory=dict)  # lora_B.bias (PEFT's lora_bias = true)
    magnitude: dict[str, Tensor] = field(default_factory=dict)  # lora_magnitude_vector (use_dora = true)
    ia3_l: dict[str, Tensor] = field(default_factory=dict)  # an IA3 layer's one vector
    saved_bias: dict[str, Tensor] = field(default_factory=dict)  # base_layer.bias (bias = lora_only / all)
    other: dict[str, Tensor] = field(default_factory=dict)  # modules_to_save and, with bias = all, other biases


    def targets(self) -> dict[str, Tensor]:
        return self.ia3_l or self.lora_A


def _sort_peft_tensors(peft: PeftFolder, method: str) -> _PeftLayers:
    sorted_ = _PeftLayers()
    suffixes = {".lora_A.weight": sorted_.lora_A, ".lora_B.weight": sorted_.lora_B, ".lora_B.bias": sorted_.lora_bias,
                ".base_layer.bias": sorted_.saved_bias, ".lora_magnitude_vector": sorted_.magnitude,
                ".ia3_l": sorted_.ia3_l}
    for key, tensor in peft.tensors.items():
        if any(part in key for part in ("lora_embedding_", ".lora_E", "lora_diag")):
            raise PaceError(f"'{peft.path}' holds {key}, which is not a LoRA factor of an nn.Linear layer; "
                            "pace imports plain LoRA on linear layers only")
        for suffix, bucket in suffixes.items():
            if key.endswith(suffix):
                bucket[key[: -len(suffix)]] = tensor
                break
        else:
            if ".base_layer." in key:
                raise PaceError(f"'{peft.path}' holds base weight {key}; pace imports LoRA factors, biases and a head only")
            sorted_.other[key] = tensor
    _check_sorted(peft, sorted_, method)
    return sorted_


def _check_sorted(peft: PeftFolder, parts: _PeftLayers, method: str) -> None:
    """Each layer holds what its method needs and nothing another method would."""
    if method == "ia3":
        stray = next(iter(parts.lora_A or parts.lora_B or parts.magnitude or parts.saved_bias), None)
        if stray is not None or not parts.ia3_l:
            what = f"LoRA tensors for {stray}" if stray else "no *.ia3_l tensor"
            raise PaceError(f"'{peft.path}' has peft_type IA3 but holds {what}; the adapter is damaged or not IA3")
        return
    if parts.ia3_l:
        raise PaceError(f"'{peft.path}' holds IA3 vectors ({next(iter(parts.ia3_l))}.ia3_l) but peft_type is LORA")
    unpaired = sorted(set(parts.lora_A) ^ set(parts.lora_B))
    if unpaired:
        raise PaceError(f"'{peft.path}' has lora_A without lora_B (or the reverse) for layer {unpaired[0]}; "
                        "the adapter is incomplete")
    if not parts.lora_A:
        raise PaceError(f"'{peft.path}' holds no LoRA factors (no *.lora_A.weight tensor); nothing to import")
    if method == "dora" and set(parts.magnitude) != set(parts.lora_A):
        missing = sorted(set(parts.lora_A) - set(parts.magnitude)) or sorted(parts.magnitude)
        raise PaceError(f"'{peft.path}' sets use_dora = true but layer {missing[0]} has no DoRA magnitude "
                        "(lora_magnitude_vector) paired with its LoRA factors; the adapter is incomplete")
    if method == "lora" and parts.magnitude:
        raise PaceError(f"'{peft.path}' holds {next(iter(parts.magnitude))}.lora_magnitude_vector, a DoRA magnitude, "
                        "but its config does not set use_dora = true")


def _head_rows(peft: PeftFolder, other: dict[str, Tensor]) -> int | None:
    """Outputs of the new head PEFT keeps in ``modules_to_save``, or None when it keeps the base's head."""
    weights = [t for key, t in other.items() if key.endswith(".weight") and t.dim() == 2]
    modules = peft.config.get("modules_to_save") or []
    if not modules and not weights:
        return None
    if modules and not weights:
        raise PaceError(f"'{peft.path}' lists modules_to_save = {json.dumps(modules)} but holds no weights for them; "
                        "the adapter is incomplete")
    if len(weights) != 1:
        raise PaceError(f"'{peft.path}' saves {len(weights)} whole modules besides the LoRA layers "
                        f"(modules_to_save = {json.dumps(modules)}); pace adapters hold the LoRA layers and one "
                        "classifier head only")
    return int(weights[0].shape[0])


def _build_base(recipe, num_classes: int) -> tuple[nn.Module, list[str]]:
    """The recipe's base model and the head keys that stayed fresh (the checkpoint's head has another shape)."""
    from pace_cli.builders import build_base_model
    from pace_cli.models import load_base_weights

    if recipe.model.checkpoint:
        model = build_base_model(recipe, num_classes, load_weights=False)  # seeded as in `train`
        return model, load_base_weights(model, recipe.model.checkpoint)
    return build_base_model(recipe, num_classes), []


@dataclass
class PeftImportReport:
    output: Path
    layers: int
    rank: int
    scaling: float
    bias: str
    head: str
    head_from: str  # "peft" (modules_to_save) or "base"
    num_classes: int
    bias_layers: int  # layers whose bias moved


def _imported_layer(peft, parts, path: str, layer: nn.Module, config_rank: int, scale: float,
                    model_name: str) -> dict[str, Tensor]:
    """One PEFT LoRA layer as pace tensors: lora_A, lora_B with PEFT's scaling folded in, Δb.

    The layer must be an nn.Linear of the recipe's model with the shapes the factors imply.
    """
    if not isinstance(layer, nn.Linear):
        raise PaceError(f"PEFT target {path} is a {type(layer).__name__} of {model_name}; pace imports "
                        "LoRA on nn.Linear layers (not the head) only")
    lora_a, lora_b = parts.lora_A[path].float(), parts.lora_B[path].float()
    if lora_a.dim() != 2 or lora_b.dim() != 2 or lora_a.shape[0] != config_rank or lora_b.shape[1] != config_rank:
        raise PaceError(f"PEFT layer {path} has lora_A {list(lora_a.shape)} and lora_B {list(lora_b.shape)}, "
                        f"not rank r = {config_rank} as the config says; per-layer ranks cannot be imported")
    if tuple(lora_a.shape) != (config_rank, layer.in_features) or \
            tuple(lora_b.shape) != (layer.out_features, config_rank):
        raise PaceError(f"PEFT layer {path} has lora_A {list(lora_a.shape)} and lora_B {list(lora_b.shape)} but "
                        f"{model_name}'s {path} is {layer.out_features}x{layer.in_features}; "
                        "is this adapter for another model or other model arguments?")
    # pace applies B A unscaled: fold PEFT's alpha / r (or alpha / sqrt(r)) into B.
    tensors = {f"{path}.lora_A": lora_a, f"{path}.lora_B": lora_b if scale == 1.0 else lora_b * scale}
    if path in parts.magnitude:  # DoRA: PEFT's ‖W0 + scale B A‖ is then pace's ‖W0 + B' A‖
        magnitude = parts.magnitude[path].float()
        if tuple(magnitude.shape) != (layer.out_features,):
            raise PaceError(f"PEFT DoRA magnitude of {path} has shape {list(magnitude.shape)}, not "
                            f"[{layer.out_features}]")
        return {**tensors, f"{path}.dora_magnitude": magnitude}
    delta_b = None
    if path in parts.saved_bias:
        if layer.bias is None:
            raise PaceError(f"'{peft.path}' saves a bias for {path}, which has none in {model_name}")
        delta_b = parts.saved_bias[path].float() - layer.bias.detach().float()
    if path in parts.lora_bias:
        if layer.bias is None:
            raise PaceError(f"'{peft.path}' has a LoRA bias for {path}, which has no bias in {model_name}; "
                            "the merged model would need a bias the architecture lacks")
        shift = parts.lora_bias[path].float() * scale
        delta_b = shift if delta_b is None else delta_b + shift
    if layer.bias is not None:
        if delta_b is not None and tuple(delta_b.shape) != (layer.out_features,):
            raise PaceError(f"PEFT bias of {path} has shape {list(delta_b.shape)}, not [{layer.out_features}]")
        tensors[f"{path}.delta_bias"] = torch.zeros(layer.out_features) if delta_b is None else delta_b
    return tensors


def _imported_ia3_layer(parts: _PeftLayers, path: str, layer: nn.Module, config: dict[str, Any],
                        model_name: str) -> dict[str, Tensor]:
    """One PEFT IA3 layer: ia3_l [1, d_in] on a feed-forward layer (input scaled) is ``ia3_in``, else [d_out, 1] ``ia3_out``."""
    if not isinstance(layer, nn.Linear):
        raise PaceError(f"PEFT target {path} is a {type(layer).__name__} of {model_name}; pace imports "
                        "IA3 on nn.Linear layers (not the head) only")
    vector = parts.ia3_l[path].float()
    feedforward = is_peft_feedforward(config, path)
    name, shape = ("ia3_in", (1, layer.in_features)) if feedforward else ("ia3_out", (layer.out_features, 1))
    if tuple(vector.shape) != shape:
        role = "a feed-forward" if feedforward else "an output-scaled (not feed-forward)"
        raise PaceError(f"PEFT IA3 vector of {path} has shape {list(vector.shape)}, but {path} is {role} layer "
                        f"{layer.out_features}x{layer.in_features} by feedforward_modules, so it should be "
                        f"{list(shape)}", remedy="is this adapter for another model, or its config edited?")
    return {f"{path}.{name}": vector}


def _num_classes(peft: PeftFolder, head_rows: int | None, wanted: int | None) -> int:
    if head_rows is not None and wanted is not None and wanted != head_rows:
        raise PaceError(f"the recipe sets [model] num_classes = {wanted} but the PEFT head has {head_rows} outputs",
                        remedy="drop num_classes or fix it")
    if head_rows is None and wanted is None:
        raise PaceError(f"'{peft.path}' keeps the base model's own head (no modules_to_save)",
                        remedy="set [model] num_classes to that head's number of classes "
                               "(e.g. --set model.num_classes=1000)")
    return head_rows or wanted


def _head_tensors(peft: PeftFolder, parts: _PeftLayers, head_rows: int | None, head_name: str,
                  base_state: dict[str, Tensor], fresh_head: list[str], model_name: str,
                  num_classes: int) -> tuple[dict[str, Tensor], str]:
    """The head and where it came from: PEFT's modules_to_save copy, or else the base's own (which must be loaded)."""
    head_prefix = head_name + "."
    if head_rows is not None:
        head_tensors = {k: v for k, v in parts.other.items() if k.startswith(head_prefix)}
        if not head_tensors:
            module = next(k for k in parts.other if k.endswith(".weight")).rpartition(".")[0]
            raise PaceError(f"'{peft.path}' saves module {module}, but the head of {model_name} is {head_name}",
                            remedy="pace adapters replace only the classifier head")
        return head_tensors, "peft"
    if fresh_head:
        raise PaceError(f"'{peft.path}' keeps the base model's head, but the recipe's checkpoint has no "
                        f"{num_classes}-class head (fresh: {fresh_head[0]})",
                        remedy="set [model] num_classes to its classes")
    return {k: v for k, v in base_state.items() if k.startswith(head_prefix)}, "base"


def _check_other_tensors(peft: PeftFolder, parts: _PeftLayers, head_tensors: dict[str, Tensor], head_name: str,
                         base_state: dict[str, Tensor]) -> None:
    """Whatever is neither a LoRA factor nor the head must be a bias the base already has (bias = "all")."""
    bias_mode = peft.config.get("bias", "none")
    for key, tensor in parts.other.items():
        if key in head_tensors:
            continue
        if bias_mode == "all" and key.endswith(".bias") and key in base_state \
                and torch.equal(tensor.to(base_state[key].dtype), base_state[key]):
            continue
        raise PaceError(f"'{peft.path}' changes {key}, which is neither a LoRA layer nor the head {head_name}",
                        remedy="pace's adapter format cannot hold it exactly (use PEFT's merge_and_unload and load "
                               "the result as a full checkpoint instead)")


def _layer_order(parts: _PeftLayers, modules: dict[str, nn.Module], model_name: str, head_name: str) -> list[str]:
    """The PEFT targets in model order, as `train` writes them; each must be a module but not the head."""
    layer_order = [name for name in modules if name in parts.targets()]
    missing = sorted(set(parts.targets()) - set(layer_order))
    if missing:
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        sample = ", ".join(linears[:6]) + (", ..." if len(linears) > 6 else "")
        raise PaceError(f"PEFT target {missing[0]} is not a module of {model_name} as the recipe builds it "
                        f"({len(missing)} of {len(parts.targets())} targets unknown; its linear layers look like: "
                        f"{sample})", remedy="is this adapter for another model?")
    for path in layer_order:
        if path == head_name or path.startswith(head_name + "."):
            raise PaceError(f"PEFT target {path} is a {type(modules[path]).__name__} of {model_name}; "
                            "pace imports LoRA on nn.Linear layers (not the head) only")
    return layer_order


def import_peft(folder: str | Path, output: str | Path, recipe, *, overwrite: bool = False) -> PeftImportReport:
    """Turn a PEFT folder for a timm model into a pace adapter file: LoRA as ``lora_add``, DoRA as ``dora``,
    IA3 as ``ia3``.

    ``recipe`` names the timm model and its base weights. A LoRA's result holds lora_A, lora_B scaled
    by PEFT's alpha / r, Δb = (saved bias − b0) [+ scaled lora_B.bias] (DoRA: and the magnitude); an
    IA3's its vectors; each with the head PEFT kept in ``modules_to_save`` (or the base's own head),
    and is checked by loading it into the recipe's model the way ``pace eval --unmerged`` does.
    """
    from pace_cli.models import base_fingerprints

    output = Path(output)
    files.check_can_write(output, overwrite)
    peft = read_peft_folder(folder)
    method = peft_method(peft.config, peft.path)
    kind = IMPORTED_KINDS[method]
    config_rank, scale = (recipe.adapter.rank, 1.0) if method == "ia3" else peft_scaling(peft.config, peft.path)
    parts = _sort_peft_tensors(peft, method)
    head_rows = _head_rows(peft, parts.other)
    num_classes = _num_classes(peft, head_rows, recipe.model.num_classes)
    model, fresh_head = _build_base(recipe, num_classes)
    head_name = head_module_name(model)
    fingerprints = base_fingerprints(model)  # before injecting: the base as `train` would record it
    base_state = model.state_dict()
    head_tensors, head_from = _head_tensors(peft, parts, head_rows, head_name, base_state, fresh_head,
                                            recipe.model.name, num_classes)
    _check_other_tensors(peft, parts, head_tensors, head_name, base_state)

    # Adapted layers: each must be an nn.Linear of the recipe's model with matching shapes, one rank for all.
    modules = dict(model.named_modules())
    layer_order = _layer_order(parts, modules, recipe.model.name, head_name)
    state: dict[str, Tensor] = {}
    bias_layers = 0
    for path in layer_order:
        if method == "ia3":
            tensors = _imported_ia3_layer(parts, path, modules[path], peft.config, recipe.model.name)
        else:
            tensors = _imported_layer(peft, parts, path, modules[path], config_rank, scale, recipe.model.name)
        state.update(tensors)
        moved = tensors.get(f"{path}.delta_bias")
        bias_layers += int(moved is not None and bool(moved.any()))
    for key, tensor in head_tensors.items():
        state[key] = tensor.detach().float().contiguous()
    for key, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise PaceError(f"PEFT tensor for {key} contains NaN or inf; refusing to import it")

    # Load it exactly as `pace eval --unmerged` would: a file that passes this, merge and eval accept.
    feedforward = tuple(path for path in layer_order if f"{path}.ia3_in" in state)
    report = inject_adapters(model, AdapterConfig(kind=kind, rank=config_rank, targets=tuple(layer_order),
                                                  feedforward=feedforward))
    load_adapter_state_dict(model, state)
    metadata = _imported_metadata(peft, recipe, kind, config_rank, scale, layer_order, feedforward,
                                  report.adapted_layers, head_name, head_from, num_classes, fingerprints,
                                  sum(t.numel() for t in state.values()))
    files.save_tensors(output, state, metadata.to_metadata())
    return PeftImportReport(output, len(layer_order), config_rank, scale, peft.config.get("bias", "none"), head_name,
                            head_from, num_classes, bias_layers)


def _imported_metadata(peft: PeftFolder, recipe, kind: str, rank: int, scale: float, layer_order: list[str],
                       feedforward: tuple[str, ...], adapted_layers: list[str], head_name: str, head_from: str, num_classes: int,
                       fingerprints: dict[str, str], trainable_parameters: int) -> AdapterMetadata:
    from pace_cli.builders import timm_kwargs
    from pace_cli.recipe import recipe_to_toml

    stashed = _pace_provenance(peft)
    class_names = stashed.get("class_names") or []
    # The recorded recipe says what the file holds, whatever [adapter] the recipe given for the model had.
    imported = {"kind": kind, "rank": rank, "targets": list(layer_order), "feedforward": list(feedforward)}
    recipe = recipe.model_copy(update={"adapter": recipe.adapter.model_copy(update=imported)})
    return AdapterMetadata(
        kind=kind, rank=rank, targets=list(layer_order), layers=adapted_layers, head=head_name,
        timm_model=recipe.model.name, num_classes=num_classes, base_fingerprint=fingerprints["float32"],
        trainable_parameters=trainable_parameters, timm_kwargs=timm_kwargs(recipe),
        class_names=class_names if len(class_names) == num_classes else [],
        base_checkpoint=recipe.model.checkpoint or "", recipe=recipe_to_toml(recipe), base_fingerprints=fingerprints,
        imported_from={"format": "peft", "folder": peft.path.name, "peft_version": peft.config.get("peft_version"),
                       "r": rank, "lora_alpha": peft.config.get("lora_alpha"), "scaling": scale,
                       "bias": peft.config.get("bias", "none"), "head": head_from},
    )


def _pace_provenance(peft: PeftFolder) -> dict[str, Any]:
    try:
        value = json.loads(peft.metadata.get(PACE_METADATA_KEY, "{}"))
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
