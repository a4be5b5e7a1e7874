"""The registry of adapter kinds: one row per kind, read by recipe validation and by the adapters.

Torch-free on purpose: recipe validation checks ``[adapter] kind`` against this table without
importing torch. Adding a kind is one module with its maths plus one row here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KindSpec:
    """What pace knows about one adapter kind (fields grow with the registry)."""

    name: str


KINDS: dict[str, KindSpec] = {
    spec.name: spec for spec in (
        KindSpec("lora_add"),
        KindSpec("lora_mul"),
        KindSpec("vpt_add"),
        KindSpec("lora_mul+vpt_add"),
    )
}
