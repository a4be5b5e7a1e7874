"""PACE's noise strength per adapted layer: falling linearly with depth, block by block (paper §3.5),
or, for the ablations of Table 6, constant or rising.

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
    layer_paths: Sequence[str], head_name: str, sigma: float, noise_free_blocks: int = 0,
    profile: str = "decreasing",
) -> dict[str, float]:
    """Noise strength per adapted layer and for the head, by ``profile`` over depth.

    The first ``noise_free_blocks`` groups get 0. The remaining G groups, with the head as the
    last one, get for g = 0..G-1: ``decreasing`` (PACE) sigma * (G - g) / G, sigma for the
    shallowest and sigma / G for the head; ``constant`` sigma for all; ``increasing``
    sigma * (g + 1) / G, sigma / G for the shallowest rising to sigma at the head. (The authors'
    ViT-B code keeps the first block noise-free; here that is the ``noise_free_blocks = 1``
    option rather than a hard-wired rule.)
    """
    if profile not in _PROFILES:
        raise PaceError(f"[pace] sigma_profile must be one of {', '.join(_PROFILES)}, got {profile!r}")
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
    strength = _PROFILES[profile]
    for g, members in enumerate(noisy):
        for path in members:
            schedule[path] = strength(sigma, g, count)
    return schedule


# The noise strength of noisy group g of G (the head is group G - 1).
_PROFILES = {
    "decreasing": lambda sigma, g, count: sigma * (count - g) / count,
    "constant": lambda sigma, g, count: sigma,
    "increasing": lambda sigma, g, count: sigma * (g + 1) / count,
}
