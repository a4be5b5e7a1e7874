"""The one door to a model: timm creation plus local or hub weights, with clear errors."""

from __future__ import annotations

import contextlib
import difflib
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from pace_cli.adapters import head_module_name, registered_tensor_names
from pace_cli.errors import PaceError, describe_key_mismatch

BUILTIN_PREFIX = "builtin:"


def builtin_checkpoints() -> list[str]:
    assets = resources.files("pace_cli") / "assets"
    return sorted(p.name[: -len(".safetensors")] for p in assets.iterdir() if p.name.endswith(".safetensors"))


def resolve_checkpoint(checkpoint: str) -> Path:
    """A local path, or ``builtin:<name>`` for a backbone shipped in ``pace_cli/assets``."""
    if checkpoint.startswith(BUILTIN_PREFIX):
        name = checkpoint[len(BUILTIN_PREFIX):]
        path = Path(str(resources.files("pace_cli") / "assets" / f"{name}.safetensors"))
        if not path.is_file():
            raise PaceError(
                f"[model] checkpoint {checkpoint!r}: no such built-in backbone; available: "
                + ", ".join(BUILTIN_PREFIX + n for n in builtin_checkpoints())
            )
        return path
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise PaceError(f"[model] checkpoint file '{checkpoint}' not found; check the path (relative paths are "
                        "taken from the current directory)")
    return path


# The hub probe: one TCP connection with this bound, name lookup included. Without it, a machine
# without a network spends about a minute in huggingface_hub's retries before failing.
HUB_PROBE_TIMEOUT_S = 2.0
_TRUE = ("1", "true", "yes", "on")


def offline_variable() -> str | None:
    """The environment variable that puts the Hugging Face hub offline, if one is set."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return name
    return None


def hub_address() -> tuple[str, int]:
    """Where a hub download would connect first: the HTTPS proxy if one is set, else the hub endpoint."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy if proxy else os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return target.hostname or "huggingface.co", target.port or (443 if target.scheme == "https" else 80)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub (or the proxy) opens within ``timeout`` seconds.

    The name lookup cannot be given a timeout, so the probe runs in a daemon thread and is
    abandoned, unfinished, when the time is up.
    """
    host, port = hub_address()
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, name="pace-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


@contextlib.contextmanager
def _hub_offline():
    """Run timm's download with huggingface_hub in offline mode: the cache or an immediate failure."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _create_pretrained(name: str, **kwargs: Any) -> nn.Module:
    """timm's hub download, failing at once (not after a minute of retries) when the hub is out of reach.

    Offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``, or a probe that cannot connect within
    HUB_PROBE_TIMEOUT_S) the weights come from the local cache or not at all.
    """
    import timm

    variable = offline_variable()
    if variable is None and hub_reachable():
        return timm.create_model(name, pretrained=True, **kwargs)
    why = f"{variable} is set" if variable else "the Hugging Face hub ({}:{}) cannot be reached".format(*hub_address())
    try:
        with _hub_offline():
            return timm.create_model(name, pretrained=True, **kwargs)
    except OSError as error:  # the hub's "not in the cache" / "offline" errors and urllib's are all OSErrors
        raise PaceError(
            f"[model] pretrained = true but {why}, and the weights of {name!r} are not in the local cache "
            f"({type(error).__name__}); set [model] checkpoint to a local weights file instead (`pace export-base` "
            "writes one on a machine with a network), or fill the hub cache first"
        ) from error


