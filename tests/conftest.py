import pytest
import timm
import torch

torch.set_num_threads(2)


def tiny_vit(depth: int = 2, num_classes: int = 5, **kwargs):
    """A ViT small enough for unit tests: 32x32 input, 8x8 patches (16 tokens), width 32."""
    args = dict(img_size=32, patch_size=8, depth=depth, embed_dim=32, num_heads=2, num_classes=num_classes)
    args.update(kwargs)
    return timm.create_model("vit_tiny_patch16_224", **args)


def tiny_deit(**kwargs):
    args = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=5)
    args.update(kwargs)
    return timm.create_model("deit_tiny_patch16_224", **args)


def tiny_swin(depths=(1, 1), num_classes: int = 5, **kwargs):
    args = dict(img_size=32, patch_size=2, window_size=4, depths=depths, num_heads=(2, 4), embed_dim=16,
                num_classes=num_classes)
    args.update(kwargs)
    return timm.create_model("swin_tiny_patch4_window7_224", **args)


MODEL_FACTORIES = {"vit": tiny_vit, "deit": tiny_deit, "swin": tiny_swin}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
