"""`pace export`: an adapter file out as a PEFT folder (mapping in :mod:`.peft_format`).

``lora_add``, ``lora_add+vpt_add`` (ΔW = B A; Δb = db + W0 p carried whole as the new bias) and
``bitfit`` (zero LoRA factors, Δb as the new bias) become a PEFT LoRA, ``dora`` a LoRA with
``use_dora = true``, ``ia3`` a PEFT IA3 folder; every other kind is refused with the reason its row gives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from pace_cli import __version__, files
from pace_cli.adapters import KINDS, kind_spec, merge_layer, split_adapter_state
from pace_cli.artifacts.adapter_file import AdapterFile, read_adapter
from pace_cli.artifacts.peft_format import (
    EXPORT_FILES, PACE_METADATA_KEY, PEFT_CARD_FILE, PEFT_CONFIG_FILE, PEFT_KEY_PREFIX, PEFT_WEIGHTS_FILE,
)
from pace_cli.artifacts.streaming_merge import LazySafetensors, base_fingerprint, stored_dtype
from pace_cli.errors import PaceError


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
    method: str = "LoRA"  # what PEFT loads it as: LoRA, DoRA (a LoRA with use_dora) or IA3
    feedforward: int = 0  # IA3: layers whose input is scaled (feedforward_modules)


def check_can_write_folder(folder: Path, overwrite: bool) -> None:
    """Refuse to replace a folder unless asked to, and never one holding files an export would not write."""
    if folder.is_file():
        raise PaceError(f"output '{folder}' is a file", remedy="give a folder path for the PEFT adapter")
    if folder.is_dir():
        present = {p.name for p in folder.iterdir()}
        foreign = sorted(present - EXPORT_FILES)
        if foreign:
            raise PaceError(f"output folder '{folder}' holds other files (e.g. {foreign[0]})",
                            remedy="pace only replaces a folder that holds a PEFT adapter, so pick a new or empty "
                                   "folder")
        if present and not overwrite:
            raise PaceError(f"output folder '{folder}' already holds a PEFT adapter",
                            remedy="pass --overwrite to replace it")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PaceError(f"cannot create folder '{folder.parent}' for '{folder}': {e.strerror or e}") from None


def _refuse_kind(adapter: AdapterFile) -> None:
    why = kind_spec(adapter.kind).peft_refusal
    if why is None:
        return
    exportable = ", ".join(name for name, spec in KINDS.items() if spec.peft_refusal is None)
    raise PaceError(
        f"'{adapter.path}' is a {adapter.kind!r} adapter and PEFT cannot express it exactly ({why})",
        remedy="pace never exports an approximation: fold it into the base with `pace merge BASE ADAPTER -o "
               f"merged.safetensors` and load that plain timm checkpoint instead (only {exportable} adapters "
               "export to PEFT)")


def _resolve_base(base: str | None, adapter: AdapterFile) -> Path:
    from pace_cli.models import resolve_checkpoint

    choice = base or adapter.metadata.base_checkpoint
    if not choice:
        raise PaceError(f"'{adapter.path}' shifts layer biases, and PEFT stores the whole bias b0 + Δb, so the export "
                        "needs the base weights", remedy="pass --base BASE.safetensors (or builtin:<name>)")
    try:
        path = resolve_checkpoint(choice)
    except PaceError:
        if base:
            raise
        raise PaceError(f"'{adapter.path}' records its base as '{choice}', which is not found from here "
                        "(relative paths are taken from the current folder)",
                        remedy="pass --base BASE.safetensors") from None
    if path.suffix.lower() != ".safetensors":
        raise PaceError(f"base '{choice}' must be a .safetensors file",
                        remedy="convert it with `pace export-base RECIPE --output base.safetensors` and pass --base")
    return path


def _layer_order(adapter: AdapterFile, layers: dict[str, dict[str, Tensor]]) -> list[str]:
    recorded = [path for path in adapter.metadata.layers if path in layers]
    return recorded + [path for path in layers if path not in recorded]  # model (depth) order


def _lora_layers(adapter: AdapterFile) -> tuple[dict[str, dict[str, Tensor]], dict[str, Tensor], int, list[str]]:
    """(per-layer tensors, head tensors, the one rank, the layers in model order) of a LoRA or DoRA adapter file."""
    layers, head = split_adapter_state(adapter.tensors)
    if not layers:
        raise PaceError(f"'{adapter.path}' adapts no layer; there is nothing to export as a LoRA")
    own_names = set(kind_spec(adapter.kind).tensor_names(has_bias=True))
    ranks = {tuple(t["lora_A"].shape)[0] for t in layers.values() if "lora_A" in t}
    if len(ranks) > 1 or any(set(t) - own_names or ("lora_A" in own_names) != ("lora_B" in t)
                             for t in layers.values()):
        raise PaceError(f"'{adapter.path}' does not hold one lora_A/lora_B pair of a single rank per layer",
                        remedy="the adapter file is damaged")
    return layers, head, ranks.pop() if ranks else 1, _layer_order(adapter, layers)


def _zero_factors(layers: dict[str, dict[str, Tensor]], base_path: Path) -> None:
    """Rank-1 zero LoRA factors for a kind with ΔW = 0 (``bitfit``): PEFT's B A then adds exactly
    nothing, and the kind's whole effect travels in the ``lora_only`` biases. d_in is read from
    the base file's header."""
    shapes = {key: shape for key, (_, shape) in files.tensor_info(base_path).items()}
    for path, own in layers.items():
        if "lora_A" in own:
            continue
        weight_key = f"{path}.weight"
        if weight_key not in shapes:
            raise PaceError(f"the adapter adapts layer {path}, but the base '{base_path}' has no {weight_key}",
                            remedy="the adapter was trained for another base model")
        d_out, d_in = shapes[weight_key]
        own["lora_A"] = own["delta_bias"].new_zeros(1, d_in)
        own["lora_B"] = own["delta_bias"].new_zeros(d_out, 1)


