"""Interop with Hugging Face PEFT: pace adapters out as PEFT LoRA folders, PEFT LoRA folders in as pace adapters.

A ``lora_add`` adapter is, at inference, a plain LoRA: ΔW = lora_B @ lora_A with the same tensor
shapes PEFT uses ([r, d_in] and [d_out, r]). The mapping, for an adapted ``nn.Linear`` at path P:

| pace adapter file          | PEFT folder (``adapter_model.safetensors``)                         |
|----------------------------|---------------------------------------------------------------------|
| ``P.lora_A``               | ``base_model.model.P.lora_A.weight``                                |
| ``P.lora_B``               | ``base_model.model.P.lora_B.weight``, with ``lora_alpha = r`` so PEFT's scaling alpha / r is 1 |
| ``P.delta_bias`` (Δb)      | ``base_model.model.P.base_layer.bias`` = b0 + Δb, config ``bias = "lora_only"`` |
| the new head ``H.*``       | ``base_model.model.H.*``, config ``modules_to_save = [H]``          |

PEFT's ``bias = "lora_only"`` saves and loads the *whole* bias of each adapted layer, so the
export needs the base weights (b0) whenever a bias moved; b0 + Δb is computed by
:func:`pace_cli.adapters.merge.merge_layer`, the function ``pace merge`` uses, so both give the same bias.
``target_modules`` lists the adapted layers by full path: PEFT matches a name against the end of
a module path, and a short name such as ``proj`` would also catch ViT's ``patch_embed.proj`` conv.

``lora_mul`` (ΔW = W0 ⊙ (B A), full rank in general) and ``vpt_add`` have no exact PEFT LoRA
form; they are refused, never approximated. Importing reverses the mapping: PEFT's scaling is
folded into ``lora_B``, a saved bias becomes Δb = b − b0 against the recipe's base, and options
pace cannot express exactly (DoRA, per-layer ranks, ...) are refused by name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pace_cli import __version__
from pace_cli import files
from pace_cli.adapters import AdapterConfig, head_module_name, inject_adapters, load_adapter_state_dict
from pace_cli.artifacts.core import (
    AdapterFile, LazySafetensors, adapter_metadata, base_fingerprint, expected_fingerprint, read_adapter,
)
from pace_cli.errors import PaceError
from pace_cli.adapters import merge_layer, split_adapter_state

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PICKLED_WEIGHTS_FILE = "adapter_model.bin"
PEFT_CARD_FILE = "README.md"
PEFT_KEY_PREFIX = "base_model.model."
EXPORT_FORMATS = ("peft",)
PEFT_EXPORTABLE_KINDS = ("lora_add",)
# Metadata key of adapter_model.safetensors under which an export records where it came from;
# `import-peft` reads class names back from it.
PACE_METADATA_KEY = "pace"

# Files a PEFT export consists of: only a folder holding nothing else may be replaced (--overwrite).
_EXPORT_FILES = {PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, PEFT_PICKLED_WEIGHTS_FILE, PEFT_CARD_FILE}


# ---------------------------------------------------------------- export: pace → PEFT


@dataclass
class PeftExportReport:
    output: Path
    layers: int
    rank: int
    bias: str  # PEFT's bias mode: "none" or "lora_only"
    head: str
    tensors: int
    base: str | None  # the base read for b0, when a bias moved
    fingerprint_ok: bool | None  # None when no base was needed


def check_can_write_folder(folder: Path, overwrite: bool) -> None:
    """Refuse to replace a folder unless asked to, and never one holding files an export would not write."""
    if folder.is_file():
        raise PaceError(f"output '{folder}' is a file; give a folder path for the PEFT adapter")
    if folder.is_dir():
        present = {p.name for p in folder.iterdir()}
        foreign = sorted(present - _EXPORT_FILES)
        if foreign:
            raise PaceError(f"output folder '{folder}' holds other files (e.g. {foreign[0]}); pace only replaces a "
                            "folder that holds a PEFT adapter, so pick a new or empty folder")
        if present and not overwrite:
            raise PaceError(f"output folder '{folder}' already holds a PEFT adapter; pass --overwrite to replace it")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PaceError(f"cannot create folder '{folder.parent}' for '{folder}': {e.strerror or e}") from None


def _refuse_kind(adapter: AdapterFile) -> None:
    if adapter.kind in PEFT_EXPORTABLE_KINDS:
        return
    why = {
        "lora_mul": "its ΔW = W0 ⊙ (B A) is not low rank, so no PEFT LoRA reproduces it",
        "vpt_add": "its Δb = W0 (prompt_B prompt_A) is a prompt, not a LoRA",
        "lora_mul+vpt_add": "its ΔW = W0 ⊙ (B A) is not low rank, so no PEFT LoRA reproduces it",
    }.get(adapter.kind, "PEFT has no exact equivalent")
    raise PaceError(
        f"'{adapter.path}' is a {adapter.kind!r} adapter and PEFT cannot express it exactly ({why}); pace never "
        "exports an approximation: fold it into the base with `pace merge BASE ADAPTER -o merged.safetensors` and "
        "load that plain timm checkpoint instead (only lora_add adapters export to PEFT)"
    )


def _resolve_base(base: str | None, adapter: AdapterFile) -> Path:
    from pace_cli.models import resolve_checkpoint

    choice = base or adapter.metadata.get("base_checkpoint") or ""
    if not choice:
        raise PaceError(f"'{adapter.path}' shifts layer biases, and PEFT stores the whole bias b0 + Δb, so the export "
                        "needs the base weights: pass --base BASE.safetensors (or builtin:<name>)")
    try:
        path = resolve_checkpoint(choice)
    except PaceError:
        if base:
            raise
        raise PaceError(f"'{adapter.path}' records its base as '{choice}', which is not found from here (relative paths "
                        "are taken from the current folder); pass --base BASE.safetensors") from None
    if path.suffix.lower() != ".safetensors":
        raise PaceError(f"base '{choice}' must be a .safetensors file; convert it with "
                        "`pace export-base RECIPE --output base.safetensors` and pass --base")
    return path


def _card(adapter: AdapterFile, config: dict[str, Any]) -> str:
    """A short model card: what the folder is and the few lines that load it."""
    meta = adapter.metadata
    kwargs = ", ".join(f"{k}={v!r}" for k, v in (meta.get("timm_kwargs") or {}).items())
    kwargs = f", {kwargs}" if kwargs else ""
    return f"""---
