"""A merged file turned back into its model: the timm architecture its metadata names, its classes and
the preprocessing its images take (what `pace predict --weights` and `pace export --format onnx` read).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pace_cli import files
from pace_cli.artifacts.adapter_file import file_role, read_file_metadata
from pace_cli.artifacts.preprocessing import METADATA_KEY, Preprocessing
from pace_cli.errors import PaceError


@dataclass
class MergedModel:
    model: nn.Module  # float32, eval mode
    timm_model: str
    class_names: list[str]
    preprocessing: Preprocessing


def merge_first_line(adapter: Path, base: str = "") -> str:
    return f"`pace merge {base or 'BASE'} {adapter} -o merged.safetensors`"


def load_merged_model(path: str | Path, recipe=None) -> MergedModel:
    """The model of a merged file (float32 whatever the file stores); ``recipe`` gives the architecture
    and preprocessing instead of the metadata (needed for merged files that predate recording it)."""
    path = Path(path)
    if not path.is_file():
        raise PaceError(f"merged file '{path}' not found", remedy="check the path")
    metadata = read_file_metadata(path) if path.suffix.lower() == ".safetensors" else {}
    role = file_role(metadata)
    if role == "adapter":
        raise PaceError(f"'{path}' is an adapter, not a merged model",
                        remedy="merge it into its base first: "
                               f"{merge_first_line(path, str(metadata.get('base_checkpoint') or ''))}")
    model, timm_model = _build(path, metadata, recipe)
    names = [str(n) for n in metadata.get("class_names") or []]
    num_classes = model.get_classifier().out_features
    names = (names + [str(i) for i in range(len(names), num_classes)])[:num_classes]
    return MergedModel(model.float().eval(), timm_model, names, _preprocessing(path, metadata, recipe))


def _build(path: Path, metadata: dict, recipe) -> tuple[nn.Module, str]:
    from pace_cli.models import create_model, load_state_into

    state = files.load_state_dict(path)
    if recipe is not None:
        from pace_cli.builders import build_base_model

        num_classes = int(metadata.get("num_classes") or recipe.model.num_classes or _head_size(state))
        model = build_base_model(recipe, num_classes, load_weights=False)
        name = recipe.model.name
    else:
        if not metadata.get("timm_model"):
            raise PaceError(f"'{path}' does not record its timm architecture",
                            remedy="pass --recipe with the recipe it was trained with")
        name = str(metadata["timm_model"])
        kwargs = dict(metadata.get("timm_kwargs") or {})
        model = create_model(name, num_classes=int(metadata.get("num_classes") or _head_size(state)), **kwargs)
    load_state_into(model, state, source=str(path), allow_new_head=False)
    return model, name


def _head_size(state: dict) -> int:
    for key in ("head.weight", "fc.weight", "classifier.weight", "head.fc.weight"):
        if key in state:
            return int(state[key].shape[0])
    raise PaceError("cannot tell the number of classes of the checkpoint", remedy="set [model] num_classes")


def _preprocessing(path: Path, metadata: dict, recipe) -> Preprocessing:
    if recipe is not None:
        return Preprocessing.from_recipe(recipe)
    if METADATA_KEY not in metadata:
        raise PaceError(f"'{path}' does not record its preprocessing (merged before pace recorded it)",
                        remedy="pass --recipe with the recipe it was trained with")
    return Preprocessing.from_metadata(metadata[METADATA_KEY], str(path))
