"""`pace check`: everything short of training, in seconds and without a GPU.

It validates the recipe, counts the images of every split, builds the model on the meta device
(shapes only, no memory), matches the adapter targets, compares the base checkpoint's tensor
names and shapes with the model, and prints the plan: trainable parameters, σ per block, steps,
and an estimate of the memory one training step needs. Every problem found is collected, so
one run lists them all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from pace_cli.distributed import World, global_batch_size
from pace_cli.errors import PaceError, one_line
from pace_cli.recipe import Recipe, ineffective_settings, load_recipe

# What each value costs in a training step, in bytes: fp32 weights of the whole model; for the
# trainable ones also the gradient and AdamW's two moments.
_BYTES_PER_WEIGHT = 4
_BYTES_PER_TRAINABLE_EXTRA = 12


@dataclass
class SplitCount:
    role: str  # train, val, test, trainval
    split: str
    samples: int
    per_class: dict[str, int]


@dataclass
class MemoryEstimate:
    images_per_step: int  # the batch as the model sees it (PACE's two noisy copies count twice)
    activation_bytes_per_image: int
    activation_bytes_fixed: int
    activation_bytes: int  # for one step: fixed + images_per_step x per image
    weight_bytes: int  # weights, gradients and AdamW state
    total_bytes: int
    how: str


@dataclass
class CheckReport:
    recipe: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    splits: list[SplitCount] = field(default_factory=list)
    num_classes: int | None = None
    model: str | None = None
    adapted_layers: int | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    # Each adapter tensor name: how many layers hold it and its parameters in all (ia3_in: input-scaled layers).
    adapter_tensors: dict[str, dict[str, int]] = field(default_factory=dict)
    sigma_per_block: dict[str, float] = field(default_factory=dict)
    batch_size: int | None = None
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    memory: MemoryEstimate | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def _collect(report: CheckReport, what: Callable[[], Any]) -> Any:
    """Run one check; a PaceError becomes a listed problem instead of ending the check."""
    try:
        return what()
    except PaceError as error:
        if str(error) not in report.problems:  # e.g. a missing data root fails every split the same way
            report.problems.append(str(error))
        return None


def check_recipe(recipe_path: str | Path, overrides: Sequence[str] = ()) -> CheckReport:
    report = CheckReport(recipe=str(recipe_path))
    recipe = _collect(report, lambda: load_recipe(recipe_path, overrides))
    if recipe is None:
        return report  # each invalid key is already its own '; '-separated item in that one message
    report.notes.extend(ineffective_settings(recipe))  # set keys this recipe's switches make inert
    train_set = _check_data(report, recipe)
    _collect(report, lambda: _check_augment(recipe, train_set))
    report.num_classes = _num_classes(report, recipe, train_set)
    model = _collect(report, lambda: _build_on_meta(recipe, report.num_classes))
    if model is None:
        return report
    report.model = recipe.model.name
    _check_checkpoint(report, recipe, model)
    injection = _inject(report, recipe, model)
    if injection is None:
        return report
    report.adapted_layers = len(injection.adapted_layers)
    report.trainable_parameters = injection.trainable_parameters
    report.total_parameters = injection.total_parameters
    report.adapter_tensors = _adapter_tensors(model)
    _plan(report, recipe, train_set, model, injection)
    return report


# ---------------------------------------------------------------- data


def _check_data(report: CheckReport, recipe: Recipe):
    from pace_cli.builders import build_dataset

    data = recipe.data
    roles = [("train", data.train_split), ("val", data.val_split), ("test", data.test_split),
             ("trainval", data.trainval_split)]
    datasets = {}
    for role, split in roles:
        if not split:
            continue
        # Training splits are counted as training sees them: after the k-shot draw.
        dataset = _collect(report, lambda: build_dataset(recipe, split, train=role in ("train", "trainval")))
        if dataset is None:
            continue
        datasets[role] = dataset
        counts = Counter(dataset.labels)
        report.splits.append(SplitCount(role, split, len(dataset),
                                        {name: counts.get(i, 0) for i, name in enumerate(dataset.classes)}))
        empty = [name for i, name in enumerate(dataset.classes) if not counts.get(i)]
        if empty and role != "test":
            report.notes.append(f"split '{split}' has no images of class {', '.join(empty[:5])}"
                                + (f" and {len(empty) - 5} more" if len(empty) > 5 else ""))
    train = datasets.get("train")
    for role, dataset in datasets.items():
        if train is not None and dataset is not train and dataset.classes != train.classes:
            report.problems.append(
                f"split '{dataset.split}' has {len(dataset.classes)} classes ({_sample(dataset.classes)}) but the "
                f"train split '{train.split}' has {len(train.classes)} ({_sample(train.classes)}); every split "
                "needs the same class folders so labels agree")
    if train is not None and data.batch_size > len(train):
        report.notes.append(f"batch_size {data.batch_size} is more than the {len(train)} training images; "
                            f"training uses batches of {len(train)}")
    if train is not None:  # a smaller split must still split into [train] accumulate micro-batches
        _collect(report, lambda: global_batch_size(data.batch_size, len(train), World(), recipe.train.accumulate))
    return train


def _check_augment(recipe: Recipe, train_set) -> None:
    """[augment] as training builds it: timm's transform (a policy string timm refuses is listed even
    without the data) and the batch mix (a batch it cannot pair)."""
    from pace_cli.builders import image_size
    from pace_cli.data.augment import SampleAugment
    from pace_cli.data.mixing import batch_mix

    options = recipe.augment.timm_transform_options()
    if options is not None:
        SampleAugment(image_size(recipe), recipe.data.channels, recipe.data.mean, recipe.data.std, **options)
    if train_set is not None:
        batch_mix(recipe.augment.batch_mix_options(), num_classes=max(1, len(train_set.classes)),
                  seed=recipe.train.seed, global_batch=min(recipe.data.batch_size, len(train_set)))


def _sample(names: Sequence[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _num_classes(report: CheckReport, recipe: Recipe, train_set) -> int:
    from pace_cli.builders import resolve_num_classes

    if train_set is not None:
        found = _collect(report, lambda: resolve_num_classes(recipe, train_set))
        if found is not None:
            return found
    if recipe.model.num_classes:
        return recipe.model.num_classes
    report.notes.append("the number of classes is unknown without the train split; the model is checked "
                        "with 10 outputs")
    return 10


# ---------------------------------------------------------------- model, targets, checkpoint


def _build_on_meta(recipe: Recipe, num_classes: int) -> nn.Module:
    """The recipe's timm model with shapes only: parameters on the meta device take no memory."""
    from pace_cli.builders import build_base_model

    try:
        with torch.device("meta"):
            return build_base_model(recipe, num_classes, load_weights=False)
    except (PaceError, RuntimeError, NotImplementedError):
        # A few timm models read tensor values while initialising, which meta tensors cannot give;
        # build those for real (a real error then shows up again, from the real build).
        return build_base_model(recipe, num_classes, load_weights=False)


