"""The model behind `pace predict` and the run over the images: top-k classes and probabilities per file.

Three kinds of file give an :class:`ImageModel`: a merged file (architecture, classes and
preprocessing from its metadata), an adapter (onto the base its recorded recipe names, folded in
memory exactly as `pace eval` does) and an ONNX file `pace export` wrote (run by onnxruntime).
Every image goes through :func:`pace_cli.data.image_file_dataset`, the reader of `imagefolder`
evaluation splits, so a file gets the same prediction here as in `pace eval`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch

from pace_cli.artifacts import Preprocessing, load_merged_model, load_onnx_model, read_adapter
from pace_cli.data import PredictImages, eval_transform, image_file_dataset, make_loader
from pace_cli.errors import PaceError


class ImageModel(Protocol):
    class_names: list[str]
    preprocessing: Preprocessing

    def logits(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TorchModel:
    model: torch.nn.Module
    device: torch.device
    class_names: list[str]
    preprocessing: Preprocessing

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device, non_blocking=True)).float().cpu()


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise PaceError(f"--device {choice!r} is not a device", remedy="use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PaceError(f"--device {choice} but no CUDA device is available", remedy="use --device cpu or auto")
    return device


def load_image_model(*, weights: Path | None = None, adapter: Path | None = None, onnx: Path | None = None,
                     recipe=None, device: str = "auto", threads: int | None = None) -> ImageModel:
    """The model of exactly one of ``weights``, ``adapter``, ``onnx``; ``recipe`` overrides what the file records.

    ``threads`` caps onnxruntime's pool (PyTorch's is the process's ``torch.get_num_threads()``)."""
    given = [name for name, value in (("--weights", weights), ("--adapter", adapter), ("--onnx", onnx))
             if value is not None]
    if len(given) != 1:
        raise PaceError("give exactly one model: --weights MERGED, --adapter ADAPTER or --onnx MODEL"
                        + (f" (got {', '.join(given)})" if given else ""))
    if onnx is not None:
        if device not in ("auto", "cpu"):
            raise PaceError(f"--device {device} with --onnx: pace runs ONNX files on onnxruntime's CPU provider",
                            remedy="drop --device")
        return load_onnx_model(onnx, recipe, threads)
    target = resolve_device(device)
    if weights is not None:
        merged = load_merged_model(weights, recipe)
        return TorchModel(merged.model.to(target), target, merged.class_names, merged.preprocessing)
    return _adapter_model(adapter, recipe, target)


def _adapter_model(adapter: Path, recipe, device: torch.device) -> TorchModel:
    from pace_cli.evaluation import build_eval_model
    from pace_cli.recipe import parse_recipe

    if not Path(adapter).is_file():
        raise PaceError(f"adapter file '{adapter}' not found", remedy="check the path")
    if recipe is None:
        recorded = read_adapter(adapter).metadata.recipe
        if not recorded:
            raise PaceError(f"'{adapter}' records no recipe", remedy="pass --recipe with the one it was trained with")
        recipe = parse_recipe(recorded, source=f"the recipe recorded in {adapter}")
    model, names = build_eval_model(recipe, adapter=Path(adapter))
    width = model.get_classifier().out_features
    names = (list(names) + [str(i) for i in range(len(names), width)])[:width]
    return TorchModel(model.float().eval().to(device), device, names, Preprocessing.from_recipe(recipe))


@dataclass
class PredictionRow:
    path: str
    classes: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str = ""  # the one-line reason an unreadable file has no prediction


@dataclass
class PredictReport:
    rows: list[PredictionRow]
    topk: int
    seconds: float

    @property
    def failed(self) -> int:
        return sum(1 for row in self.rows if row.error)

    @property
    def images_per_second(self) -> float:
        done = len(self.rows) - self.failed
        return done / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        line = f"{len(self.rows) - self.failed} of {len(self.rows)} images predicted"
        if self.failed:
            line += f", {self.failed} unreadable (rows with their reason)"
        return line + f" in {self.seconds:.2f}s ({self.images_per_second:.1f} images/s)"


def predict_images(model: ImageModel, paths: Sequence[Path], *, topk: int = 5, batch_size: int = 32,
                   num_workers: int = 0, strict: bool = False,
                   on_batch: Callable[[int], None] | None = None) -> PredictReport:
    """Top-``topk`` classes of each image in order; an unreadable file is a row with its reason (an error with ``strict``)."""
    if topk <= 0:
        raise PaceError(f"--topk {topk} must be a positive number of classes")
    pre = model.preprocessing
    transform = eval_transform(pre.image_size, pre.channels, pre.mean, pre.std)
    paths = [Path(p) for p in paths]
    dataset = PredictImages(image_file_dataset(paths, Path("."), transform, resize=pre.resize, source="predict"))
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers)
    k = min(topk, len(model.class_names))
    rows = [PredictionRow(str(p)) for p in paths]
    start = time.perf_counter()
    for images, readable, positions, reasons in loader:
        for position, ok, reason in zip(positions.tolist(), readable.tolist(), reasons):
            if not ok:
                if strict:
                    raise PaceError(reason, where=f"cannot read image {paths[position]}",
                                    remedy="replace or delete the file, or drop --strict to report it as a row")
                rows[position].error = reason
        if readable.any():
            probs = model.logits(images[readable]).double().softmax(dim=1)
            top = probs.topk(k, dim=1)
            for position, values, indices in zip(positions[readable].tolist(), top.values.tolist(),
                                                 top.indices.tolist()):
                rows[position].classes = [model.class_names[i] for i in indices]
                rows[position].probabilities = values
        if on_batch is not None:
            on_batch(len(positions))
    return PredictReport(rows, k, time.perf_counter() - start)