def _bias_moved(own: dict[str, Tensor]) -> bool:
    """Whether a layer's Δb is nonzero: its delta_bias, or a prompt (Δb += W0 p) with p ≠ 0."""
    if "delta_bias" in own and bool(own["delta_bias"].any()):
        return True
    return "prompt_B" in own and bool((own["prompt_B"] @ own["prompt_A"]).any())


def _shifted_biases(adapter: AdapterFile, layers: dict[str, dict[str, Tensor]], base_path: Path,
                    force: bool) -> tuple[dict[str, Tensor], bool]:
    """b0 + Δb of every layer with a bias, by layer path, from the base file; and whether it is the right base."""
    with LazySafetensors(base_path) as base_file:
        found = base_fingerprint(base_file, adapter.head_name)
        fingerprint_ok = adapter.metadata.matches_base(found, stored_dtype(base_file, adapter.head_name))
        if not fingerprint_ok and not force:
            raise PaceError(f"'{base_path}' is not the base '{adapter.path.name}' was trained on (fingerprint "
                            "differs), so b0 + Δb would be wrong", remedy="pass --base with the right one, or --force")
        biases: dict[str, Tensor] = {}
        adapter_names = set(kind_spec(adapter.kind).tensor_names(has_bias=True))
        for path, own in layers.items():
            if f"{path}.weight" not in base_file:
                raise PaceError(f"the adapter adapts layer {path}, but the base '{base_path}' has no {path}.weight",
                                remedy="the adapter was trained for another base model")
            if "delta_bias" not in own:
                continue  # a layer without a bias: nothing to carry
            bias_key = f"{path}.bias"
            bias = base_file[bias_key] if bias_key in base_file else None
            # The same function `pace merge` uses: the PEFT bias equals the merged file's bias bit for bit.
            kind_tensors = {name: tensor for name, tensor in own.items() if name in adapter_names}
            _, biases[path] = merge_layer(adapter.kind, base_file[f"{path}.weight"], bias, kind_tensors, path)
    return biases, fingerprint_ok