def _inject(report: CheckReport, recipe: Recipe, model: nn.Module):
    """Adapters into the meta model, after matching each target pattern alone so every bad one is listed."""
    from pace_cli.adapters import find_target_layers, head_module_name, inject_adapters
    from pace_cli.builders import adapter_config

    config = adapter_config(recipe)
    head = head_module_name(model)
    matched = [_collect(report, lambda: find_target_layers(model, [pattern], head)) for pattern in config.targets]
    if any(layers is None for layers in matched):
        return None
    with torch.device(next(model.parameters()).device):
        return _collect(report, lambda: inject_adapters(model, config, num_classes=report.num_classes))


def _adapter_tensors(model: nn.Module) -> dict[str, dict[str, int]]:
    from pace_cli.adapters import adapted_layers

    counts: dict[str, dict[str, int]] = {}
    for layer in adapted_layers(model).values():
        for name, tensor in layer.adapter_tensors().items():
            entry = counts.setdefault(name, {"layers": 0, "parameters": 0})
            entry["layers"] += 1
            entry["parameters"] += tensor.numel()
    return counts


def _check_checkpoint(report: CheckReport, recipe: Recipe, model: nn.Module) -> None:
    from pace_cli import files
    from pace_cli.adapters import head_module_name
    from pace_cli.errors import describe_key_mismatch
    from pace_cli.models import resolve_checkpoint

    section = recipe.model
    base_shapes = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    if section.pretrained:
        report.notes.append(f"base weights come from timm's hub ({section.name}); not checked offline")
        return
    if not section.checkpoint:
        report.notes.append("no [model] checkpoint: the base is timm's random initialisation (seeded by train.seed)")
        return
    path = _collect(report, lambda: resolve_checkpoint(section.checkpoint))
    if path is None:
        return
    if path.suffix.lower() == ".npz":
        report.notes.append(f"{path}: .npz weights are mapped by timm's own loader; names and shapes are checked "
                            "when training starts")
        return

    def shapes() -> dict[str, tuple]:
        if path.suffix.lower() == ".safetensors":
            return {key: tuple(shape) for key, (_, shape) in files.tensor_info(path).items()}  # header only
        return {key: tuple(t.shape) for key, t in files.load_state_dict(path).items()}

    found = _collect(report, shapes)
    if found is None:
        return
    head = head_module_name(model)
    heads = {key for key in base_shapes if key == head or key.startswith(head + ".")}
    wrong = [f"{key} {list(found[key])} (model: {list(shape)})" for key, shape in base_shapes.items()
             if key in found and key not in heads and tuple(found[key]) != shape]
    if wrong:
        report.problems.append(
            f"{section.checkpoint}: {len(wrong)} tensors have the wrong shape, e.g. {'; '.join(wrong[:2])}; "
            "do [model] name and its arguments match the checkpoint?")
    mismatch = describe_key_mismatch(set(base_shapes) - heads, set(found) - heads,
                                     missing_what="model tensors missing from the file",
                                     unknown_what="file tensors unknown to the model")
    if mismatch:
        report.problems.append(f"{section.checkpoint} does not fit the model: {mismatch}; "
                               "do [model] name and its arguments match the checkpoint?")
    if any(key in found and tuple(found[key]) != base_shapes[key] for key in heads):
        report.notes.append(f"the checkpoint's head has another shape; training starts a new {report.num_classes}-class "
                            "head (as intended for transfer)")


