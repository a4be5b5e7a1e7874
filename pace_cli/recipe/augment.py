"""The ``[augment]`` section: timm's per-image training transform and its batch mix, checked torch-free.

Whether timm itself reads an ``auto_augment`` string is checked where timm is at hand: when the
training data is built and by ``pace check`` (:mod:`pace_cli.data.augment`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pace_cli.recipe.base import _Section, is_set

AugmentTransform = Literal["source", "timm"]
# timm's interpolation names (timm.data.transforms.str_to_pil_interp), and its 'random' (bilinear or bicubic).
Interpolation = Literal["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming", "random"]
ErasingMode = Literal["const", "rand", "pixel"]


class AugmentSection(_Section):
    """Training augmentation: timm's per-image transform and its batch mix (Mixup / CutMix, label smoothing).

    The defaults change nothing: each source's own training images and hard labels.
    """

    transform: AugmentTransform = Field(
        "source", description="Per-image training transform: 'source' = the source's own (fewshot/fgvc: random "
        "crop + flip; the others: none); 'timm' = timm's create_transform(is_training=True) with the keys below.")
    auto_augment: str | None = Field(None, min_length=1, description="timm: RandAugment or AutoAugment string, e.g. "
                                     "'rand-m9-mstd0.5-inc1'; unset = none.")
    color_jitter: float = Field(0.0, ge=0, description="timm: brightness, contrast and saturation jitter; 0 = none.")
    scale: list[float] = Field([0.08, 1.0], min_length=2, max_length=2,
                               description="timm: RandomResizedCrop's range of the crop's area, a fraction of the image's.")
    ratio: list[float] = Field([3 / 4, 4 / 3], min_length=2, max_length=2,
                               description="timm: RandomResizedCrop's range of the crop's aspect ratio.")
    hflip: float = Field(0.5, ge=0, le=1, description="timm: probability of a left-right flip.")
    interpolation: Interpolation = Field("bilinear", description="timm: resampling of the crop and of RandAugment.")
    re_prob: float = Field(0.0, ge=0, le=1, description="timm: probability of random erasing; 0 = none.")
    re_mode: ErasingMode = Field("const", description="timm: what erased pixels become: const (0), rand (one "
                                 "normal draw per channel), pixel (one per pixel).")
    re_count: int = Field(1, ge=1, description="timm: at most this many erased boxes per image.")
    mixup_alpha: float = Field(0.0, ge=0, description="Mixup's Beta(α, α) over the global batch; 0 = no mixup.")
    cutmix_alpha: float = Field(0.0, ge=0, description="CutMix's Beta(α, α) over the global batch; 0 = no CutMix.")
    mix_prob: float = Field(1.0, gt=0, le=1, description="Probability that a batch is mixed at all.")
    switch_prob: float = Field(0.5, ge=0, le=1, description="With both alphas: probability of CutMix instead of mixup.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the (mixed) soft targets.")

    @field_validator("scale", "ratio")
    @classmethod
    def _range(cls, v: list[float]) -> list[float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("must be [low, high] with 0 < low <= high")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> AugmentSection:
        problems = []
        if self.transform == "source":
            problems += [f"{key} is read only with transform = 'timm'; set transform = \"timm\" or remove it"
                         for key in _TIMM_TRANSFORM_KEYS if is_set(self, key)]
        elif self.scale[1] > 1:
            problems.append(f"scale = {self.scale}: the crop's area is at most the image's, keep high <= 1")
        if is_set(self, "color_jitter") and self.auto_augment and "3a" not in self.auto_augment:
            # timm's own rule (transforms_imagenet_train): RandAugment / AutoAugment replace colour jitter
            problems.append(f"color_jitter does nothing with auto_augment = {self.auto_augment!r} (timm drops colour "
                            "jitter when an auto_augment policy is set); remove it")
        problems += [f"{key} does nothing with re_prob = 0; set re_prob or remove it"
                     for key in ("re_mode", "re_count") if self.re_prob == 0 and is_set(self, key)]
        if is_set(self, "switch_prob") and not (self.mixup_alpha > 0 and self.cutmix_alpha > 0):
            problems.append("switch_prob chooses between mixup and CutMix, so it needs both mixup_alpha > 0 and "
                            "cutmix_alpha > 0; set them or remove it")
        if is_set(self, "mix_prob") and not self.mixes:
            problems.append("mix_prob needs mixup_alpha > 0 or cutmix_alpha > 0; set one or remove it")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (Mixup or CutMix)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def timm_transform_options(self) -> dict[str, Any] | None:
        """The keyword arguments of timm's create_transform these keys give; None for transform = 'source'."""
        if self.transform == "source":
            return None
        return {key: getattr(self, key) for key in _TIMM_TRANSFORM_KEYS}

    def batch_mix_options(self) -> dict[str, float] | None:
        """The keys of the batch mix; None when batches keep their hard labels (no mix, no smoothing)."""
        if not (self.mixes or self.label_smoothing > 0):
            return None
        return {key: getattr(self, key) for key in _BATCH_MIX_KEYS}


_TIMM_TRANSFORM_KEYS = ("auto_augment", "color_jitter", "scale", "ratio", "hflip", "interpolation", "re_prob",
                        "re_mode", "re_count")
_BATCH_MIX_KEYS = ("mixup_alpha", "cutmix_alpha", "mix_prob", "switch_prob", "label_smoothing")