def _peft_config(rank: int, layer_order: list[str], head: str, shifts_bias: bool, dora: bool) -> dict[str, Any]:
    return {
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
        "modules_to_save": [head],
        "bias": "lora_only" if shifts_bias else "none",
        "fan_in_fan_out": False,
        # DoRA: PEFT's magnitude m and ‖W0 + (alpha / r) B A‖ per row, i.e. ‖W0 + B A‖ at alpha = r, as pace's.
        "use_dora": dora,
        "init_lora_weights": True,
    }


def _ia3_config(layer_order: list[str], feedforward: list[str], head: str) -> dict[str, Any]:
    return {
        "peft_type": "IA3",
        "task_type": None,
        "base_model_name_or_path": None,
        "inference_mode": True,
        # Full paths, as for LoRA: PEFT matches the end of a module path, and feedforward_modules ⊂ target_modules.
        "target_modules": layer_order,
        "feedforward_modules": feedforward,
        "modules_to_save": [head],
        "fan_in_fan_out": False,
        "init_ia3_weights": True,
    }


def _ia3_tensors(adapter: AdapterFile) -> tuple[dict[str, Tensor], list[str], list[str], dict[str, Tensor]]:
    """(PEFT ia3_l tensors, layers in model order, the input-scaled ones, head tensors) of an ia3 file.

    pace's ``ia3_out`` [d_out, 1] and ``ia3_in`` [1, d_in] are PEFT's ``ia3_l`` in its two shapes.
    """
    layers, head = split_adapter_state(adapter.tensors)
    if not layers:
        raise PaceError(f"'{adapter.path}' adapts no layer; there is nothing to export as IA3")
    tensors: dict[str, Tensor] = {}
    feedforward: list[str] = []
    order = _layer_order(adapter, layers)
    for path in order:
        own = layers[path]
        if set(own) not in ({"ia3_out"}, {"ia3_in"}):
            raise PaceError(f"'{adapter.path}' holds {sorted(own)} for layer {path}, not one ia3_out or ia3_in",
                            remedy="the adapter file is damaged")
        if "ia3_in" in own:
            feedforward.append(path)
        tensors[f"{PEFT_KEY_PREFIX}{path}.ia3_l"] = own.get("ia3_in", own.get("ia3_out"))
    return tensors, order, feedforward, head

def _provenance(adapter: AdapterFile) -> dict[str, Any]:
    """Where the export came from, stored in the weights file's metadata for `import-peft` to read back."""
    meta = adapter.metadata
    return {
        "created_by": f"pace {__version__}", "adapter": adapter.path.name, "kind": adapter.kind,
        "timm_model": meta.timm_model, "timm_kwargs": meta.timm_kwargs, "num_classes": meta.num_classes,
        "class_names": meta.class_names, "head": adapter.head_name, "base_fingerprint": meta.base_fingerprint,
    }


def _card(adapter: AdapterFile, config: dict[str, Any]) -> str:
    """A short model card: what the folder is and the few lines that load it."""
    meta = adapter.metadata
    kwargs = ", ".join(f"{k}={v!r}" for k, v in meta.timm_kwargs.items())
    kwargs = f", {kwargs}" if kwargs else ""
    if config["peft_type"] == "IA3":
        what = (f"an `ia3` adapter ({meta.created_by or 'pace'}) exported by `pace export` as a PEFT IA3: "
                f"{len(config['target_modules'])} layers, {len(config['feedforward_modules'])} of them feed-forward "
                "(input scaled)")
    else:
        name = "a DoRA LoRA (`use_dora = true`)" if config["use_dora"] else "a plain PEFT LoRA"
        what = (f"a `{adapter.kind}` adapter ({meta.created_by or 'pace'}) exported by `pace export` as {name}: "
                f"rank {config['r']}, `lora_alpha` {config['lora_alpha']} (scaling 1), `bias = \"{config['bias']}\"`")
    return f"""---
library_name: peft
tags: [timm, {config["peft_type"].lower()}, pace]
---
# PEFT {config["peft_type"]} exported by pace

{what[0].upper() + what[1:]}, the new head in
`modules_to_save`. It loads without pace:

```python
import timm
from peft import PeftModel

model = timm.create_model({meta.timm_model!r}, num_classes={meta.num_classes}{kwargs})
base = ...  # state dict of the base it was trained on ({meta.base_checkpoint or "unrecorded"}), e.g. safetensors load_file
model.load_state_dict({{k: v for k, v in base.items() if not k.startswith({adapter.head_name + "."!r})}}, strict=False)
model = PeftModel.from_pretrained(model, "THIS_FOLDER").eval()      # or .merge_and_unload()
```
"""


