"""Every shipped recipe loads, agrees with the paper's tables, and reads fake data in its source's layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_data import make_fake_data

from pace_cli.builders import build_dataset, build_target_dataset
from pace_cli.recipe import load_recipe, recipe_to_dict

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").rglob("*.toml"))
IDS = [p.relative_to(ROOT / "recipes").as_posix() for p in RECIPES]
BASE = "bases/vit_b16_in21k.safetensors"

A, B = "lora_mul+vpt_add", "lora_add"
# Paper Table 7: kind, rank, lr, weight decay; classes from the VTAB-1K folders.
VTAB = {
    "cifar100": (A, 10, 1e-3, 1e-4, 100), "caltech101": (A, 14, 1e-3, 1e-4, 102), "dtd": (A, 12, 1e-3, 1e-3, 47),
    "flowers102": (A, 18, 1e-3, 1e-2, 102), "pets": (A, 18, 1e-3, 1e-3, 37), "svhn": (A, 14, 1e-2, 1e-3, 10),
    "sun397": (A, 10, 1e-3, 1e-2, 397), "camelyon": (A, 8, 5e-3, 1e-2, 2), "eurosat": (A, 8, 5e-3, 1e-2, 10),
    "resisc45": (A, 10, 5e-3, 1e-2, 45), "retinopathy": (B, 2, 5e-4, 1e-4, 5), "clevr_count": (B, 2, 5e-4, 1e-3, 8),
    "clevr_dist": (B, 8, 1e-4, 1e-4, 6), "dmlab": (A, 18, 5e-3, 1e-3, 6), "kitti": (A, 4, 5e-3, 1e-3, 4),
    "dsprites_loc": (A, 10, 5e-3, 1e-4, 16), "dsprites_ori": (A, 10, 5e-3, 1e-2, 16),
    "smallnorb_azi": (A, 22, 1e-2, 1e-2, 18), "smallnorb_ele": (B, 4, 2e-4, 1e-2, 9),
}
# Table 8 (lora_mul+vpt_add ranks, lr; wd 1e-4) and Table 9 (rank, lr, wd).
FEWSHOT = {"aircraft": (14, 5e-3, 100), "food101": (10, 5e-3, 101), "flowers102": (18, 5e-3, 102),
           "pets": (18, 2e-3, 37), "cars": (24, 2e-3, 196)}
FGVC = {"cub": (14, 5e-3, 1e-2, 200), "nabirds": (18, 5e-4, 1e-3, 555), "flowers": (18, 5e-3, 1e-3, 102),
        "dogs": (24, 5e-3, 1e-2, 120), "cars": (14, 2e-4, 1e-3, 196)}
# Table 5's other backbones, by timm name: their base file and leading noise-free blocks (the authors'
# code: one for ViT-B, none for Swin-B). Each runs CIFAR-100 and domain adaptation with the ViT-B/16
# recipe of that task, which the paper gives the settings of.
BACKBONES = {
    "swin-b-in21k": ("swin_base_patch4_window7_224.ms_in22k", "bases/swin_b_in22k.safetensors", 0),
    "vit-b-laion2b-in12k": ("vit_base_patch16_clip_224.laion2b_ft_in12k",
                            "bases/vit_b16_clip_laion2b_in12k.safetensors", 1),
}
BACKBONE_TASKS = {"cifar100": "vtab1k/cifar100.toml", "imagenet": "domain-adaptation/imagenet.toml"}


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_shipped_recipe_reads_fake_data_in_its_layout(path, tmp_path):
    recipe = make_fake_data(load_recipe(path), tmp_path)
    data = recipe.data
    for split in (data.train_split, data.val_split, data.test_split):
        if not split:
            continue
        ds = build_dataset(recipe, split, train=split == data.train_split)
        image, label, _ = ds[0]
        assert image.shape[-2:] == (recipe.data.image_size or 224,) * 2
        assert recipe.model.num_classes is None or max(ds.labels) < recipe.model.num_classes
    for target in recipe.eval.targets:
        assert len(build_target_dataset(recipe, target)) > 0


def test_every_benchmark_has_its_recipes():
    names = set(IDS)
    assert {f"vtab1k/{t}.toml" for t in VTAB} <= names
    assert {f"fewshot/{t}.toml" for t in FEWSHOT} <= names
    assert {f"fgvc/{t}.toml" for t in FGVC} <= names
    assert "domain-adaptation/imagenet.toml" in names
    assert {f"backbones/{b}-{t}.toml" for b in BACKBONES for t in BACKBONE_TASKS} <= names


def _paper_recipes():
    return [(i, load_recipe(p)) for i, p in zip(IDS, RECIPES)
            if i != "quickstart.toml" and not i.startswith(("examples/", "backbones/"))]


def test_paper_recipes_share_one_base_and_the_paper_settings():
    for name, r in _paper_recipes():
        assert r.model.name == "vit_base_patch16_224.augreg_in21k" and r.model.checkpoint == BASE, name
        assert r.data.batch_size == 64 and r.optim.warmup_epochs == 10 and r.model.drop_path_rate == 0.1, name
        assert r.data.image_size == 224 and r.data.mean == [0.485, 0.456, 0.406], name
        assert r.train.epochs == (300 if name.startswith(("vtab1k/", "ablations/")) else 100), name
        assert r.optim.schedule == "epoch" and (r.optim.warmup_start_lr, r.optim.min_lr) == (1e-6, 1e-5), name


def test_paper_recipes_match_tables_7_to_10():
    for name, r in _paper_recipes():
        group, task = name[:-5].split("/")
        got = (r.adapter.kind, r.adapter.rank, r.optim.lr, r.optim.weight_decay, r.model.num_classes)
        if group == "ablations":  # Table 6: CIFAR-100 of VTAB-1K
            assert got == VTAB["cifar100"] and r.data.source == "vtab1k", name
        elif group == "vtab1k":
            assert got == VTAB[task], name
            assert r.data.source == "vtab1k" and r.data.train_split == "train800", name
        elif group == "fewshot":
            rank, lr, classes = FEWSHOT[task]
            assert got == (A, rank, lr, 1e-4, classes) and r.data.source == "fewshot", name
        elif group == "fgvc":
            rank, lr, wd, classes = FGVC[task]
            assert got == (A, rank, lr, wd, classes) and r.data.source == "fgvc", name
        else:
            assert got == (A, 10, 5e-4, 1e-2, 1000) and r.data.fewshot_layout == "imagenet" and r.data.shots == 16
            targets = {t.name: t.restrict_logits for t in r.eval.targets}
            assert targets == {"imagenet-sketch": False, "imagenet-v2": False, "imagenet-a": True, "imagenet-r": True}


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("task", BACKBONE_TASKS)
def test_other_backbones_run_the_vit_b_recipe_of_their_task_with_their_own_base_and_normalisation(backbone, task):
    """Table 5: only the base, its normalisation, the noise-free blocks and the output folder differ."""
    import timm

    name, checkpoint, noise_free = BACKBONES[backbone]
    recipe = load_recipe(ROOT / "recipes" / "backbones" / f"{backbone}-{task}.toml")
    assert (recipe.model.name, recipe.model.checkpoint, recipe.pace.noise_free_blocks) == (name, checkpoint, noise_free)
    cfg = timm.models.get_pretrained_cfg(name)  # the model's own preprocessing, as timm ships its weights
    assert (recipe.data.mean, recipe.data.std) == (list(cfg.mean), list(cfg.std))
    assert recipe.output.dir == f"runs/backbones/{backbone}/{task}"
    got, vit_b = recipe_to_dict(recipe), recipe_to_dict(load_recipe(ROOT / "recipes" / BACKBONE_TASKS[task]))
    for section, key in (("model", "name"), ("model", "checkpoint"), ("data", "mean"), ("data", "std"),
                         ("pace", "noise_free_blocks"), ("output", "dir")):
        got[section].pop(key), vit_b[section].pop(key)
    assert got == vit_b



def test_ablation_recipes_are_the_cifar100_recipe_but_for_the_regulariser():
    cifar = recipe_to_dict(load_recipe(ROOT / "recipes" / "vtab1k" / "cifar100.toml"))
    ablations = sorted((ROOT / "recipes" / "ablations").glob("*.toml"))
    assert len(ablations) >= 14
    for path in ablations:
        got = recipe_to_dict(load_recipe(path))
        assert {k: v for k, v in got.items() if k not in ("pace", "regularizer", "output")} == \
            {k: v for k, v in cifar.items() if k not in ("pace", "regularizer", "output")}, path.name
        assert "Paper top-1:" in path.read_text().splitlines()[1], path.name
