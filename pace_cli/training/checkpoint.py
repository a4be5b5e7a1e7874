"""Training checkpoints: everything needed to continue a run exactly where it stopped.

Stored as safetensors (tensors) plus JSON metadata (counters, recipe): nothing is pickled, so a
checkpoint from elsewhere cannot run code when loaded.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pace_cli import files
from pace_cli.errors import PaceError, one_line
from pace_cli.recipe import Recipe, recipe_to_dict

# Keys that may change between an interrupted run and its resumption without changing what it
# computes up to the interruption point.
HARMLESS_KEYS = {
    ("train", "epochs"), ("train", "eval_every"), ("train", "log_every"), ("train", "checkpoint_every"),
    ("train", "device"), ("data", "num_workers"), ("data", "eval_batch_size"), ("output", "dir"),
    ("data", "cache"), ("train", "compile"),
    ("train", "val_grad_norm"),  # a measurement that restores every generator it could touch
    ("eval", "targets"),  # scored by `pace eval` only; training never reads them
    ("train", "accumulate"),  # the same steps, summed in another order (like another process count)
    *(("log", key) for key in ("trackers", "project", "run_name", "group", "dir")),  # where records also go
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
        "format": "pace-checkpoint", "format_version": files.FORMAT_VERSION,
        "position": json.dumps(position.__dict__), "epoch_sums": json.dumps(epoch_sums),
        "param_groups": json.dumps(optim_state["param_groups"]), "recipe": json.dumps(recipe_to_dict(recipe)),
        "extra": json.dumps(extra or {}),
    }
    files.save_tensors(path, tensors, metadata)


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
        # torch accepts a partial state silently (a parameter would restart its moments): refuse it
        indices = [i for group in self.param_groups for i in group["params"]]
        slots = {frozenset(s) for s in state.values()}
        if state and (len(slots) != 1 or set(state) != set(indices)):
            lacking = sorted(set(indices) - set(state)) or [i for i, s in state.items() if set(s) != set.union(*map(set, slots))]
            raise ValueError(f"optimizer state of parameter {lacking[0] if lacking else '?'} is missing or incomplete")
        optimizer.load_state_dict({"state": state, "param_groups": self.param_groups})

    def restore_global_rng(self) -> None:
        torch.set_rng_state(self.tensors["rng.torch"])
        cuda = sorted(k for k in self.tensors if k.startswith("rng.cuda."))
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([self.tensors[k] for k in cuda])


def damaged(path: Path, reason: str) -> PaceError:
    """The one message for a checkpoint that cannot be resumed: which file, what is wrong, what to do."""
    return PaceError(f"training checkpoint '{path}' is damaged ({reason}), so the run cannot be resumed",
                     remedy="start over with --overwrite instead of --resume (or put back a good copy of the file)")


_REQUIRED_TENSORS = ("rng.torch", "rng.loader_epoch_start")


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint, checking everything resuming needs; any damage is one :func:`damaged` error."""
    try:
        metadata = files.read_metadata(path)
    except PaceError as error:
        raise damaged(path, _reason(error)) from None
    if metadata.get("format") != "pace-checkpoint":
        found = metadata.get("format")
        raise damaged(path, f"format is {found!r}, not 'pace-checkpoint'" if found else "no pace checkpoint metadata")
    if metadata.get("format_version") != files.FORMAT_VERSION:
        raise PaceError(f"training checkpoint '{path}' has format version {metadata.get('format_version')!r}; this "
                        f"pace resumes version {files.FORMAT_VERSION}: finish it with the pace that wrote it, or start "
                        "over with --overwrite")
    try:
        position = Position(**_json(metadata, "position", dict))
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in position.__dict__.values()):
            raise ValueError("position holds a negative or non-integer counter")
        epoch_sums = _json(metadata, "epoch_sums", dict)
        if not all(isinstance(v, (int, float)) for v in epoch_sums.values()):
            raise ValueError("epoch_sums holds a non-number")
        param_groups = _json(metadata, "param_groups", list)
        if not param_groups or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in param_groups):
            raise ValueError("param_groups is not a list of optimizer groups")
        recipe = _json(metadata, "recipe", dict)
        extra = json.loads(metadata.get("extra", "{}"))
    except (KeyError, TypeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise damaged(path, f"bad metadata: {error}") from None
    try:
        tensors = files.load_tensors(path)
    except PaceError as error:
        raise damaged(path, _reason(error)) from None
    missing = [name for name in _REQUIRED_TENSORS if name not in tensors]
    if missing or not any(name.startswith("model.") for name in tensors):
        raise damaged(path, f"tensor {missing[0] if missing else 'model.*'} is missing")
    for name in _REQUIRED_TENSORS:
        if tensors[name].dtype != torch.uint8 or tensors[name].dim() != 1:
            raise damaged(path, f"tensor {name} is not a random-generator state")
    return Checkpoint(tensors, position, epoch_sums, param_groups, recipe, extra)


def _json(metadata: dict[str, str], key: str, kind: type) -> Any:
    value = json.loads(metadata[key])
    if not isinstance(value, kind):
        raise TypeError(f"{key} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def _reason(error: PaceError) -> str:
    """What the tensor-file layer found wrong, without its file name and its advice (re-download),
    which :func:`damaged` gives in the checkpoint's own terms."""
    return one_line(error.what)


@contextmanager
def restoring(path: Path):
    """Turn a failure while putting a loaded checkpoint's state back into the model into a :func:`damaged` error."""
    try:
        yield
    except PaceError as error:
        raise damaged(path, _without_advice(error)) from None
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as error:
        raise damaged(path, one_line(error)[:160]) from None


def _without_advice(error: PaceError) -> str:
    """The error's where and what; its advice fits the file it was written for, not a checkpoint."""
    return error.with_parts(remedy=None).one_line()


def recipe_differences(saved: dict[str, Any], current: Recipe) -> list[str]:
    """The keys whose change would make a resumed run compute something else."""
    now = recipe_to_dict(current)
    differences = []
    for section in sorted(set(saved) | set(now)):
        old, new = _with_defaults(saved.get(section, {}), getattr(current, section, None)), now.get(section, {})
        for key in sorted(set(old) | set(new)):
            if (section, key) in HARMLESS_KEYS or old.get(key) == new.get(key):
                continue
            differences.append(f"[{section}] {key}: {old.get(key)!r} -> {new.get(key)!r}")
    return differences


def _with_defaults(saved_section: dict[str, Any], current_section) -> dict[str, Any]:
    """A saved section with the keys added since it was written, at their defaults: a checkpoint
    from an older pace resumes when the recipe leaves the new keys alone."""
    if current_section is None:
        return saved_section
    filled = dict(saved_section)
    for name, field in type(current_section).model_fields.items():
        key = field.alias or name
        if key not in filled and not field.is_required():
            filled[key] = _json_value(field.get_default(call_default_factory=True))
    return filled


def _json_value(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value
