"""Keys with no effect: set in the recipe, but switched off by its other choices (warnings, not errors)."""

from __future__ import annotations

from pace_cli.adapters.kinds import KINDS, kind_spec
from pace_cli.data.sources import get_source
from pace_cli.recipe.log import unread_log_keys
from pace_cli.recipe.schema import PaceSection, Recipe, is_set

# [pace] keys each variant reads; the others are inert for it.
_NOISE_KEYS = ("sigma", "noise_free_blocks", "noise", "perturb", "sigma_profile")
_VARIANT_KEYS = {
    "off": (),
    "noise_only": _NOISE_KEYS,
    "pace": ("lambda_", *_NOISE_KEYS, "copies"),
    "fast": ("lambda_", *_NOISE_KEYS),
    "lazy": ("lambda_", *_NOISE_KEYS, "lazy_interval", "copies"),
}
_PACE_KEYS = ("lambda_", *_NOISE_KEYS, "lazy_interval", "copies")


def ineffective_settings(recipe: Recipe) -> list[str]:
    """Warnings for set keys that this recipe's other choices make inert, one line each.

    These are warnings, not errors (a key that no data source or model reads is an error, raised
    when the recipe is validated): a recipe is routinely rerun with one switch flipped, the
    baseline with ``--set pace.variant=off`` or a final run with ``--set data.val_split=""``, and
    the tuned settings it carries must not stop that run. They still do nothing, so say so.
    """
    notes: list[str] = []
    p = recipe.pace
    inert = [name for name in _PACE_KEYS if name not in _VARIANT_KEYS[p.variant] and is_set(p, name)]
    if inert:
        keys = ", ".join(PaceSection.model_fields[n].alias or n for n in inert)
        uses = {"off": "it adds no noise and no consistency loss",
                "noise_only": "it adds noise but no consistency loss",
                "pace": "lazy_interval is read by variant = 'lazy' only",
                "fast": "one pass per step: lazy_interval is read by 'lazy' only, copies by 'pace' and 'lazy'"}
        notes.append(f"[pace] {keys} set but ignored with variant = {p.variant!r} ({uses.get(p.variant, '')})")
    if p.noise == "additive" and is_set(p, "perturb") and "perturb" in _VARIANT_KEYS[p.variant]:
        notes.append("[pace] perturb set but ignored with noise = 'additive' (h0 + Δh + ε adds the same noise "
                     "whatever it perturbs)")
    if is_set(recipe.adapter, "feedforward") and not KINDS[recipe.adapter.kind].modes:
        notes.append(f"[adapter] feedforward set but ignored: kind = {recipe.adapter.kind!r} does not read it (only "
                     "ia3 scales inputs of feed-forward layers)")
    notes += _unread_adapter_keys(recipe)
    d = recipe.data
    if is_set(d, "seed") and d.shots is None and not get_source(d.source).seeded:
        # `pace sweep --seeds` sets data.seed with train.seed for every source, hence not an error
        notes.append(f"[data] seed set but ignored: source = {d.source!r} reads it only to draw shots, and shots "
                     "is unset")
    if is_set(d, "seed") and d.shots is None and get_source(d.source).seed_use == "training" \
            and recipe.augment.transform == "timm":
        notes.append(f"[data] seed set but ignored: with [augment] transform = 'timm' the training images of source = "
                     f"{d.source!r} are drawn from [train] seed, and shots is unset")
    if recipe.data.val_split is None and is_set(recipe.train, "eval_every"):
        notes.append("[train] eval_every set but ignored: [data] val_split is empty, so no epoch is evaluated")
    if recipe.optim.warmup_epochs == 0 and is_set(recipe.optim, "warmup_start_lr"):
        notes.append("[optim] warmup_start_lr set but ignored: warmup_epochs = 0, so there is no warm-up")
    return notes + unread_log_keys(recipe.log)


def _unread_adapter_keys(recipe: Recipe) -> list[str]:
    """Keys an adapter kind does not read: warnings like the variant's, since sweeping
    ``adapter.kind`` over a tuned recipe (rank and targets set for LoRA) is a routine comparison."""
    a, p = recipe.adapter, recipe.pace
    spec = kind_spec(a.kind)
    notes = []
    unread = [key for key, read in (("rank", spec.has_rank), ("targets", spec.adapts_layers))
              if not read and is_set(a, key)]
    if unread:
        why = "it trains only the new head" if not spec.adapts_layers else "its tensors have no rank dimension"
        notes.append(f"[adapter] {', '.join(unread)} set but ignored with kind = {a.kind!r} ({why})")
    if not spec.adapts_layers and "noise_free_blocks" in _VARIANT_KEYS[p.variant] and is_set(p, "noise_free_blocks"):
        notes.append(f"[pace] noise_free_blocks set but ignored with [adapter] kind = {a.kind!r} (no block is "
                     "adapted; the noise is on the head output alone)")
    if not spec.adapts_layers and recipe.regularizer.l1 > 0:
        notes.append(f"[regularizer] l1 set but ignored with [adapter] kind = {a.kind!r} (it penalises adapter "
                     "tensors, and a linear probe has none; the head's weights take [optim] weight_decay)")
    return notes