def create_model(name: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with its failures turned into one-line errors naming the key."""
    import timm

    if not timm.is_model(name):
        # compare with name-length prefixes so 'vit_tinyy' finds 'vit_tiny_patch16_224'
        by_prefix: dict[str, list[str]] = {}
        for candidate in timm.list_models():
            by_prefix.setdefault(candidate[: len(name)], []).append(candidate)
        close = [m for p in difflib.get_close_matches(name, list(by_prefix), n=2, cutoff=0.75) for m in by_prefix[p]][:4]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise PaceError(f"[model] name {name!r} is not a timm model{hint}; see `timm.list_models()`")
    try:
        if pretrained:
            return _create_pretrained(name, **kwargs)
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as error:
        raise PaceError(f"[model] timm rejected the model arguments {sorted(kwargs)} for {name!r}: {error}") from error
    except (RuntimeError, OSError, ValueError, AssertionError) as error:
        if pretrained:
            raise PaceError(
                f"could not fetch pre-trained weights for {name!r} ({type(error).__name__}: {error}); "
                "offline machines need [model] checkpoint = a local file instead of pretrained = true"
            ) from error
        raise PaceError(f"[model] could not build {name!r} with {kwargs}: {error}") from error


def head_keys(model: nn.Module) -> set[str]:
    head = head_module_name(model)
    return {f"{head}.{name}" for name in model.get_submodule(head).state_dict()}


def load_base_weights(model: nn.Module, checkpoint: str | Path, *, allow_new_head: bool = True) -> list[str]:
    """Load a local checkpoint into a timm model; returns the head keys left at their fresh values.

    ``.safetensors``, ``.pth``, ``.pt`` and ``.bin`` hold timm state dicts (pickles are read with
    ``weights_only=True``: a checkpoint from a stranger must never run code). ``.npz`` files
    (Google's ViT releases) go through the model's own npz loader. With ``allow_new_head`` a
    head whose shape differs from the model's (another number of classes) is skipped; every
    other mismatch is an error.
    """
    from pace_cli import files

    path = resolve_checkpoint(str(checkpoint)) if isinstance(checkpoint, str) else Path(checkpoint)
    if path.suffix.lower() == ".npz":
        if not hasattr(model, "load_pretrained"):
            raise PaceError(f"{path}: .npz checkpoints are supported for timm ViT models only")
        try:
            model.load_pretrained(str(path))
        except Exception as error:  # noqa: BLE001 - numpy/timm raise many kinds; the user needs one line
            raise PaceError(f"could not load npz checkpoint {path}: {type(error).__name__}: {error}") from error
        return []
    state = files.load_state_dict(path)
    return load_state_into(model, state, source=str(path), allow_new_head=allow_new_head)


def load_state_into(model: nn.Module, state: Mapping[str, Tensor], *, source: str,
                    allow_new_head: bool = True) -> list[str]:
    own = model.state_dict()
    heads = head_keys(model)
    skipped = []
    filtered = {}
    for key, tensor in state.items():
        if key in heads and key in own and tuple(tensor.shape) != tuple(own[key].shape) and allow_new_head:
            skipped.append(key)
            continue
        if key in own and tuple(tensor.shape) != tuple(own[key].shape):
            raise PaceError(
                f"{source}: tensor {key} has shape {list(tensor.shape)} but the model expects "
                f"{list(own[key].shape)}; do [model] name and its arguments match the checkpoint?"
            )
        filtered[key] = tensor
    expected = set(own) - (heads - set(filtered) if allow_new_head else set())
    mismatch = describe_key_mismatch(expected, filtered, missing_what="model tensors missing from the file",
                                     unknown_what="file tensors unknown to the model")
    if mismatch:
        raise PaceError(f"{source} does not fit the model: {mismatch}; "
                        "do [model] name and its arguments match the checkpoint?")
    model.load_state_dict(filtered, strict=False)
    return skipped + sorted(heads - set(filtered))


def base_state_items(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """The frozen base tensors in sorted order, without the head and adapter tensors (for fingerprints)."""
    heads = head_keys(model)
    adapter_names = registered_tensor_names()
    state = model.state_dict()
    for key in sorted(state):
        if key in heads or key.rpartition(".")[2] in adapter_names:
            continue
        yield key, state[key]


FINGERPRINT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def base_fingerprints(model: nn.Module) -> dict[str, str]:
    """Fingerprints of the base weights as stored in float32, bfloat16 and float16.

    A half-precision copy of the base is the same base for merging purposes; storing the
    fingerprint of each rounding lets `merge` recognise it without trusting a cast of its own.
    """
    from pace_cli import files

    return {name: files.fingerprint((key, tensor.to(dtype)) for key, tensor in base_state_items(model))
            for name, dtype in FINGERPRINT_DTYPES.items()}