def export_peft(adapter_path: str | Path, output: str | Path, *, base: str | None = None, force: bool = False,
                overwrite: bool = False) -> PeftExportReport:
    """Write an adapter as a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``): ``lora_add``
    as a LoRA, ``dora`` as a LoRA with ``use_dora``, ``ia3`` as IA3.

    ``base`` (a .safetensors file or ``builtin:<name>``, by default the adapter's recorded base) is
    read only when a bias moved; its fingerprint must match the adapter's unless ``force``. The
    folder is written under a temporary name and renamed when complete.
    """
    output = Path(output)
    check_can_write_folder(output, overwrite)
    adapter = read_adapter(adapter_path)
    _refuse_kind(adapter)
    method = kind_spec(adapter.kind).peft_method
    base_path: Path | None = None
    fingerprint_ok: bool | None = None
    feedforward: list[str] = []
    if method == "ia3":
        tensors, layer_order, feedforward, head = _ia3_tensors(adapter)
        rank, bias_mode = 0, "none"
        config = _ia3_config(layer_order, feedforward, adapter.head_name)
    else:
        layers, head, rank, layer_order = _lora_layers(adapter)
        shifts_bias = any(_bias_moved(t) for t in layers.values())
        if not all("lora_A" in t for t in layers.values()):
            base_path = _resolve_base(base, adapter)
            _zero_factors(layers, base_path)
        tensors = {}
        for path, own in layers.items():
            tensors[f"{PEFT_KEY_PREFIX}{path}.lora_A.weight"] = own["lora_A"]
            tensors[f"{PEFT_KEY_PREFIX}{path}.lora_B.weight"] = own["lora_B"]
            if "dora_magnitude" in own:
                tensors[f"{PEFT_KEY_PREFIX}{path}.lora_magnitude_vector"] = own["dora_magnitude"]
        if shifts_bias:
            base_path = base_path or _resolve_base(base, adapter)
            biases, fingerprint_ok = _shifted_biases(adapter, layers, base_path, force)
            for path, bias in biases.items():
                tensors[f"{PEFT_KEY_PREFIX}{path}.base_layer.bias"] = bias
        config = _peft_config(rank, layer_order, adapter.head_name, shifts_bias, dora=method == "dora")
        bias_mode = config["bias"]
    for key, tensor in head.items():
        tensors[PEFT_KEY_PREFIX + key] = tensor

    try:
        with files.atomic_dir(output) as tmp:
            # "format": "pt" is what transformers and PEFT write and expect in adapter safetensors files.
            files.save_tensors(tmp / PEFT_WEIGHTS_FILE, tensors,
                               {"format": "pt", PACE_METADATA_KEY: json.dumps(_provenance(adapter))})
            (tmp / PEFT_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
            (tmp / PEFT_CARD_FILE).write_text(_card(adapter, config))
    except files.WriteError as e:  # raised for a file inside the temporary folder: name the folder the user asked for
        raise e.with_parts(where=str(output)) from None
    except OSError as e:
        raise files.write_error(output, e) from None
    return PeftExportReport(output, len(layer_order), rank, bias_mode, adapter.head_name, len(tensors),
                            str(base_path) if base_path else None, fingerprint_ok,
                            {"ia3": "IA3", "dora": "DoRA"}.get(method, "LoRA"), len(feedforward))
