"""Interop with Hugging Face PEFT: the folder format both directions share, and how pace maps onto it.

Export is :mod:`pace_cli.artifacts.peft_export`, import :mod:`pace_cli.artifacts.peft_import`.

A ``lora_add`` adapter (a kind whose row in ``adapters.KINDS`` has no ``peft_refusal`` and
``peft_method = "lora"``) is, at inference, a plain LoRA: ΔW = lora_B @ lora_A with the same tensor
shapes PEFT uses ([r, d_in] and [d_out, r]). The mapping, for an adapted ``nn.Linear`` at path P:

| pace adapter file          | PEFT folder (``adapter_model.safetensors``)                         |
|----------------------------|---------------------------------------------------------------------|
| ``P.lora_A``               | ``base_model.model.P.lora_A.weight``                                |
| ``P.lora_B``               | ``base_model.model.P.lora_B.weight``, with ``lora_alpha = r`` so PEFT's scaling alpha / r is 1 |
| ``P.delta_bias`` (Δb)      | ``base_model.model.P.base_layer.bias`` = b0 + Δb, config ``bias = "lora_only"`` |
| the new head ``H.*``       | ``base_model.model.H.*``, config ``modules_to_save = [H]``          |

PEFT's ``bias = "lora_only"`` saves and loads the *whole* bias of each adapted layer, so the
export needs the base weights (b0) whenever a bias moved; b0 + Δb is computed by
:func:`pace_cli.adapters.merge_layer`, the function ``pace merge`` uses, so both give the same bias.
``target_modules`` lists the adapted layers by full path: PEFT matches a name against the end of
a module path, and a short name such as ``proj`` would also catch ViT's ``patch_embed.proj`` conv.

``dora`` is the same LoRA with ``use_dora = true`` and its magnitude ``P.dora_magnitude`` as
``base_model.model.P.lora_magnitude_vector``: PEFT then computes m / ‖W0 + (alpha / r) B A‖ per
row, pace's m / ‖W0 + B A‖ at alpha = r. ``ia3`` is a PEFT IA3 folder: ``P.ia3_out`` [d_out, 1]
(output scaling) or ``P.ia3_in`` [1, d_in] (input scaling) is ``base_model.model.P.ia3_l`` in the
same shape, and the layers holding ``ia3_in`` are the config's ``feedforward_modules``.

``lora_mul`` (ΔW = W0 ⊙ (B A), full rank in general), ``vpt_add`` and every other kind have no
exact PEFT form; they are refused with the reason their row gives, never approximated. Importing reverses the mapping: PEFT's scaling is
folded into ``lora_B``, a saved bias becomes Δb = b − b0 against the recipe's base, and options
pace cannot express exactly (per-layer ranks, DoRA with a trained bias, ...) are refused by name.
"""

from __future__ import annotations

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PICKLED_WEIGHTS_FILE = "adapter_model.bin"
PEFT_CARD_FILE = "README.md"
PEFT_KEY_PREFIX = "base_model.model."
EXPORT_FORMATS = ("peft",)
# The pace kind each PEFT method is, exactly: what `import-peft` writes.
IMPORTED_KINDS = {"lora": "lora_add", "dora": "dora", "ia3": "ia3"}
# Metadata key of adapter_model.safetensors under which an export records where it came from;
# `import-peft` reads class names back from it.
PACE_METADATA_KEY = "pace"
# Files a PEFT export consists of: only a folder holding nothing else may be replaced (--overwrite).
EXPORT_FILES = frozenset({PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, PEFT_PICKLED_WEIGHTS_FILE, PEFT_CARD_FILE})