# ---------------------------------------------------------------- the plan


def _plan(report: CheckReport, recipe: Recipe, train_set, model: nn.Module, injection) -> None:
    from pace_cli.builders import image_size
    from pace_cli.regularizer.schedule import block_of, sigma_schedule

    p = recipe.pace
    if p.variant == "off":
        report.notes.append("[pace] variant = 'off': no noise and no consistency term (the adapter baseline)")
    else:
        schedule = _collect(report, lambda: sigma_schedule(injection.adapted_layers, injection.head_name, p.sigma,
                                                           p.noise_free_blocks, p.sigma_profile))
        for layer, sigma in (schedule or {}).items():
            report.sigma_per_block.setdefault(block_of(layer) or layer, round(sigma, 6))
    report.notes.extend(_ablation_notes(recipe))
    if train_set is not None:
        report.batch_size = min(recipe.data.batch_size, len(train_set))
        report.steps_per_epoch = len(train_set) // report.batch_size  # the last partial batch is dropped
        report.total_steps = report.steps_per_epoch * recipe.train.epochs
    # a step holds the activations of one micro-batch at a time
    batch = (report.batch_size or recipe.data.batch_size) // recipe.train.accumulate
    channels = recipe.model.in_chans or 3
    shape = (channels, image_size(recipe), image_size(recipe))
    try:
        report.memory = estimate_memory(model, injection, shape, batch, p.variant, recipe.train.precision,
                                        accumulate=recipe.train.accumulate, copies=p.copies)
    except (RuntimeError, NotImplementedError) as error:  # an operation without a meta implementation
        report.notes.append(f"no memory estimate: {type(error).__name__} tracing the model on the meta device "
                            f"({one_line(error)[:120]})")


