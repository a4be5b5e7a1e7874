"""Turn a recipe into the objects a run needs: data sets, loaders, the model with its weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pace_cli import data
from pace_cli.adapters import AdapterConfig, InjectionReport, inject_adapters, kind_spec
from pace_cli.data.datasets import PaceDataset
from pace_cli.data.sources import SourceSpec, get_source
from pace_cli.errors import PaceError
from pace_cli.models import create_model, load_base_weights
from pace_cli.recipe.schema import DataSection, EvalTarget, Recipe
from pace_cli.regularizer.losses import PaceConfig


def timm_kwargs(recipe: Recipe) -> dict[str, Any]:
    """The architecture arguments: what a merged checkpoint needs to be rebuilt by timm."""
    section = recipe.model
    kwargs: dict[str, Any] = dict(section.kwargs)
    if section.img_size is not None:
        kwargs["img_size"] = section.img_size
    if section.in_chans is not None:
        kwargs["in_chans"] = section.in_chans
    return kwargs


def image_size(recipe: Recipe) -> int:
    if recipe.data.image_size is not None:
        return recipe.data.image_size
    if recipe.model.img_size is not None:
        return recipe.model.img_size
    return 224


def build_dataset(recipe: Recipe, split: str, *, train: bool = False) -> PaceDataset:
    """One split of the recipe's data; ``train`` turns on the training augmentation and ``shots``.

    For a source that needs shots (``fewshot``) the shots pick the list file instead of
    subsampling, and every split takes its classes from that k-shot training list.
    """
    section = recipe.data
    spec = get_source(section.source)
    shots = {"list_shots": section.shots} if spec.needs_shots else {"shots": section.shots if train else None}
    augment = recipe.augment.timm_transform_options() if train else None
    # [augment] transform = "timm": timm's transform, keyed by (train seed, epoch, sample), replaces the source's own
    augment = {} if augment is None else {"augment": augment, "augment_seed": recipe.train.seed}
    return data.build_dataset(section.source, split, root=section.root, seed=section.seed, train=train,
                              cache=section.cache, **shots, **augment, **_preprocessing(recipe),
                              **_options(spec, section))


def build_target_dataset(recipe: Recipe, target: EvalTarget) -> PaceDataset:
    """The evaluation set of one ``[[eval.targets]]`` entry, preprocessed like the recipe's test split."""
    spec = get_source(target.source)
    seed = {} if target.seed is None else {"seed": target.seed}  # unset: build_dataset's default
    return data.build_dataset(target.source, target.split, root=target.root, **seed, **_preprocessing(recipe),
                              **_options(spec, target))


def _preprocessing(recipe: Recipe) -> dict[str, Any]:
    """What every split of the recipe is resized and normalised with, targets included."""
    section = recipe.data
    return dict(image_size=image_size(recipe), channels=section.channels, mean=section.mean, std=section.std)


def _options(spec: SourceSpec, section: DataSection | EvalTarget) -> dict[str, Any]:
    """The source's own settings, by the recipe keys of the same name (unset ones are None)."""
    fields = type(section).model_fields
    return {key: getattr(section, key) for key in spec.options if key in fields}


def build_base_model(recipe: Recipe, num_classes: int, *, load_weights: bool = True) -> nn.Module:
    """The timm model of the recipe with its base weights loaded (the head may stay fresh)."""
    section = recipe.model
    # Seeded so that a recipe without base weights still means one fixed random base, the same
    # in `train`, `eval` and `export-base` (fingerprints compare equal).
    torch.manual_seed(recipe.train.seed)
    model = create_model(
        section.name, pretrained=section.pretrained and load_weights, num_classes=num_classes,
        drop_path_rate=section.drop_path_rate, drop_rate=section.drop_rate, **timm_kwargs(recipe),
    )
    if load_weights and section.checkpoint:
        load_base_weights(model, section.checkpoint)
    return model


def adapter_config(recipe: Recipe) -> AdapterConfig:
    a = recipe.adapter
    # A linear probe (kind head) adapts no layer: its targets are not read (`pace check` matches none).
    targets = tuple(a.targets) if kind_spec(a.kind).adapts_layers else ()
    return AdapterConfig(kind=a.kind, rank=a.rank, targets=targets, feedforward=tuple(a.feedforward))


def pace_config(recipe: Recipe) -> PaceConfig:
    p, r = recipe.pace, recipe.regularizer
    return PaceConfig(variant=p.variant, lambda_=p.lambda_, sigma=p.sigma, lazy_interval=p.lazy_interval,
                      noise_free_blocks=p.noise_free_blocks, noise=p.noise, perturb=p.perturb,
                      sigma_profile=p.sigma_profile, copies=p.copies, fpa=r.fpa, l1=r.l1)


def build_adapted_model(recipe: Recipe, num_classes: int) -> tuple[nn.Module, InjectionReport]:
    model = build_base_model(recipe, num_classes)
    report = inject_adapters(model, adapter_config(recipe), num_classes=num_classes)
    return model, report


def resolve_num_classes(recipe: Recipe, dataset: PaceDataset) -> int:
    found = len(dataset.classes)
    wanted = recipe.model.num_classes
    if wanted is not None and wanted < found:
        labels = list(dataset.labels)
        row = next((i for i, label in enumerate(labels) if label >= wanted), None)
        where = ""
        if row is not None:
            key = dataset._sample_key(dataset._rows[row])
            sample = key[0] if isinstance(key, tuple) else key
            where = f" (e.g. label {labels[row]} of sample {sample})"
        raise PaceError(
            f"[model] num_classes = {wanted} but split '{dataset.split}' has labels up to {found - 1}{where}; "
            f"fix the labels, raise num_classes, or remove it to take it from the data"
        )
    return wanted or found


def make_optimizer(params, recipe: Recipe, device: torch.device | str) -> torch.optim.AdamW:
    """AdamW with the recipe's learning rate and weight decay.

    On CUDA it is the fused implementation: one kernel updates every parameter, instead of a
    handful of launches per tensor, which matters with hundreds of small adapter tensors. The
    maths is the same AdamW, so a checkpoint's optimiser state loads into either form.
    """
    fused = {"fused": True} if torch.device(device).type == "cuda" else {}
    return torch.optim.AdamW(params, lr=recipe.optim.lr, weight_decay=recipe.optim.weight_decay, **fused)


def maybe_compile(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Compile the model in place when ``[train] compile = true``; returns the same module.

    ``nn.Module.compile`` keeps the module object and its state-dict keys (``torch.compile(model)``
    would wrap it and prefix every key with ``_orig_mod.``), so adapter files, checkpoints and the
    PACE hooks installed on the model and its blocks are unaffected. Training and evaluation
    each compile once on first use; PACE's switch between one and two passes adds a recompile.
    """
    if recipe.train.compile:
        model.compile()
    return model
