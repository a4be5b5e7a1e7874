"""Reading a PEFT ``adapter_config.json`` for `pace import-peft`: which method it is, its LoRA
scaling, and the options pace cannot import exactly (refused by name, never approximated)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from pace_cli.artifacts.peft_format import PEFT_CONFIG_FILE
from pace_cli.errors import PaceError

# Options whose non-default value changes what the adapter computes in a way pace's lora_add cannot hold.
_UNSUPPORTED_OPTIONS = {
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


def peft_method(config: dict[str, Any], folder: Path) -> str:
    """"lora", "dora" or "ia3": what the folder holds, which names the pace kind it comes in as."""
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type == "IA3":
        if config.get("fan_in_fan_out"):
            raise PaceError(f"'{folder / PEFT_CONFIG_FILE}' sets fan_in_fan_out = true, which is for GPT-2-style "
                            "Conv1D layers; pace adapts nn.Linear")
        return "ia3"
    if peft_type != "LORA":
        raise PaceError(f"'{folder / PEFT_CONFIG_FILE}' has peft_type {config.get('peft_type') or '(none)'}; pace "
                        "imports PEFT LoRA (peft_type LORA, also with use_dora) and IA3 adapters")
    return "dora" if config.get("use_dora") is True else "lora"


def peft_scaling(config: dict[str, Any], folder: Path) -> tuple[int, float]:
    """Validate a PEFT LoRA config for import; return (r, the scale PEFT applies to lora_B @ lora_A)."""
    where = f"'{folder / PEFT_CONFIG_FILE}'"
    if peft_method(config, folder) == "ia3":
        raise PaceError(f"{where} is an IA3 adapter, which has no LoRA scaling")
    if config.get("use_dora") not in (None, True, False):
        raise PaceError(f"{where} sets use_dora = {json.dumps(config['use_dora'])}; it must be true or false")
    if config.get("use_dora") and (config.get("bias", "none") != "none" or config.get("lora_bias")):
        raise PaceError(f"{where} sets use_dora = true with a trained bias (bias = {config.get('bias')!r}, "
                        f"lora_bias = {json.dumps(config.get('lora_bias', False))}); pace's dora has no bias shift, "
                        "so only bias = \"none\" DoRA adapters import")
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


def is_peft_feedforward(config: dict[str, Any], path: str) -> bool:
    """PEFT's IA3 rule: a regex feedforward_modules must match the whole path, a list entry its end."""
    modules = config.get("feedforward_modules") or []
    if isinstance(modules, str):
        return re.fullmatch(modules, path) is not None
    return any(path.endswith(str(name)) for name in modules)
