"""Run by test_augment_training under torchrun: dump this rank's mixed training batches, then train jobs.

argv[1]: JSON {"recipe": TOML text, "out": dir, "jobs": [distributed_jobs.py's jobs]}. The dump is
``out/batches-rank<r>.pt``: every step's (images, targets, indices) of this rank's share, after
[augment]'s per-sample transform and the batch mix, exactly as the training loop feeds them.
"""

import json
import sys
from pathlib import Path

import torch

from pace_cli import distributed
from pace_cli.builders import build_dataset
from pace_cli.data import batch_mix, make_loader
from pace_cli.recipe import parse_recipe
from pace_cli.training import train


def mixed_batches(recipe_text: str, epochs: int = 2, num_workers: int = 0) -> list[tuple[torch.Tensor, ...]]:
    world = distributed.init_from_environment("cpu")
    recipe = parse_recipe(recipe_text)
    dataset = build_dataset(recipe, recipe.data.train_split, train=True)
    loader = make_loader(dataset, recipe.data.batch_size, shuffle=True, seed=recipe.train.seed, drop_last=True,
                         num_workers=num_workers, world=world)
    mix = batch_mix(recipe.augment.batch_mix_options(), num_classes=len(dataset.classes), seed=recipe.train.seed,
                    global_batch=recipe.data.batch_size)
    out, step = [], 0
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for images, labels, indices in loader:
            images, targets = mix(images, labels, step)
            out.append((images.clone(), targets, indices))
            step += 1
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    world = distributed.init_from_environment("cpu")
    torch.save(mixed_batches(spec["recipe"]), Path(spec["out"]) / f"batches-rank{world.rank}.pt")
    for job in spec["jobs"]:
        train(parse_recipe(job["recipe"], job.get("overrides", [])), output_dir=job["out"], overwrite=True)


if __name__ == "__main__":
    main()