library_name: peft
tags: [timm, lora, pace]
---
# PEFT LoRA exported by pace

A `lora_add` adapter ({meta.get("created_by", "pace")}) exported by `pace export` as a plain PEFT LoRA:
rank {config["r"]}, `lora_alpha` {config["lora_alpha"]} (scaling 1), `bias = "{config["bias"]}"`, the new head in
`modules_to_save`. It loads without pace:

```python
import timm
from peft import PeftModel

model = timm.create_model({meta["timm_model"]!r}, num_classes={meta["num_classes"]}{kwargs})
base = ...  # state dict of the base it was trained on ({meta.get("base_checkpoint") or "unrecorded"}), e.g. safetensors load_file
model.load_state_dict({{k: v for k, v in base.items() if not k.startswith({adapter.head_name + "."!r})}}, strict=False)
model = PeftModel.from_pretrained(model, "THIS_FOLDER").eval()      # or .merge_and_unload()
```
"""


def export_peft(adapter_path: str | Path, output: str | Path, *, base: str | None = None, force: bool = False,
                overwrite: bool = False) -> PeftExportReport:
    """Write a ``lora_add`` adapter as a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``).

    ``base`` (a .safetensors file or ``builtin:<name>``, by default the adapter's recorded base) is
    read only when a bias moved; its fingerprint must match the adapter's unless ``force``. The
    folder is written under a temporary name and renamed when complete.
    """
    output = Path(output)
    check_can_write_folder(output, overwrite)
    adapter = read_adapter(adapter_path)
    _refuse_kind(adapter)
    layers, head = split_adapter_state(adapter.tensors)
    if not layers:
        raise PaceError(f"'{adapter.path}' adapts no layer; there is nothing to export as a LoRA")
    ranks = {tuple(t["lora_A"].shape)[0] for t in layers.values() if "lora_A" in t}
    if len(ranks) != 1 or any(set(t) - {"lora_A", "lora_B", "delta_bias"} or "lora_B" not in t
                              for t in layers.values()):
        raise PaceError(f"'{adapter.path}' does not hold one lora_A/lora_B pair of a single rank per layer; "
                        "the adapter file is damaged")
    rank = ranks.pop()
    recorded = [path for path in adapter.metadata["adapter"].get("layers") or [] if path in layers]
    layer_order = recorded + [path for path in layers if path not in recorded]  # model (depth) order
    shifts_bias = any("delta_bias" in t and bool(t["delta_bias"].any()) for t in layers.values())

    prefix = PEFT_KEY_PREFIX
    tensors: dict[str, Tensor] = {}
    for path, own in layers.items():
        tensors[f"{prefix}{path}.lora_A.weight"] = own["lora_A"]
        tensors[f"{prefix}{path}.lora_B.weight"] = own["lora_B"]
    base_path: Path | None = None
    fingerprint_ok: bool | None = None
    if shifts_bias:
        base_path = _resolve_base(base, adapter)
        with LazySafetensors(base_path) as base_file:
            found = base_fingerprint(base_file, adapter.head_name)
            fingerprint_ok = found == expected_fingerprint(adapter.metadata, base_file)
            if not fingerprint_ok and not force:
                raise PaceError(f"'{base_path}' is not the base '{adapter.path.name}' was trained on (fingerprint "
                                f"differs), so b0 + Δb would be wrong; pass --base with the right one, or --force")
            for path, own in layers.items():
                if f"{path}.weight" not in base_file:
                    raise PaceError(f"the adapter adapts layer {path}, but the base '{base_path}' has no "
                                    f"{path}.weight; the adapter was trained for another base model")
                if "delta_bias" not in own:
                    continue  # a layer without a bias: nothing to carry
                bias_key = f"{path}.bias"
                bias = base_file[bias_key] if bias_key in base_file else None
                # The same function `pace merge` uses: the PEFT bias equals the merged file's bias bit for bit.
                _, new_bias = merge_layer(adapter.kind, base_file[f"{path}.weight"], bias, own, path)
                tensors[f"{prefix}{path}.base_layer.bias"] = new_bias
    for key, tensor in head.items():
        tensors[prefix + key] = tensor

    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "inference_mode": True,
        "r": rank,
        # PEFT scales B A by lora_alpha / r; pace applies B A unscaled, so alpha = r keeps the tensors as they are.
        "lora_alpha": rank,
        "use_rslora": False,
        "lora_dropout": 0.0,
        "target_modules": layer_order,
        "modules_to_save": [adapter.head_name],
        "bias": "lora_only" if shifts_bias else "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "init_lora_weights": True,
    }
    meta = adapter.metadata
    provenance = {
        "created_by": f"pace {__version__}", "adapter": adapter.path.name, "kind": adapter.kind,
        "timm_model": meta["timm_model"], "timm_kwargs": meta.get("timm_kwargs", {}),
        "num_classes": meta["num_classes"], "class_names": meta.get("class_names", []),
        "head": adapter.head_name, "base_fingerprint": meta.get("base_fingerprint", ""),
    }
    try:
        with files.atomic_dir(output) as tmp:
            # "format": "pt" is what transformers and PEFT write and expect in adapter safetensors files.
            files.save_tensors(tmp / PEFT_WEIGHTS_FILE, tensors,
                            {"format": "pt", PACE_METADATA_KEY: json.dumps(provenance)})
            (tmp / PEFT_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
            (tmp / PEFT_CARD_FILE).write_text(_card(adapter, config))
    except files.WriteError as e:  # raised for a file inside the temporary folder: name the folder the user asked for
        raise files.write_error(output, OSError(e.errno, e.reason)) from None
    except OSError as e:
        raise files.write_error(output, e) from None
    return PeftExportReport(output, len(layers), rank, config["bias"], adapter.head_name, len(tensors),
                            str(base_path) if base_path else None, fingerprint_ok)


# ---------------------------------------------------------------- import: PEFT → pace


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


# Options whose non-default value changes what the adapter computes in a way pace's lora_add cannot hold.
_UNSUPPORTED_OPTIONS = {
    "use_dora": (False, "DoRA rescales each weight column by a learned magnitude"),
    "fan_in_fan_out": (False, "it is for GPT-2-style Conv1D layers, and pace adapts nn.Linear"),
    "rank_pattern": ({}, "pace adapters have one rank for every layer"),
    "alpha_pattern": ({}, "pace adapters have one scaling for every layer"),
    "layer_replication": (None, "it duplicates base layers"),
    "target_parameters": (None, "it adapts raw parameters, not nn.Linear layers"),
    "trainable_token_indices": (None, "it trains embedding rows"),
    "use_qalora": (False, "QA-LoRA pools the input"),
    "use_bdlora": (None, "block-diagonal LoRA factors are not plain low-rank products"),
    "megatron_config": (None, "Megatron parallel layers are not timm layers"),
    "alora_invocation_tokens": (None, "activated LoRA depends on the input tokens"),
}
# init_lora_weights values under which PEFT trains against a modified base (unless converted on save).
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


def peft_scaling(config: dict[str, Any], folder: Path) -> tuple[int, float]:
    """Validate a PEFT config for import; return (r, the scale PEFT applies to lora_B @ lora_A)."""
    where = f"'{folder / PEFT_CONFIG_FILE}'"
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise PaceError(f"{where} has peft_type {config.get('peft_type') or '(none)'}; pace imports PEFT LoRA "
                        "adapters only (peft_type LORA)")
    for option, (default, why) in _UNSUPPORTED_OPTIONS.items():
        value = config.get(option, default)
        if value not in (default, None, {}, [], False):
            raise PaceError(f"{where} sets {option} = {json.dumps(value)}, which pace cannot import exactly ({why}); "
                            "only plain LoRA adapters import")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        raise PaceError(f"{where} sets init_lora_weights = {init!r}: that method trains against a modified base, so the "
                        "adapter does not apply to the original weights; re-save it with PEFT's "
                        "path_initial_model_for_weight_conversion first")
    bias = config.get("bias", "none")
    if bias not in ("none", "lora_only", "all"):
        raise PaceError(f"{where} sets bias = {bias!r}; pace imports bias 'none', 'lora_only' or 'all'")
    r, alpha = config.get("r"), config.get("lora_alpha", 8)
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0 or not isinstance(alpha, (int, float)) \
            or isinstance(alpha, bool):
        raise PaceError(f"{where} needs a positive integer r and a numeric lora_alpha (got r = {r!r}, "
                        f"lora_alpha = {alpha!r})")
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return r, float(scale)


@dataclass
class _PeftLayers:
    """A PEFT state dict sorted by role: LoRA factors, bias information per layer, the rest."""

    lora_A: dict[str, Tensor] = field(default_factory=dict)
    lora_B: dict[str, Tensor] = field(default_factory=dict)
    lora_bias: dict[str, Tensor] = field(default_factory=dict)  # lora_B.bias (PEFT's lora_bias = true)
    saved_bias: dict[str, Tensor] = field(default_factory=dict)  # base_layer.bias (bias = lora_only / all)
    other: dict[str, Tensor] = field(default_factory=dict)  # modules_to_save and, with bias = all, other biases


def _sort_peft_tensors(peft: PeftFolder) -> _PeftLayers:
    sorted_ = _PeftLayers()
    suffixes = {".lora_A.weight": sorted_.lora_A, ".lora_B.weight": sorted_.lora_B, ".lora_B.bias": sorted_.lora_bias,
                ".base_layer.bias": sorted_.saved_bias}
    for key, tensor in peft.tensors.items():
        if any(part in key for part in ("lora_embedding_", "lora_magnitude_vector", ".lora_E", "lora_diag")):
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
    unpaired = sorted(set(sorted_.lora_A) ^ set(sorted_.lora_B))
    if unpaired:
        raise PaceError(f"'{peft.path}' has lora_A without lora_B (or the reverse) for layer {unpaired[0]}; "
                        "the adapter is incomplete")
    if not sorted_.lora_A:
        raise PaceError(f"'{peft.path}' holds no LoRA factors (no *.lora_A.weight tensor); nothing to import")
    return sorted_


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


def import_peft(folder: str | Path, output: str | Path, recipe, *, overwrite: bool = False) -> PeftImportReport:
    """Turn a PEFT LoRA folder for a timm model into a pace ``lora_add`` adapter file.

    ``recipe`` names the timm model and its base weights. The result holds lora_A, lora_B scaled
    by PEFT's alpha / r, Δb = (saved bias − b0) [+ scaled lora_B.bias], and the head PEFT kept in
    ``modules_to_save`` (or the base's own head), and is checked by loading it into the recipe's
    model the way ``pace eval --unmerged`` does.
    """
    from pace_cli.builders import timm_kwargs
    from pace_cli.models import base_fingerprints
    from pace_cli.recipe.schema import recipe_to_toml

    output = Path(output)
    files.check_can_write(output, overwrite)
    peft = read_peft_folder(folder)
    config_rank, scale = peft_scaling(peft.config, peft.path)
    bias_mode = peft.config.get("bias", "none")
    parts = _sort_peft_tensors(peft)

    head_rows = _head_rows(peft, parts.other)
    wanted = recipe.model.num_classes
    if head_rows is not None and wanted is not None and wanted != head_rows:
        raise PaceError(f"the recipe sets [model] num_classes = {wanted} but the PEFT head has {head_rows} outputs; "
                        "drop num_classes or fix it")
    if head_rows is None and wanted is None:
        raise PaceError(f"'{peft.path}' keeps the base model's own head (no modules_to_save); set [model] num_classes "
                        "to that head's number of classes (e.g. --set model.num_classes=1000)")
    num_classes = head_rows or wanted
    model, fresh_head = _build_base(recipe, num_classes)
    head_name = head_module_name(model)
    fingerprints = base_fingerprints(model)  # before injecting: the base as `train` would record it
    base_state = model.state_dict()
    head_prefix = head_name + "."

    # The head: PEFT's modules_to_save copy, or else the base's own (which must then have been loaded).
    head_tensors = {k: v for k, v in parts.other.items() if k.startswith(head_prefix)}
    if head_rows is not None:
        if not head_tensors:
            module = next(k for k in parts.other if k.endswith(".weight")).rpartition(".")[0]
            raise PaceError(f"'{peft.path}' saves module {module}, but the head of {recipe.model.name} is {head_name}; "
                            "pace adapters replace only the classifier head")
        head_from = "peft"
    else:
        if fresh_head:
            raise PaceError(f"'{peft.path}' keeps the base model's head, but the recipe's checkpoint has no "
                            f"{num_classes}-class head (fresh: {fresh_head[0]}); set [model] num_classes to its classes")
        head_tensors = {k: v for k, v in base_state.items() if k.startswith(head_prefix)}
        head_from = "base"
    for key, tensor in parts.other.items():
        if key in head_tensors:
            continue
        # bias = "all" saves every bias of the model; those outside the LoRA layers must be the base's own.
        if bias_mode == "all" and key.endswith(".bias") and key in base_state \
                and torch.equal(tensor.to(base_state[key].dtype), base_state[key]):
            continue
        raise PaceError(f"'{peft.path}' changes {key}, which is neither a LoRA layer nor the head {head_name}; "
                        "pace's adapter format cannot hold it exactly (use PEFT's merge_and_unload and load the "
                        "result as a full checkpoint instead)")

    # LoRA layers: each must be an nn.Linear of the recipe's model with matching shapes, one rank for all.
    modules = dict(model.named_modules())
    layer_order = [name for name in modules if name in parts.lora_A]  # model order, as `train` writes
    missing = sorted(set(parts.lora_A) - set(layer_order))
    if missing:
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        sample = ", ".join(linears[:6]) + (", ..." if len(linears) > 6 else "")
        raise PaceError(f"PEFT target {missing[0]} is not a module of {recipe.model.name} as the recipe builds it "
                        f"({len(missing)} of {len(parts.lora_A)} targets unknown; its linear layers look like: "
                        f"{sample}); is this adapter for another model?")
    state: dict[str, Tensor] = {}
    bias_layers = 0
    for path in layer_order:
        if path == head_name or path.startswith(head_prefix):
            raise PaceError(f"PEFT target {path} is a {type(modules[path]).__name__} of {recipe.model.name}; "
                            "pace imports LoRA on nn.Linear layers (not the head) only")
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
    report = inject_adapters(model, AdapterConfig(kind="lora_add", rank=config_rank, targets=tuple(layer_order)))
    load_adapter_state_dict(model, state)

    stashed = _pace_provenance(peft)
    # The recorded recipe says what the file holds, whatever [adapter] the recipe given for the model had.
    imported = {"kind": "lora_add", "rank": config_rank, "targets": list(layer_order)}
    recipe = recipe.model_copy(update={"adapter": recipe.adapter.model_copy(update=imported)})
    metadata = adapter_metadata(
        kind="lora_add", rank=config_rank, targets=list(layer_order), layers=report.adapted_layers, head=head_name,
        pace={}, timm_model=recipe.model.name, timm_kwargs=timm_kwargs(recipe), num_classes=num_classes,
        class_names=stashed.get("class_names") if len(stashed.get("class_names") or []) == num_classes else None,
        base_fingerprint=fingerprints["float32"], base_checkpoint=recipe.model.checkpoint,
        recipe_toml=recipe_to_toml(recipe), trainable_parameters=sum(t.numel() for t in state.values()),
        extra={"base_fingerprints": fingerprints,
               "imported_from": {"format": "peft", "folder": peft.path.name,
                                 "peft_version": peft.config.get("peft_version"), "r": config_rank,
                                 "lora_alpha": peft.config.get("lora_alpha"), "scaling": scale, "bias": bias_mode,
                                 "head": head_from}},
    )
    files.save_tensors(output, state, metadata)
    return PeftImportReport(output, len(layer_order), config_rank, scale, bias_mode, head_name, head_from, num_classes,
                            bias_layers)


def _pace_provenance(peft: PeftFolder) -> dict[str, Any]:
    try:
        value = json.loads(peft.metadata.get(PACE_METADATA_KEY, "{}"))
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
