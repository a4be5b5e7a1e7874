"""The recipe schema: one pydantic model per TOML section, validated strictly.

TOML has no null, so an empty string (``key = ""``) means "not set" for every optional key.
``[data]`` and ``[[eval.targets]]`` are checked against the data source registry
(:data:`pace_cli.data.sources.SOURCES`, torch-free) when validated: the source name, its split
names, its root rule, and the keys only some sources read.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable, Literal, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from pace_cli.adapters.kinds import KINDS
from pace_cli.data.sources import SOURCES, SourceSpec, only_read_by
from pace_cli.recipe.augment import AugmentSection
from pace_cli.recipe.base import _Section, field_by_alias, is_set  # noqa: F401  (others import the last two from here)
from pace_cli.recipe.log import LogSection
from pace_cli.recipe.regularizer import (  # noqa: F401  (others import the enums from here)
    PaceNoise, PacePerturb, PaceSection, PaceVariant, RegularizerSection, SigmaProfile,
)

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
# Passed to timm.create_model explicitly, so a duplicate in [model.kwargs] would clash.
_RESERVED_KWARGS = frozenset(
    {"model_name", "pretrained", "num_classes", "img_size", "in_chans",
     "drop_path_rate", "drop_rate", "checkpoint_path", "pretrained_cfg_overlay"}
)


def _check_kwarg_value(value: Any) -> Any:
    """Allow only what TOML can round-trip and timm can take: scalars and (nested) lists of them."""
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [_check_kwarg_value(v) for v in value]
    raise ValueError("must be a number, string, boolean or list of those")


KwargValue = Annotated[Any, AfterValidator(_check_kwarg_value)]

# The enums of the recipe, written once; the modules that act on them take their tuples from
# these with typing.get_args.
LrSchedule = Literal["per_step", "epoch"]
FewshotLayout = Literal["fgvc", "imagenet"]


class ModelSection(_Section):
    name: str = Field(description="timm model name, e.g. vit_base_patch16_224.")
    checkpoint: str | None = Field(
        None,
        description="Local weights (.safetensors/.pth/.pt/.bin/.npz) or builtin:<name> for a "
        "backbone shipped in pace_cli/assets.",
    )
    pretrained: bool = Field(False, description="Download pretrained weights from timm's hub.")
    num_classes: int | None = Field(None, gt=0, description="Classifier outputs; unset = from the data.")
    img_size: int | None = Field(None, gt=0, description="Input resolution; unset = the model's default.")
    in_chans: int | None = Field(None, gt=0, description="Input channels; unset = the model's default.")
    drop_path_rate: float = Field(0.1, ge=0, lt=1, description="Stochastic depth rate.")
    drop_rate: float = Field(0.0, ge=0, lt=1, description="Dropout before the classifier head.")
    kwargs: dict[str, KwargValue] = Field(
        default_factory=dict,
        description="Extra timm.create_model keyword arguments (patch_size, depth, embed_dim, ...).",
    )

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a timm model name, e.g. 'vit_base_patch16_224'")
        return v

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_form(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith("builtin:"):
            if not v[len("builtin:"):].strip():
                raise ValueError("builtin: needs a backbone name, e.g. 'builtin:vit_tiny'")
            return v
        if not v.lower().endswith(CHECKPOINT_SUFFIXES):
            raise ValueError(
                "must end in " + ", ".join(CHECKPOINT_SUFFIXES) + " or start with 'builtin:'"
            )
        return v

    @field_validator("kwargs")
    @classmethod
    def _no_reserved_kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(set(v) & _RESERVED_KWARGS)
        if clash:
            raise ValueError(
                f"{', '.join(clash)} cannot go in kwargs, set it as a [model] key instead"
            )
        return v

    @model_validator(mode="after")
    def _one_weight_source(self) -> ModelSection:
        if self.checkpoint is not None and self.pretrained:
            raise ValueError(
                "checkpoint and pretrained = true are mutually exclusive, drop one of them"
            )
        return self


def _registered(registry: Mapping[str, Any]) -> AfterValidator:
    """A name that must be a key of ``registry``, looked up at validation time, so a row registered
    after import is accepted like the built-in ones."""
    def check(name: str) -> str:
        if name not in registry:
            raise ValueError("must be one of " + ", ".join(registry))
        return name
    return AfterValidator(check)


SourceField = Annotated[str, _registered(SOURCES)]
KindField = Annotated[str, _registered(KINDS)]


def _source_problems(section: BaseModel, rules: dict[str, Callable[[SourceSpec], bool]],
                     split_keys: tuple[str, ...], prefix: str = "") -> list[str]:
    """What ``section`` asks of its source that the source's registry row does not allow.

    A key only some sources read is an error when set for one that ignores it, so a recipe never
    carries settings that do nothing. ``rules`` says, per such key besides the options of the
    registry rows, which sources read it; split names are checked where the source has fixed ones.
    """
    source = section.source
    spec = SOURCES[source]
    problems = []
    if spec.root == "required" and section.root is None:
        problems.append(f"{prefix}source = '{source}' needs root = \"<dataset folder>\"")
    options = {key for row in SOURCES.values() for key in row.options}
    for key in type(section).model_fields:  # field order, so the message reads like the section
        reads = rules.get(key) or (_reads_option(key) if key in options else None)
        if reads is not None and is_set(section, key) and not reads(spec):
            problems.append(prefix + only_read_by(key, source, reads))
    for key in split_keys:
        split = getattr(section, key)
        if spec.splits is not None and split is not None and split not in spec.splits:
            problems.append(f"{prefix}{key} = {split!r} is not a split of source = {source!r} (use one of "
                            + ", ".join(spec.splits) + ")")
    return problems


def _reads_option(key: str) -> Callable[[SourceSpec], bool]:
    return lambda spec: key in spec.options


class DataSection(_Section):
    source: SourceField = Field(description="Dataset kind: a row of pace_cli.data.sources.SOURCES.")
    root: str | None = Field(None, description="Dataset folder (needed for imagefolder, vtab1k, fewshot, fgvc; "
                             "fashion-mnist has a default).")
    image_dir: str | None = Field(
        None, min_length=1,
        description="fewshot/fgvc: folder under root the listed image paths are relative to ('.' = root); "
        "unset = images/ (fewshot, imagenet layout: train/ and val/) or, for fgvc, the first of images/, "
        "Images/, root holding the first listed image.",
    )
    fewshot_layout: FewshotLayout | None = Field(
        None,
        description="fewshot: 'fgvc' (default; splits train/val/test under images/) or 'imagenet' (domain "
        "adaptation: train and the held-out search list 'val' under train/, test = val_meta.list under val/).",
    )
    train_split: str = Field("train", description="Split used for training.")
    val_split: str | None = Field("val", description="Validation split; empty string = none.")
    test_split: str | None = Field("test", description="Test split; empty string = none.")
    trainval_split: str | None = Field(
        None, description="Split holding train + val together (e.g. 'trainval', 'train800val200'): "
        "`pace sweep --final` retrains the chosen setting on it when shots is unset; empty string = none."
    )
    batch_size: int = Field(64, gt=0, description="Training batch size.")
    eval_batch_size: int = Field(256, gt=0, description="Evaluation batch size.")
    image_size: int | None = Field(None, gt=0, description="Resize target; unset = the model's img_size.")
    channels: Literal[1, 3] = Field(3, description="Image channels fed to the model (1 or 3).")
    mean: list[float] | None = Field(None, min_length=1, description="Per-channel normalisation mean.")
    std: list[float] | None = Field(None, min_length=1, description="Per-channel normalisation std (> 0).")
    shots: int | None = Field(
        None, gt=0,
        description="Keep only this many training images per class; for fewshot (required) it picks the list "
        "annotations/train_meta.list.num_shot_{shots}.seed_{seed}.",
    )
    seed: int = Field(0, description="Seed for subsampling and splits; for fewshot, the list's seed; for "
                      "fewshot/fgvc also the seed of the random crops.")
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes; auto = 0 without CUDA, up to 8 with CUDA."
    )
    cache: bool | Literal["auto"] = Field(
        "auto", description="Keep decoded, resized images in memory after the first epoch (imagefolder, "
        "vtab1k); auto = when a split's images take at most 1 GiB."
    )
    synthetic_classes: int = Field(10, gt=0, description="Classes of the synthetic dataset.")
    synthetic_size: int = Field(64, gt=0, description="Images per split of the synthetic dataset.")

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(s <= 0 for s in v):
            raise ValueError("every value must be > 0")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DataSection:
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} values but std has {len(self.std)}, give both the same length"
            )
        if self.trainval_split is not None and self.trainval_split == self.test_split:
            raise ValueError(
                f"trainval_split and test_split are both '{self.test_split}'; the final runs would train on "
                "the test images, point trainval_split at the train + val split"
            )
        problems = _source_problems(self, _DATA_RULES, _DATA_SPLITS)
        spec = SOURCES[self.source]
        if spec.needs_shots and self.shots is None:
            problems.insert(0, " ".join(filter(None, (f"source = '{self.source}' needs shots = k", spec.shots_hint))))
        if problems:
            raise ValueError("; ".join(problems))
        return self


# [data] keys besides the source options that only some sources read, and the keys naming splits.
_DATA_RULES = {"root": lambda spec: spec.reads_root, "cache": lambda spec: spec.cacheable}
_DATA_SPLITS = ("train_split", "val_split", "test_split", "trainval_split")

class AdapterSection(_Section):
    kind: KindField = Field("lora_mul+vpt_add", description="Adapter type inserted into the backbone (a row of "
                            "pace_cli.adapters.kinds.KINDS).")
    rank: int = Field(10, gt=0, description="Adapter bottleneck rank.")
    targets: list[str] = Field(
        ["qkv", "proj", "fc1", "fc2"],
        min_length=1,
        description="Name patterns of nn.Linear layers inside transformer blocks to adapt (unset: the kind's "
        "default; ia3: [\"qkv\", \"fc2\"]).",
    )
    feedforward: list[str] = Field(
        [], description="ia3 only: patterns, matched like targets, of the targeted layers whose input is scaled "
        "instead of their output (PEFT's feedforward_modules; unset: [\"fc2\"] for ia3).",
    )

    @field_validator("targets", "feedforward")
    @classmethod
    def _targets_not_blank(cls, v: list[str]) -> list[str]:
        if any(not t.strip() for t in v):
            raise ValueError("patterns must not be empty strings")
        return v

    @model_validator(mode="after")
    def _kind_defaults(self) -> "AdapterSection":
        """A kind's own defaults for the keys left unset ((IA)³ adapts keys/values and the FFN's output layer)."""
        spec = KINDS[self.kind]
        defaults = {"targets": spec.default_targets, "feedforward": spec.default_feedforward or None}
        for key, default in defaults.items():
            if default is not None and key not in self.model_fields_set:
                setattr(self, key, list(default))
                self.model_fields_set.discard(key)  # still unset: only a value the recipe gives is "set"
        return self


class OptimSection(_Section):
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    warmup_epochs: int = Field(2, ge=0, description="Linear warmup length in epochs.")
    min_lr: float = Field(1e-5, ge=0, description="Final learning rate of the cosine schedule.")
    warmup_start_lr: float = Field(1e-6, ge=0, description="Learning rate at the start of warmup.")
    grad_clip: float | None = Field(None, gt=0, description="Max gradient norm; unset = no clipping.")
    schedule: LrSchedule = Field(
        "per_step", description="per_step: warm-up and cosine set every step; epoch: the authors' timm "
        "CosineLRScheduler stepped once per epoch."
    )


class TrainSection(_Section):
    epochs: int = Field(20, gt=0, description="Training epochs.")
    seed: int = Field(0, description="Seed for initialisation, noise and shuffling.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda if available.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Autocast precision.")
    compile: bool = Field(False, description="Run the model through torch.compile (first steps are slower).")
    eval_every: int = Field(1, gt=0, description="Evaluate every N epochs.")
    log_every: int = Field(10, gt=0, description="Log every N steps.")
    checkpoint_every: int = Field(
        0, ge=0, description="Also save a training checkpoint every N steps (one is always saved at "
        "each epoch end and on Ctrl-C); 0 = epoch ends only."
    )
    val_grad_norm: bool = Field(
        False, description="At evaluated epochs also log the norm of the validation cross-entropy's gradient "
        "over the trainable tensors (needs [data] val_split)."
    )
    accumulate: int = Field(
        1, gt=0, description="Split each batch into this many micro-batches, one forward and backward each, "
        "then one update: the same step, with the activation memory of batch_size / accumulate images."
    )


class OutputSection(_Section):
    dir: str = Field("runs/pace", min_length=1, description="Run output folder.")


class EvalTarget(_Section):
    """One extra test set scored by `pace eval` with the same model (e.g. a shifted domain)."""

    name: str = Field(min_length=1, description="Name shown in the table and the JSON.")
    source: SourceField = Field(description="Dataset kind, as [data] source.")
    root: str | None = Field(None, description="Dataset folder of the target.")
    split: str = Field("test", min_length=1, description="Split of the target to score (fewshot: 'val' reads "
                       "annotations/val_meta.list).")
    restrict_logits: bool = Field(
        description="true: score with the logits of the classes present in the target only (ImageNet-A/-R "
        "protocol); false: all of the head's classes. Required so the choice is explicit."
    )
    class_map: Literal["name", "index"] = Field(
        "name",
        description="How target classes find their head output: 'name' matches the target's class names "
        "(folder names, or the raw ids of fewshot/fgvc) with the training classes; 'index' takes its "
        "0-based labels as head indices.",
    )
    image_dir: str | None = Field(None, min_length=1, description="fewshot/fgvc: image folder under root ('.' = root).")
    fewshot_layout: FewshotLayout | None = Field(None, description="fewshot: list layout, as in [data].")
    seed: int | None = Field(None, description="synthetic: the seed of the generated set (unset = 0).")
    synthetic_classes: int | None = Field(None, gt=0, description="synthetic: classes (unset = 10).")
    synthetic_size: int | None = Field(None, gt=0, description="synthetic: images (unset = 64).")

    @model_validator(mode="after")
    def _consistent(self) -> EvalTarget:
        if not self.name.strip():
            raise ValueError("name must not be blank")
        problems = _source_problems(self, _TARGET_RULES, ("split",), prefix=f"target '{self.name}': ")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# A target is scored without shots and without training, so its seed counts only where the data
# itself is drawn from the seed.
_TARGET_RULES = {"root": lambda spec: spec.reads_root, "seed": lambda spec: spec.target_reads_seed}


class EvalSection(_Section):
    targets: list[EvalTarget] = Field(
        default_factory=list,
        description="Extra test sets that `pace eval` scores with the same model ([[eval.targets]] tables).",
    )

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, v: list[EvalTarget]) -> list[EvalTarget]:
        seen: set[str] = set()
        for t in v:
            if t.name in seen:
                raise ValueError(f"two targets are named '{t.name}'; give each a unique name")
            seen.add(t.name)
        return v


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: ModelSection
    data: DataSection
    augment: AugmentSection = Field(default_factory=AugmentSection)
    adapter: AdapterSection = Field(default_factory=AdapterSection)
    pace: PaceSection = Field(default_factory=PaceSection)
    regularizer: RegularizerSection = Field(default_factory=RegularizerSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainSection = Field(default_factory=TrainSection)
    output: OutputSection = Field(default_factory=OutputSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    log: LogSection = Field(default_factory=LogSection)

    @model_validator(mode="after")
    def _val_grad_norm_has_a_split(self) -> Recipe:
        if self.train.val_grad_norm and self.data.val_split is None:
            raise ValueError("[train] val_grad_norm = true measures on the validation split, but [data] val_split "
                             "is empty; set val_split or val_grad_norm = false")
        return self

    @model_validator(mode="after")
    def _even_mixed_batch(self) -> Recipe:
        if self.augment.mixes and self.data.batch_size % 2:
            raise ValueError(f"[augment] mixes sample i of a batch with sample B-1-i (timm's batch mode), so [data] "
                             f"batch_size = {self.data.batch_size} must be even; use {self.data.batch_size + 1}")
        return self

    @model_validator(mode="after")
    def _one_second_gradient_pass(self) -> Recipe:
        r = self.regularizer
        if r.gp > 0 and r.sam_rho > 0:
            raise ValueError("[regularizer] gp and sam_rho both take a second gradient pass at another point; set one")
        two_pass = "gp" if r.gp > 0 else "sam_rho" if r.sam_rho > 0 else None
        if two_pass and self.pace.variant == "fast":
            raise ValueError(f"[regularizer] {two_pass} runs each step twice, but [pace] variant = 'fast' would write "
                             "its memory of logits on both passes; use another variant")
        if two_pass and self.train.precision == "fp16":
            raise ValueError(f"[regularizer] {two_pass} needs the unscaled gradient between its two passes; use "
                             "[train] precision = 'bf16' or 'fp32' instead of 'fp16'")
        return self

    @model_validator(mode="after")
    def _accumulate_divides_batch(self) -> Recipe:
        batch, accumulate = self.data.batch_size, self.train.accumulate
        if batch % accumulate:
            raise ValueError(f"[train] accumulate = {accumulate} must divide [data] batch_size = {batch} (each batch "
                             f"is split into accumulate equal micro-batches); use a divisor of {batch}"
                             f"{_divisors_near(batch, accumulate)}")
        problem = lazy_micro_batch_problem(self.pace.variant, batch, 1, accumulate)
        if problem:
            raise ValueError(problem)
        return self


def lazy_micro_batch_problem(variant: str, global_batch: int, processes: int, accumulate: int) -> str | None:
    """Why a lazy run cannot split ``global_batch`` this way, or None.

    Its regularised steps take the even positions of the global batch, so a micro-batch of one
    sample at an odd position would have nothing to run (and under DistributedDataParallel every
    process must run every micro-batch's backward).
    """
    micro = global_batch // (processes * accumulate)
    if variant != "lazy" or micro != 1 or global_batch == 1:
        return None
    split = f"{processes} processes x [train] accumulate = {accumulate}" if processes > 1 else \
        f"[train] accumulate = {accumulate}"
    return (f"[pace] variant = 'lazy' needs micro-batches of at least 2 samples, but a global batch of "
            f"{global_batch} over {split} leaves 1; lower accumulate (or the process count)")


def _divisors_near(number: int, wanted: int) -> str:
    """' such as a or b': the divisors of ``number`` just below and just above ``wanted``, for a remedy."""
    below = max(d for d in range(1, wanted) if number % d == 0)
    above = [d for d in range(wanted + 1, number + 1) if number % d == 0][:1]
    return " such as " + " or ".join(map(str, [below] + above))


SECTIONS: tuple[str, ...] = tuple(Recipe.model_fields)
