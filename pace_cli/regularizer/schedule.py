"""PACE's noise strength per adapted layer: falling linearly with depth, block by block (paper §3.5).

Depth is read from module paths (``blocks.3`` in ViT, ``layers.1.blocks.0`` in Swin), so this
needs no model and no torch: `pace check` uses it to show a recipe's schedule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pace_cli.errors import PaceError

_BLOCK = re.compile(r"^(.*?blocks\.\d+)(?:\.|$)")


def block_of(layer_path: str) -> str | None:
    """The transformer block holding a layer: ``blocks.3`` (ViT), ``layers.1.blocks.0`` (Swin)."""
    match = _BLOCK.match(layer_path)
    return match.group(1) if match else None


def depth_groups(layer_paths: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Group adapted layers by transformer block, shallowest first.

    ``layer_paths`` must be in model order (timm registers modules input to output). A layer
    outside any block, such as Swin's patch-merging ``downsample.reduction``, forms its own group
    at its place in that order.
    """
    groups: dict[str, list[str]] = {}
    for path in layer_paths:
        groups.setdefault(block_of(path) or path, []).append(path)
    return list(groups.items())


def sigma_schedule(
    layer_paths: Sequence[str], head_name: str, sigma: float, noise_free_blocks: int = 0
) -> dict[str, float]:
    """Noise strength per adapted layer and for the head, falling linearly with depth.

    The first ``noise_free_blocks`` groups get 0. The remaining G groups, with the head as the
    last one, get sigma * (G - g) / G for g = 0..G-1: sigma for the shallowest, sigma / G for
    the head. (The authors' ViT-B code keeps the first block noise-free; here that is the
    ``noise_free_blocks = 1`` option rather than a hard-wired rule.)
    """
    if sigma < 0:
        raise PaceError(f"[pace] sigma must be >= 0, got {sigma}")
    groups = depth_groups(layer_paths)
    if not groups:
        noise_free_blocks = 0  # a linear probe (kind head) has no adapted block to keep noise-free
    if not 0 <= noise_free_blocks <= len(groups):
        raise PaceError(
            f"[pace] noise_free_blocks = {noise_free_blocks} but the model has {len(groups)} adapted blocks; "
            f"use a value from 0 to {len(groups)}"
        )
    schedule = {path: 0.0 for _, members in groups[:noise_free_blocks] for path in members}
    noisy = [members for _, members in groups[noise_free_blocks:]] + [[head_name]]
    count = len(noisy)
    for g, members in enumerate(noisy):
        for path in members:
            schedule[path] = sigma * (count - g) / count
    return schedule
