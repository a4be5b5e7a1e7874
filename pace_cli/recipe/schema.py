"""Training recipes: TOML files validated by pydantic, with ``--set section.key=value`` overrides.

TOML has no null, so an empty string (``key = ""``) means "not set" for every optional key;
that is also how ``recipe_to_toml`` writes a ``None`` whose default is not ``None``.
"""

from __future__ import annotations

import math
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pace_cli.errors import PaceError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "ModelSection",
    "DataSection",
    "AdapterSection",
    "PaceSection",
    "OptimSection",
    "TrainSection",
    "OutputSection",
    "EvalTarget",
    "EvalSection",
    "Recipe",
    "SECTIONS",
    "load_recipe",
    "parse_recipe",
    "apply_overrides",
    "recipe_to_toml",
    "recipe_to_dict",
    "format_validation_error",
    "ineffective_settings",
    "CHECKPOINT_SUFFIXES",
]

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
PaceVariant = Literal["off", "pace", "lazy", "fast"]
FewshotLayout = Literal["fgvc", "imagenet"]


class _Section(BaseModel):
    # strict: TOML values are already typed, so "10" for an int or true for an int is a mistake.
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _normalise_inputs(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key, value in data.items():
            if isinstance(value, os.PathLike):  # callers building recipes in code pass Paths
                out[key] = value = os.fspath(value)
            field = cls.model_fields.get(key) or _field_by_alias(cls, key)
            if value == "" and field is not None and _is_optional(field.annotation):
                out[key] = None
        return out


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


SourceName = Literal["imagefolder", "vtab1k", "fewshot", "fgvc", "fashion-mnist", "digits", "synthetic"]
# Sources that read files under a root folder, and the keys only some sources read: a key set
# for a source that ignores it is an error, so a recipe never carries settings that do nothing.
_ROOTED_SOURCES = ("imagefolder", "vtab1k", "fewshot", "fgvc")
_SOURCE_ONLY_KEYS = {"root": _ROOTED_SOURCES + ("fashion-mnist",), "image_dir": ("fewshot", "fgvc"),
                     "fewshot_layout": ("fewshot",)}


# Sources that read [data] seed even without shots (the few-shot list, the crops, the generated set).
_SEEDED_SOURCES = ("fewshot", "fgvc", "synthetic")


def _is_set(section: BaseModel, key: str) -> bool:
    """Whether the recipe gave ``key`` a value that differs from leaving it out.

    A key written out with its default value changes nothing either way, and pace's own saved
    recipe.toml writes every key; only a set, non-default value can be a setting that does nothing.
    """
    if key not in section.model_fields_set:
        return False
    return getattr(section, key) != type(section).model_fields[key].default


# [data] keys with a default that only some sources read: refused when set to anything else.
_SET_SOURCE_ONLY_KEYS = {"cache": ("imagefolder", "vtab1k"), "synthetic_classes": ("synthetic",),
                         "synthetic_size": ("synthetic",)}


def _check_source_keys(section: BaseModel, source: str, where: str,
                       also: Mapping[str, Sequence[str]] | None = None) -> None:
    """Refuse the keys ``source`` does not read: ``_SOURCE_ONLY_KEYS`` when set, ``also`` (already found set).

    Every such key goes in one message, so one run lists all there is to remove.
    """
    unread = {key: sources for key, sources in _SOURCE_ONLY_KEYS.items()
              if getattr(section, key, None) is not None and source not in sources}
    unread.update({key: sources for key, sources in (also or {}).items() if source not in sources})
    if unread:
        raise ValueError("; ".join(f"{where}{key} is only read by source = {' or '.join(repr(s) for s in sources)}, "
                                   f"not {source!r}; remove it" for key, sources in unread.items()))


class DataSection(_Section):
    source: SourceName = Field(description="Dataset kind.")
    root: str | None = Field(None, description="Dataset folder (needed for imagefolder, vtab1k, fewshot, fgvc).")
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
        "`pace sweep --final` retrains the chosen setting on it; empty string = none."
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
        if self.source in _ROOTED_SOURCES and self.root is None:
            raise ValueError(f"source = '{self.source}' needs root = \"<dataset folder>\"")
        if self.source == "fewshot" and self.shots is None:
            raise ValueError("source = 'fewshot' needs shots = k (1, 2, 4, 8 or 16): it picks "
                             "annotations/train_meta.list.num_shot_k.seed_<seed>")
        set_keys = {key: sources for key, sources in _SET_SOURCE_ONLY_KEYS.items() if _is_set(self, key)}
        _check_source_keys(self, self.source, "", also=set_keys)
        return self


class AdapterSection(_Section):
    kind: str = Field("lora_mul+vpt_add", description="Adapter type inserted into the backbone (a row of "
                      "pace_cli.adapters.kinds.KINDS).")
    rank: int = Field(10, gt=0, description="Adapter bottleneck rank.")
    targets: list[str] = Field(
        ["qkv", "proj", "fc1", "fc2"],
        min_length=1,
        description="Name patterns of nn.Linear layers inside transformer blocks to adapt.",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        # read at validation time, so a kind registered after import is accepted like the built-in ones
        from pace_cli.adapters.kinds import KINDS

        if v not in KINDS:
            raise ValueError("must be one of " + ", ".join(KINDS))
        return v

    @field_validator("targets")
    @classmethod
    def _targets_not_blank(cls, v: list[str]) -> list[str]:
        if any(not t.strip() for t in v):
            raise ValueError("patterns must not be empty strings")
        return v


class PaceSection(_Section):
    variant: PaceVariant = Field(
        "pace", description="Consistency regulariser variant; off disables it."
    )
    lambda_: float = Field(1.0, alias="lambda", ge=0, description="Weight of the consistency loss.")
    sigma: float = Field(1.0, ge=0, description="Std of the multiplicative noise on adapter outputs.")
    lazy_interval: int = Field(2, ge=1, description="Steps between regularised steps (lazy variant).")
    noise_free_blocks: int = Field(0, ge=0, description="Leading blocks whose adapters get no noise.")


class OptimSection(_Section):
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    warmup_epochs: int = Field(2, ge=0, description="Linear warmup length in epochs.")
    min_lr: float = Field(1e-5, ge=0, description="Final learning rate of the cosine schedule.")
    warmup_start_lr: float = Field(1e-6, ge=0, description="Learning rate at the start of warmup.")
    grad_clip: float | None = Field(None, gt=0, description="Max gradient norm; unset = no clipping.")


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


class OutputSection(_Section):
    dir: str = Field("runs/pace", min_length=1, description="Run output folder.")


class EvalTarget(_Section):
    """One extra test set scored by `pace eval` with the same model (e.g. a shifted domain)."""

    name: str = Field(min_length=1, description="Name shown in the table and the JSON.")
    source: SourceName = Field(description="Dataset kind, as [data] source.")
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
        if self.source in _ROOTED_SOURCES and self.root is None:
            raise ValueError(f"target '{self.name}': source = '{self.source}' needs root = \"<dataset folder>\"")
        synthetic_only = {key: ("synthetic",) for key in ("seed", "synthetic_classes", "synthetic_size")
                          if getattr(self, key) is not None}
        _check_source_keys(self, self.source, f"target '{self.name}': ", also=synthetic_only)
        return self


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
    adapter: AdapterSection = Field(default_factory=AdapterSection)
    pace: PaceSection = Field(default_factory=PaceSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainSection = Field(default_factory=TrainSection)
    output: OutputSection = Field(default_factory=OutputSection)
    eval: EvalSection = Field(default_factory=EvalSection)


SECTIONS: tuple[str, ...] = tuple(Recipe.model_fields)

# [pace] keys each variant reads; the others are inert for it.
_VARIANT_KEYS = {
    "off": (),
    "pace": ("lambda_", "sigma", "noise_free_blocks"),
    "fast": ("lambda_", "sigma", "noise_free_blocks"),
    "lazy": ("lambda_", "sigma", "noise_free_blocks", "lazy_interval"),
}


def ineffective_settings(recipe: Recipe) -> list[str]:
    """Warnings for set keys that this recipe's other choices make inert, one line each.

    These are warnings, not errors (a key that no data source or model reads is an error, raised
    when the recipe is validated): a recipe is routinely rerun with one switch flipped, the
    baseline with ``--set pace.variant=off`` or a final run with ``--set data.val_split=""``, and
    the tuned settings it carries must not stop that run. They still do nothing, so say so.
    """
    notes: list[str] = []
    p = recipe.pace
    inert = [name for name in ("lambda_", "sigma", "noise_free_blocks", "lazy_interval")
             if name not in _VARIANT_KEYS[p.variant] and _is_set(p, name)]
    if inert:
        keys = ", ".join(PaceSection.model_fields[n].alias or n for n in inert)
        uses = {"off": "it adds no noise and no consistency loss",
                "pace": "lazy_interval is read by variant = 'lazy' only",
                "fast": "lazy_interval is read by variant = 'lazy' only"}.get(p.variant, "")
        notes.append(f"[pace] {keys} set but ignored with variant = {p.variant!r} ({uses})")
    d = recipe.data
    if _is_set(d, "seed") and d.shots is None and d.source not in _SEEDED_SOURCES:
        # `pace sweep --seeds` sets data.seed with train.seed for every source, hence not an error
        notes.append(f"[data] seed set but ignored: source = {d.source!r} reads it only to draw shots, and shots "
                     "is unset")
    if recipe.data.val_split is None and _is_set(recipe.train, "eval_every"):
        notes.append("[train] eval_every set but ignored: [data] val_split is empty, so no epoch is evaluated")
    if recipe.optim.warmup_epochs == 0 and _is_set(recipe.optim, "warmup_start_lr"):
        notes.append("[optim] warmup_start_lr set but ignored: warmup_epochs = 0, so there is no warm-up")
    return notes


# ---------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe file, apply ``--set`` overrides and validate it."""
    p = Path(path)
    if not p.exists():
        raise PaceError(f"recipe file '{p}' not found; check the path")
    if not p.is_file():
        raise PaceError(f"recipe '{p}' is not a file; pass a .toml recipe file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise PaceError(f"recipe file '{p}' is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise PaceError(f"cannot read recipe file '{p}': {e.strerror or e}") from None
    return parse_recipe(text, overrides, source=str(p))


def parse_recipe(text: str, overrides: Sequence[str] = (), *, source: str = "<recipe>") -> Recipe:
    """Parse recipe TOML text; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PaceError(
            f"recipe '{source}' is not valid TOML: {_one_line(str(e))}; fix the syntax there"
        ) from None
    except RecursionError:
        raise PaceError(f"recipe '{source}' nests arrays or tables too deeply; flatten it") from None
    try:
        return Recipe.model_validate(apply_overrides(data, overrides))
    except ValidationError as e:
        raise PaceError(f"invalid recipe '{source}': {format_validation_error(e)}") from None
    except RecursionError:
        raise PaceError(f"invalid recipe '{source}': values nest too deeply; flatten them") from None


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Return a copy of ``data`` with each ``section.key[.sub]=value`` applied.

    The value is read as a TOML value (``1e-3``, ``true``, ``[1, 2]``, ``"x"``); anything that
    is not valid TOML is kept as a plain string, so ``train.device=cpu`` works unquoted.
    """
    if isinstance(overrides, str):  # a lone "a.b=c" would otherwise be iterated per character
        overrides = [overrides]
    out = _deep_copy(data)
    for item in overrides:
        shown = _quote_override(item)
        if "=" not in item:
            raise PaceError(f"bad --set {shown}: expected section.key=value, e.g. optim.lr=1e-3")
        key, _, raw = item.partition("=")
        parts = [k.strip() for k in key.strip().split(".")]
        if len(parts) < 2 or any(not k for k in parts):
            raise PaceError(f"bad --set {shown}: the key must be section.key, e.g. train.epochs=5")
        if parts[0] not in SECTIONS:
            raise PaceError(
                f"bad --set {shown}: unknown section [{_toml_key(parts[0])}] (allowed: {', '.join(SECTIONS)})"
            )
        node = out
        for depth, k in enumerate(parts[:-1]):
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                where = ".".join(_toml_key(k) for k in parts[: depth + 1])
                raise PaceError(
                    f"bad --set {shown}: {where} is a value, not a table; set {where}=... instead"
                )
            node = child
        node[parts[-1]] = _parse_value(raw.strip())
    return out


def _quote_override(item: str) -> str:
    return f"'{item}'" if item.isprintable() and "'" not in item else repr(item)


def _parse_value(raw: str) -> Any:
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    if set(parsed) != {"v"}:  # e.g. a newline smuggling in another key
        return raw
    return parsed["v"]


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# ---------------------------------------------------------------- writing


def recipe_to_dict(recipe: Recipe) -> dict:
    """JSON-able dict of the whole recipe, keys as written in TOML (``lambda``, not ``lambda_``)."""
    return recipe.model_dump(mode="json", by_alias=True)


def recipe_to_toml(recipe: Recipe) -> str:
    """Serialise a recipe to TOML such that ``parse_recipe(recipe_to_toml(r)) == r``."""
    lines: list[str] = []
    for section_name in SECTIONS:
        section: BaseModel = getattr(recipe, section_name)
        values = section.model_dump(by_alias=True)
        nested: dict[str, dict] = {}
        arrays: dict[str, list] = {}
        if lines:
            lines.append("")
        lines.append(f"[{section_name}]")
        for name, info in type(section).model_fields.items():
            key = info.alias or name
            value = values[key]
            if isinstance(value, dict):
                nested[key] = value
                continue
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                arrays[key] = value
                continue
            if value is None:
                if info.default is None:
                    continue
                value = ""  # explicit "unset" for a key whose default is set
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, table in nested.items():
            if not table:
                continue
            lines.append("")
            lines.append(f"[{section_name}.{_toml_key(key)}]")
            lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items())
        for key, tables in arrays.items():
            for table in tables:
                lines.append("")
                lines.append(f"[[{section_name}.{_toml_key(key)}]]")
                # TOML has no null: an unset key is left out (its default is None).
                lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None)
    return "\n".join(lines) + "\n"


def _toml_document(data: dict) -> str:
    """Write ``{table: {key: scalar-or-list}}`` as TOML; handy for building recipes in tests."""
    lines: list[str] = []
    for table, body in data.items():
        lines.append(f"[{_toml_key(table)}]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in body.items())
        lines.append("")
    return "\n".join(lines)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-tripping form; 1e-05 style is valid TOML
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


# ---------------------------------------------------------------- error messages


def format_validation_error(error: ValidationError) -> str:
    """One line per pydantic error, joined with '; ', each naming the TOML key path."""
    messages: list[str] = []
    for err in error.errors(include_url=False):
        msg = _one_line(_format_one(err))  # backstop: a message must stay on one line
        if msg not in messages:
            messages.append(msg)
    return "; ".join(messages)


def _format_one(err: dict) -> str:
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    value = err.get("input")

    if not loc:
        return _describe(err, None)
    section = _toml_key(str(loc[0]))
    if len(loc) == 1:
        allowed = ", ".join(SECTIONS)
        if kind == "extra_forbidden":
            return f"unknown section [{section}] (allowed: {allowed})"
        if kind == "missing":
            return f"missing required section [{section}]"
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            return f"{section} = {_show(value)}: must be a table, write it as [{section}]"
        return f"[{section}]: {_describe(err, None)}"

    key = _key_path(loc[1:])
    section_cls = _section_class(str(loc[0]))
    if kind == "extra_forbidden" and len(loc) == 2 and section_cls is not None:
        allowed = ", ".join(f.alias or n for n, f in section_cls.model_fields.items())
        return f"unknown key [{section}] {key} (allowed: {allowed})"
    if kind == "missing":
        return f"missing required key [{section}] {key}"
    annotation = _annotation_at(section_cls, loc[1:])
    if kind == "value_error" and isinstance(value, dict):  # a whole table's rule: its dump says nothing
        return f"[{section}] {key}: {_describe(err, annotation)}"
    return f"[{section}] {key} = {_show(value)}: {_describe(err, annotation)}"


def _describe(err: dict, annotation: Any) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    bounds = {
        "greater_than": ("gt", ">"),
        "greater_than_equal": ("ge", ">="),
        "less_than": ("lt", "<"),
        "less_than_equal": ("le", "<="),
    }
    if kind in bounds:
        name, op = bounds[kind]
        return f"must be {op} {_num(ctx.get(name))}"
    if kind == "literal_error":
        choices = _literal_choices(annotation)
        if choices:
            return "must be one of " + ", ".join(str(c) for c in choices)
        return f"must be {ctx.get('expected', 'one of the allowed values')}"
    simple = {
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": 'must be a string in quotes, e.g. "text"',
        "list_type": "must be a list, e.g. [1, 2]",
        "dict_type": "must be a table",
        "model_type": "must be a table",
    }
    if kind in simple:
        return simple[kind]
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n <= 1 else f"needs at least {n} items"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "value_error":
        msg = str(err.get("msg", ""))
        return _one_line(msg.removeprefix("Value error, "))
    msg = _one_line(str(err.get("msg", "invalid value")))
    return msg[:1].lower() + msg[1:]


def _key_path(parts: tuple) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + _toml_key(str(p))
    return out


def _section_class(section: str) -> type[BaseModel] | None:
    field = Recipe.model_fields.get(section)
    if field is None:
        return None
    ann = field.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _field_by_alias(cls: type[BaseModel], key: str):
    for f in cls.model_fields.values():
        if f.alias == key:
            return f
    return None


def _annotation_at(cls: type[BaseModel] | None, parts: tuple) -> Any:
    if cls is None or not parts or not isinstance(parts[0], str):
        return None
    field = cls.model_fields.get(parts[0]) or _field_by_alias(cls, parts[0])
    if field is None or len(parts) > 1:
        return None
    return field.annotation


def _is_optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _literal_choices(annotation: Any) -> tuple:
    if annotation is None:
        return ()
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return ()


def _num(x: Any) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def _show(value: Any, limit: int = 60) -> str:
    try:
        text = _toml_value(value) if not isinstance(value, str) else repr(value)
    except TypeError:
        text = repr(value)
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())
