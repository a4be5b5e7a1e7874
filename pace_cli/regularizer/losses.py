"""PACE's training loss: cross-entropy plus λ times the consistency between noisy passes.

The variants (``off``, ``pace``, ``lazy``, ``fast``; paper §3 and the authors' code; and
``noise_only``, Table 6's "+Noise") and :class:`PaceRegularizer`, which installs the noise
schedule (:mod:`.schedule`) and the paired masks and hooks (:mod:`.masks`) on an adapter-injected
model, with the ablations' noise modes, copies and penalties (FPA, ℓ1). The adapter maths itself
is in :mod:`pace_cli.adapters`; the two-pass penalties (GP, SAM) are in :mod:`.sharpness`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pace_cli import distributed
from pace_cli.adapters import NoiseMode, adapted_layers, adapters_disabled, head_module_name
from pace_cli.distributed import SampleLayout, World
from pace_cli.errors import PaceError
from pace_cli.recipe.schema import PaceVariant
from pace_cli.regularizer.masks import (
    PairState, count_samples_hook, duplicate_hook, float32_forward, head_noise_hook, share_random_masks,
)
from pace_cli.regularizer.schedule import block_of, depth_groups, sigma_schedule

VARIANTS = typing.get_args(PaceVariant)


@dataclass(frozen=True)
class PaceConfig:
    variant: str = "pace"
    lambda_: float = 1.0  # λ; spelled `lambda` in recipes and adapter metadata
    sigma: float = 1.0
    lazy_interval: int = 2
    noise_free_blocks: int = 0
    noise: str = "gaussian"
    perturb: str = "adapter"
    sigma_profile: str = "decreasing"
    copies: int = 2
    fpa: float = 0.0  # [regularizer] fpa
    l1: float = 0.0  # [regularizer] l1

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise PaceError(f"unknown [pace] variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.lambda_ < 0:
            raise PaceError(f"[pace] lambda must be >= 0, got {self.lambda_}")
        if self.lazy_interval < 1:
            raise PaceError(f"[pace] lazy_interval must be >= 1, got {self.lazy_interval}")
        if self.copies < 2:
            raise PaceError(f"[pace] copies must be >= 2, got {self.copies}")
        for key in ("fpa", "l1"):
            if getattr(self, key) < 0:
                raise PaceError(f"[regularizer] {key} must be >= 0, got {getattr(self, key)}")
        try:
            NoiseMode(self.noise, self.perturb)
        except ValueError as error:
            raise PaceError(f"[pace] {error}") from None

    @property
    def paired(self) -> bool:
        """Whether the variant runs several noisy copies of each image."""
        return self.variant in ("pace", "lazy")


@dataclass
class LossParts:
    """One step's loss on this process's share of the global batch (or on a micro-batch of it).

    ``ce`` and ``consistency`` are this share's contributions to the global batch means (summed
    over processes they give the means); ``total`` is what to back-propagate: scaled so that the
    gradient average DistributedDataParallel takes over processes is the global-batch gradient.
    ``loss`` is the contribution to the logged total loss.
    """

    total: Tensor
    ce: Tensor
    consistency: Tensor
    logits: Tensor  # logits of the samples the CE was taken on (for train accuracy)
    labels: Tensor
    loss: Tensor


class PaceRegularizer:
    """Installs PACE on an adapter-injected model and computes the training loss.

    Installing sets each adapted layer's noise strength from the depth schedule, adds noise to
    the head output, makes drop masks shared by the two copies of a sample and keyed by the
    sample's place in the global batch, and hooks the first noisy block so that everything before
    it (patch embedding, noise-free blocks) runs once on B samples and is duplicated only where
    the copies start to differ.

    ``forward_model`` is what the loss calls: the model itself, or its DistributedDataParallel
    wrapper (set by the training loop); hooks live on the model underneath.
    """

    def __init__(self, model: nn.Module, config: PaceConfig, num_train_samples: int | None = None,
                 num_classes: int | None = None, *, seed: int = 0, world: World | None = None):
        self.model = model
        self.forward_model: nn.Module = model
        self.config = config
        self.seed = seed
        self.world = world or World()
        self.state = PairState(config.copies, NoiseMode(config.noise, config.perturb))
        self.head_name = head_module_name(model)
        layers = adapted_layers(model)
        sigma = 0.0 if config.variant == "off" else config.sigma
        self.sigmas = sigma_schedule(list(layers), self.head_name, sigma, config.noise_free_blocks,
                                     config.sigma_profile)
        self.l1_tensors = [t for layer in layers.values() for t in layer.adapter_tensors().values()]
        for path, layer in layers.items():
            layer.noise_sigma = self.sigmas[path]
            layer.batch_state = self.state
        head = model.get_submodule(self.head_name)
        head.pace_sigma = self.sigmas[self.head_name]
        self._hooks = [head.register_forward_hook(head_noise_hook(self.state)),
                       model.register_forward_pre_hook(count_samples_hook(self.state)), float32_forward(head)]
        # Every variant gets the keyed drop masks, so dropout and stochastic depth, too, do not
        # depend on the number of processes.
        share_random_masks(model, self.state)
        self.duplicate_at = ""
        if config.paired:
            self.duplicate_at = self._first_noisy_module(list(layers), config.noise_free_blocks)
            if self.duplicate_at:
                hook = duplicate_hook(self.state)
                self._hooks.append(model.get_submodule(self.duplicate_at).register_forward_pre_hook(hook))
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device)
        self.memory: Tensor | None = None
        self.seen: Tensor | None = None
        if config.variant == "fast":
            if not num_train_samples or not num_classes:
                raise PaceError("the fast PACE variant needs the training-set size and the number of classes")
            self.memory = torch.zeros(num_train_samples, num_classes, device=device)
            self.seen = torch.zeros(num_train_samples, dtype=torch.bool, device=device)

    def _first_noisy_module(self, layer_paths: list[str], noise_free_blocks: int) -> str:
        """Where the two copies start to differ; '' means at the input."""
        groups = depth_groups(layer_paths)
        if noise_free_blocks >= len(groups):
            return self.head_name
        key = groups[noise_free_blocks][0]
        # A layer outside any block may sit inside a residual branch, where duplicating its input
        # alone would break the shapes, so duplicate the whole input instead.
        return key if block_of(key) == key else ""

    def remove(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        for layer in adapted_layers(self.model).values():
            layer.batch_state = None

    def paired_forward(self, images: Tensor) -> Tensor:
        """Logits for [x; x; …] (``copies`` copies) with independent noise per copy and shared drop
        masks: shape [copies · B, C]."""
        batch, copies = images.shape[0], self.config.copies
        self.state.armed = True
        self.state.paired = False
        try:
            if not self.duplicate_at:
                self.state.paired = True
                images = torch.cat([images] * copies)
            logits = self.forward_model(images)
        finally:
            self.state.armed = False
            self.state.paired = False
        if logits.shape[0] != copies * batch:
            raise RuntimeError("the duplication hook did not fire; the model's forward skipped the hooked module")
        return logits

    def use_step_noise(self, step: int, global_size: int, offset: int, local_size: int) -> None:
        """Draw the coming forward pass's noise and masks from the generator keyed by (seed, step)."""
        self.state.layout = SampleLayout.for_step(self.generator, self.seed, step, global_size, offset, local_size)

    def loss(self, images: Tensor, labels: Tensor, indices: Tensor | None = None, step: int = 0, *,
             global_size: int | None = None, offset: int | None = None) -> LossParts:
        """The loss on ``images``, rows ``offset`` onwards of global batch ``step`` of ``global_size`` samples.

        Unset, ``images`` is this process's whole share (equal shares on every rank); a micro-batch
        of gradient accumulation passes its place. The noise, the drop masks, the lazy variant's
        subset and the divisions all follow the global batch, so the micro-batches' parts sum to the
        whole batch's.
        """
        variant = self.config.variant
        local = images.shape[0]
        if global_size is None:
            global_size = local * self.world.size
        if offset is None:
            offset = local * self.world.rank
        if variant == "pace" or (variant == "lazy" and step % self.config.lazy_interval == 0):
            if variant == "lazy":
                # Every other sample of the global batch (even positions): the same samples
                # whatever the number of processes.
                keep = torch.arange(offset, offset + local) % 2 == 0
                images, labels = images[keep.to(images.device)], labels[keep.to(labels.device)]
                offset, global_size = (offset + 1) // 2, (global_size + 1) // 2
                local = images.shape[0]
            reference = self._pretrained_logits(images)
            self.use_step_noise(step, global_size, offset, local)
            logits = self.paired_forward(images).float()
            views = logits.chunk(self.config.copies)
            ce_sum = _cross_entropy_sum(views[0], labels)
            consistency_sum = mean_pair_distance_sum(views)
            return self._parts(ce_sum, consistency_sum, global_size, views[0], labels, reference)
        reference = self._pretrained_logits(images)
        self.use_step_noise(step, global_size, offset, local)
        logits = self.forward_model(images).float()
        ce_sum = _cross_entropy_sum(logits, labels)
        consistency_sum = logits.new_zeros(())
        if variant == "fast":
            consistency_sum = self._fast_consistency(logits, indices)
        return self._parts(ce_sum, consistency_sum, global_size, logits, labels, reference)

    def _pretrained_logits(self, images: Tensor) -> Tensor | None:
        """f(x; θ0) for the FPA term, as fp_distance takes it; None without FPA."""
        return pretrained_logits(self.model, images) if self.config.fpa > 0 else None

    def _parts(self, ce_sum: Tensor, consistency_sum: Tensor, global_size: int, logits: Tensor,
               labels: Tensor, reference: Tensor | None) -> LossParts:
        ce = ce_sum / global_size
        consistency = consistency_sum / global_size
        loss = ce + self.config.lambda_ * consistency
        if reference is not None:
            loss = loss + self.config.fpa * (logits - reference).pow(2).sum() / global_size
        if self.config.l1 > 0 and self.l1_tensors:  # kind head has no adapter tensor to penalise
            # A constant per sample, so the shares of every process and micro-batch add up to one λ·Σ|θ|.
            l1 = torch.stack([t.abs().sum() for t in self.l1_tensors]).sum()
            loss = loss + self.config.l1 * l1 * (len(logits) / global_size)
        return LossParts(loss * self.world.size, ce, consistency, logits, labels, loss)

    def _fast_consistency(self, logits: Tensor, indices: Tensor | None) -> Tensor:
        """Sum over this share of ||logits − remembered logits||²; the memory is kept the same on
        every rank by gathering all ranks' logits before writing them."""
        if indices is None:
            raise PaceError("the fast PACE variant needs sample indices from the data loader")
        indices = indices.to(self.memory.device)
        seen = self.seen[indices].to(logits.dtype)
        # Unlike the authors' zero-initialised buffer, a sample's first visit contributes nothing,
        # so epoch 1 is not pulled towards all-zero logits.
        distance = (logits - self.memory[indices]).pow(2).sum(dim=1)
        consistency = (distance * seen).sum()
        all_indices = distributed.all_gather_rows(indices)
        all_logits = distributed.all_gather_rows(logits.detach().float())
        self.memory[all_indices] = all_logits
        self.seen[all_indices] = True
        return consistency

    def state_dict(self) -> dict[str, Tensor]:
        if self.memory is None:
            return {}
        return {"fast_memory": self.memory.cpu(), "fast_seen": self.seen.cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if self.memory is not None and "fast_memory" in state:
            self.memory.copy_(state["fast_memory"])
            self.seen.copy_(state["fast_seen"])


def _cross_entropy_sum(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy summed over the share: integer labels [B], or soft targets [B, C] (mixup, label
    smoothing) with timm's SoftTargetCrossEntropy per sample, Σ_c −t_c log softmax(z)_c."""
    if targets.dim() == 2:
        return F.cross_entropy(logits, targets.to(logits.dtype), reduction="sum")
    return F.cross_entropy(logits, targets, reduction="sum")


def mean_pair_distance_sum(views: tuple[Tensor, ...]) -> Tensor:
    """Σ over samples of the mean over the pairs of copies i < j of ||f_i − f_j||²: M copies' consistency
    (paper Figure 5); for two copies, Σ ||f_1 − f_2||²."""
    pairs = [(i, j) for i in range(len(views)) for j in range(i + 1, len(views))]
    return torch.stack([(views[i] - views[j]).pow(2).sum() for i, j in pairs]).mean()


@torch.no_grad()
def pretrained_logits(model: nn.Module, images: Tensor) -> Tensor:
    """f(x; θ0): the model with its adapters off, the same (trained) head, in eval mode (no drop path,
    no noise, so no draws are taken from the step's generator)."""
    was_training = model.training
    model.eval()
    try:
        with adapters_disabled(model):
            return model(images).float()
    finally:
        model.train(was_training)


@torch.no_grad()
def fp_distance(model: nn.Module, images: Tensor) -> float:
    """Mean over samples of ||f(x; θ0 + Δθ) − f(x; θ0)||², the same head in both (paper §6)."""
    was_training = model.training
    model.eval()
    try:
        tuned = model(images).float()
    finally:
        model.train(was_training)
    return (tuned - pretrained_logits(model, images)).pow(2).sum(dim=1).mean().item()
