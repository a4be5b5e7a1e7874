"""Turn a recipe into the objects a run needs: data sets, loaders, the model with its weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pace_cli.data import datasets as data_sources
from pace_cli.adapters.layer import AdapterConfig, InjectionReport, inject_adapters
from pace_cli.errors import PaceError
from pace_cli.models import create_model, load_base_weights
from pace_cli.regularizer.losses import PaceConfig
from pace_cli.recipe.schema import Recipe


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


def build_dataset(recipe: Recipe, split: str, *, train: bool = False) -> data_sources.PaceDataset:
    """One split of the recipe's data; ``train`` turns on the training augmentation and ``shots``.

    For ``fewshot`` the shots pick the list file instead of subsampling, and every split takes
    its classes from that k-shot training list.
    """
    section = recipe.data
    fewshot = section.source == "fewshot"
    return data_sources.build_dataset(
        section.source, split, root=section.root, image_size=image_size(recipe), channels=section.channels,
        mean=section.mean, std=section.std, shots=section.shots if train and not fewshot else None,
        seed=section.seed, synthetic_classes=section.synthetic_classes, synthetic_size=section.synthetic_size,
        train=train, image_dir=section.image_dir, fewshot_layout=section.fewshot_layout,
        list_shots=section.shots if fewshot else None, cache=section.cache,
    )


def build_target_dataset(recipe: Recipe, target) -> data_sources.PaceDataset:
    """The evaluation set of one ``[[eval.targets]]`` entry, preprocessed like the recipe's test split."""
    section = recipe.data
    return data_sources.build_dataset(
        target.source, target.split, root=target.root, image_size=image_size(recipe), channels=section.channels,
        mean=section.mean, std=section.std, seed=target.seed or 0,
        synthetic_classes=target.synthetic_classes or 10, synthetic_size=target.synthetic_size or 64,
        image_dir=target.image_dir, fewshot_layout=target.fewshot_layout,
    )


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
    return AdapterConfig(kind=recipe.adapter.kind, rank=recipe.adapter.rank, targets=tuple(recipe.adapter.targets))


def pace_config(recipe: Recipe) -> PaceConfig:
    p = recipe.pace
    return PaceConfig(variant=p.variant, lambda_=p.lambda_, sigma=p.sigma, lazy_interval=p.lazy_interval,
                      noise_free_blocks=p.noise_free_blocks)


def build_adapted_model(recipe: Recipe, num_classes: int) -> tuple[nn.Module, InjectionReport]:
    model = build_base_model(recipe, num_classes)
    report = inject_adapters(model, adapter_config(recipe), num_classes=num_classes)
    return model, report


def resolve_num_classes(recipe: Recipe, dataset: data_sources.PaceDataset) -> int:
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
