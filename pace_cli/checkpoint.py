"""Training checkpoints: everything needed to continue a run exactly where it stopped.

Stored as safetensors (tensors) plus JSON metadata (counters, recipe): nothing is pickled, so a
checkpoint from elsewhere cannot run code when loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pace_cli import io
from pace_cli.errors import PaceError
from pace_cli.recipe import Recipe, recipe_to_dict

CHECKPOINT_FILE = "checkpoint.safetensors"

# Keys that may change between an interrupted run and its resumption without changing what it
# computes up to the interruption point.
HARMLESS_KEYS = {
    ("train", "epochs"), ("train", "eval_every"), ("train", "log_every"), ("train", "checkpoint_every"),
    ("train", "device"), ("data", "num_workers"), ("data", "eval_batch_size"), ("output", "dir"),
    ("data", "cache"), ("train", "compile"),
    ("eval", "targets"),  # scored by `pace eval` only; training never reads them
}


@dataclass
class Position:
    """Where a run is: the next step to take, its epoch and how many batches of it are done."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0


def save_checkpoint(path: Path, *, model_state: dict[str, Tensor], optimizer: torch.optim.Optimizer,
                    pace_state: dict[str, Tensor], loader_generator_at_epoch_start: Tensor,
                    position: Position, epoch_sums: dict[str, float], recipe: Recipe,
                    extra: dict[str, Any] | None = None) -> None:
    tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in model_state.items()}
    optim_state = optimizer.state_dict()
    for index, slots in optim_state["state"].items():
        for slot, value in slots.items():
            tensors[f"optim.{index}.{slot}"] = value if torch.is_tensor(value) else torch.tensor(value)
    for key, value in pace_state.items():
        tensors[f"pace.{key}"] = value.to(torch.uint8) if value.dtype == torch.bool else value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.loader_epoch_start"] = loader_generator_at_epoch_start
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = cuda_state
    metadata = {
        "format": "pace-checkpoint", "format_version": io.FORMAT_VERSION,
        "position": json.dumps(position.__dict__), "epoch_sums": json.dumps(epoch_sums),
        "param_groups": json.dumps(optim_state["param_groups"]), "recipe": json.dumps(recipe_to_dict(recipe)),
        "extra": json.dumps(extra or {}),
    }
    io.save_tensors(path, tensors, metadata)


@dataclass
class Checkpoint:
    tensors: dict[str, Tensor]
    position: Position
    epoch_sums: dict[str, float]
    param_groups: list[dict]
    recipe: dict[str, Any]
    extra: dict[str, Any]

    def model_state(self) -> dict[str, Tensor]:
        return {k[len("model."):]: v for k, v in self.tensors.items() if k.startswith("model.")}

    def pace_state(self) -> dict[str, Tensor]:
        state = {k[len("pace."):]: v for k, v in self.tensors.items() if k.startswith("pace.")}
        if "fast_seen" in state:
            state["fast_seen"] = state["fast_seen"].bool()
        return state

    def restore_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in self.tensors.items():
            if key.startswith("optim."):
                _, index, slot = key.split(".", 2)
                state.setdefault(int(index), {})[slot] = value
        optimizer.load_state_dict({"state": state, "param_groups": self.param_groups})

    def restore_global_rng(self) -> None:
        torch.set_rng_state(self.tensors["rng.torch"])
        cuda = sorted(k for k in self.tensors if k.startswith("rng.cuda."))
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([self.tensors[k] for k in cuda])


def load_checkpoint(path: Path) -> Checkpoint:
    metadata = io.read_metadata(path)
    if metadata.get("format") != "pace-checkpoint":
        raise PaceError(f"'{path}' is not a pace training checkpoint")
    try:
        position = Position(**json.loads(metadata["position"]))
        return Checkpoint(io.load_tensors(path), position, json.loads(metadata["epoch_sums"]),
                          json.loads(metadata["param_groups"]), json.loads(metadata["recipe"]),
                          json.loads(metadata.get("extra", "{}")))
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise PaceError(f"training checkpoint '{path}' is damaged ({error}); delete it to start over") from None


def recipe_differences(saved: dict[str, Any], current: Recipe) -> list[str]:
    """The keys whose change would make a resumed run compute something else."""
    now = recipe_to_dict(current)
    differences = []
    for section in sorted(set(saved) | set(now)):
        old, new = saved.get(section, {}), now.get(section, {})
        for key in sorted(set(old) | set(new)):
            if (section, key) in HARMLESS_KEYS or old.get(key) == new.get(key):
                continue
            differences.append(f"[{section}] {key}: {old.get(key)!r} -> {new.get(key)!r}")
    return differences