def _ablation_notes(recipe: Recipe) -> list[str]:
    """What the ablation keys cost: more copies per image, a second gradient pass, an extra forward."""
    p, r, notes = recipe.pace, recipe.regularizer, []
    if p.variant in ("pace", "lazy") and p.copies > 2:
        notes.append(f"[pace] copies = {p.copies}: every regularised step runs {p.copies} noisy copies of each image, "
                     f"{p.copies} x the forward/backward work and activations of one pass")
    for key, what in (("gp", "gradient penalty"), ("sam_rho", "SAM")):
        if getattr(r, key) > 0:
            notes.append(f"[regularizer] {key}: the {what} runs each step's forward and backward twice (2 x the "
                         "compute; the activations of one pass at a time)")
    if r.fpa > 0:
        notes.append("[regularizer] fpa: one more forward per step without gradient (the pre-trained model's logits)")
    return notes


def saved_activation_bytes(model: nn.Module, input_shape: tuple[int, ...], batch: int) -> int:
    """Bytes autograd keeps for the backward pass of one training-mode forward, traced on the meta device.

    Parameters are not counted (they are held anyway); a tensor saved by several operations is
    counted once.
    """
    params = {id(p) for p in model.parameters()}
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in params:
            saved.setdefault(id(tensor), tensor)  # keeping the tensor keeps its id unique
        return tensor

    model.train()
    device = next(model.parameters()).device
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.zeros(batch, *input_shape, device=device))
    return sum(t.numel() * t.element_size() for t in saved.values())


def estimate_memory(model: nn.Module, injection, input_shape: tuple[int, ...], batch: int, variant: str,
                    precision: str, accumulate: int = 1, copies: int = 2) -> MemoryEstimate:
    """Memory of one training step: saved activations plus weights, gradients and AdamW state.

    Activations are traced for 1 and 2 images; the difference is the cost of one image and the
    rest does not grow with the batch (e.g. adapted weights computed once per step). PACE's
    `pace` and `lazy` variants run every image ``copies`` times (two noisy copies unless
    ``[pace] copies`` says more), so a step holds copies x batch images; the others hold one copy. With ``accumulate`` > 1, ``batch`` is the
    micro-batch, whose activations are all a step holds at once. Not counted: the noise tensors and the
    consistency loss (small next to a block's activations), temporary buffers inside one
    operation, and the allocator's slack; with bf16/fp16 autocast most activations take half.
    """
    one = saved_activation_bytes(model, input_shape, 1)
    two = saved_activation_bytes(model, input_shape, 2)
    per_image, fixed = two - one, max(0, 2 * one - two)
    images = batch * (copies if variant in ("pace", "lazy") else 1)
    activations = fixed + images * per_image
    if precision != "fp32":
        activations //= 2
    weights = (injection.total_parameters * _BYTES_PER_WEIGHT
               + injection.trainable_parameters * _BYTES_PER_TRAINABLE_EXTRA)
    n_copies = images // batch if images != batch else 1
    copies_text = f", {'two' if n_copies == 2 else n_copies} noisy copies per image" if n_copies > 1 else ""
    how = ("activations autograd saves for backward, traced (on the meta device: no memory) for 1 and 2 images, scaled to "
           f"{images} images per {'micro-batch' if accumulate > 1 else 'step'} "
           f"({f'{n_copies} x ' if n_copies > 1 else ''}{'micro-' if accumulate > 1 else ''}batch {batch}{copies_text}"
           f"{f'; [train] accumulate = {accumulate} runs them one after another' if accumulate > 1 else ''})"
           f"{', halved for ' + precision + ' autocast' if precision != 'fp32' else ''}; plus fp32 weights and, "
           "for trainable tensors, gradients and AdamW's two moments; excludes temporaries inside an operation "
           "and allocator overhead")
    return MemoryEstimate(images, per_image, fixed, activations, weights, activations + weights, how)
