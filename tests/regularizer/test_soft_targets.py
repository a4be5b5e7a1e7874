"""The PACE loss's cross-entropy takes integer labels or soft targets ([augment]'s mixup and label smoothing)."""

import torch
from helpers import tiny_vit
from timm.loss import SoftTargetCrossEntropy

from pace_cli.adapters import AdapterConfig, inject_adapters
from pace_cli.regularizer.losses import PaceConfig, PaceRegularizer, _cross_entropy_sum

CLASSES = 5


def test_cross_entropy_takes_labels_or_soft_targets_as_a_sum():
    logits = torch.randn(6, CLASSES)
    labels = torch.randint(0, CLASSES, (6,))
    soft = torch.softmax(torch.randn(6, CLASSES), dim=1)
    torch.testing.assert_close(_cross_entropy_sum(logits, soft), SoftTargetCrossEntropy()(logits, soft) * 6)
    torch.testing.assert_close(_cross_entropy_sum(logits, labels),
                               -torch.log_softmax(logits, 1)[torch.arange(6), labels].sum())


def test_every_variant_takes_soft_targets():
    images, soft = torch.randn(4, 3, 32, 32), torch.softmax(torch.randn(4, CLASSES), dim=1)
    for variant in ("off", "pace", "lazy", "fast"):
        model = tiny_vit(num_classes=CLASSES)
        inject_adapters(model, AdapterConfig(kind="lora_add", rank=2, targets=("qkv",)), num_classes=CLASSES)
        loss = PaceRegularizer(model, PaceConfig(variant=variant), num_train_samples=4, num_classes=CLASSES)
        parts = loss.loss(images, soft, torch.arange(4), step=0)
        parts.total.backward()
        kept = 2 if variant == "lazy" else 4  # lazy's PACE steps take every other sample, targets too
        assert parts.labels.shape == (kept, CLASSES) and torch.isfinite(parts.total)
