"""`pace export --format onnx`: a merged model as one self-contained fp32 ONNX file, checked with
onnxruntime before it is put in place; and that file read back (`pace predict --onnx`).

The exporter is torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``): the dynamo
exporter needs ``onnxscript``, which the ``onnx`` extra would then have to pull in for no gain on
these models. The preprocessing and class names go into the file's ``metadata_props``:

    pace.preprocessing   JSON, as in a merged file (:mod:`pace_cli.artifacts.preprocessing`)
    pace.class_names     JSON list, one name per output
    pace.timm_model, pace.created_by, pace.source
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pace_cli import __version__, files
from pace_cli.artifacts.merged_file import load_merged_model
from pace_cli.artifacts.preprocessing import Preprocessing
from pace_cli.errors import PaceError

ONNX_INSTALL = "pip install 'pace-cli[onnx]'"
INPUT_NAME, OUTPUT_NAME = "image", "logits"
PROP_PREPROCESSING, PROP_CLASS_NAMES = "pace.preprocessing", "pace.class_names"
DEFAULT_OPSET = 17
RELATIVE_TOLERANCE = 1e-4  # of the largest |logit|: the export is refused above it


def require_onnx(what: str = "ONNX export"):
    """``(onnx, onnxruntime)``, or the one line that names the pip install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise PaceError(f"{what} needs the onnx and onnxruntime packages ({error.name} is not installed)",
                        remedy=f"install them with {ONNX_INSTALL}") from None
    return onnx, onnxruntime


@dataclass
class OnnxCheck:
    batch: int
    max_logit_diff: float
    max_prob_diff: float
    logit_scale: float  # the largest |logit| of PyTorch's output

    @property
    def relative(self) -> float:
        return self.max_logit_diff / max(self.logit_scale, 1e-12)


@dataclass
class OnnxExportReport:
    output: Path
    opset: int
    dynamic_batch: bool
    export_batch: int
    check: OnnxCheck
    output_bytes: int
    timm_model: str
    num_classes: int


def export_onnx(merged_path: str | Path, output: str | Path, *, recipe=None, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, overwrite: bool = False) -> OnnxExportReport:
    """Export a merged file; the written file's outputs match PyTorch's within :data:`RELATIVE_TOLERANCE`.

    A dynamic-batch file is exported at batch 2 and checked at batch 3, so the check also shows the
    batch axis really is free; a fixed-batch file takes (and is checked at) batch 1.
    """
    onnx, _ = require_onnx()
    output = Path(output)
    merged = load_merged_model(merged_path, recipe)  # first: an adapter is refused with the merge line
    files.check_can_write(output, overwrite)
    pre = merged.preprocessing
    export_batch, check_batch = (2, 3) if dynamic_batch else (1, 1)
    generator = torch.Generator().manual_seed(0)
    shape = (pre.channels, pre.image_size, pre.image_size)
    example = torch.randn(export_batch, *shape, generator=generator)
    probe = torch.randn(check_batch, *shape, generator=generator)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    props = {"pace.created_by": f"pace {__version__}", "pace.source": Path(merged_path).name,
             "pace.timm_model": merged.timm_model, PROP_PREPROCESSING: pre.to_json(),
             PROP_CLASS_NAMES: json.dumps(merged.class_names)}
    try:
        with files.atomic_path(output) as tmp:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer and deprecation notes about code paths not taken
                torch.onnx.export(merged.model, (example,), str(tmp), dynamo=False, opset_version=int(opset),
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                                  external_data=False, do_constant_folding=True)
            graph = onnx.load(str(tmp))
            for key, value in props.items():
                entry = graph.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.save(graph, str(tmp), save_as_external_data=False)
            check = compare_with_torch(tmp, merged.model, probe)
            if check.relative > RELATIVE_TOLERANCE:  # raised inside: the temporary file is removed
                raise PaceError(f"onnxruntime's logits differ from PyTorch's by {check.max_logit_diff:.3g} "
                                f"({check.relative:.2g} of the logits' scale {check.logit_scale:.3g}, above "
                                f"{RELATIVE_TOLERANCE:g})", where=f"ONNX export of '{merged_path}'",
                                remedy="try another --opset; nothing was written")
    except OSError as error:
        raise files.write_error(output, error) from None
    return OnnxExportReport(output, int(opset), dynamic_batch, export_batch, check, output.stat().st_size,
                            merged.timm_model, len(merged.class_names))


def compare_with_torch(onnx_path: Path, model: torch.nn.Module, images: torch.Tensor) -> OnnxCheck:
    """Max differences of logits and softmax probabilities between onnxruntime and PyTorch on ``images``."""
    session = open_session(onnx_path)
    with torch.no_grad():
        expected = model(images).double()
    got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]).double()
    return OnnxCheck(batch=len(images), max_logit_diff=float((got - expected).abs().max()),
                     max_prob_diff=float((got.softmax(1) - expected.softmax(1)).abs().max()),
                     logit_scale=float(expected.abs().max()))


def open_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session; ``threads`` caps its intra-op pool (default: onnxruntime's, one per core)."""
    _, ort = require_onnx("running an ONNX file")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3  # errors only
    # Idle pool threads would otherwise spin between batches, taking the cores the image decoding needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own untyped errors for a bad file
        raise PaceError(f"onnxruntime cannot load '{path}': {str(error).splitlines()[0] if str(error) else error}",
                        remedy="pass an .onnx file written by `pace export --format onnx`") from None


@dataclass
class OnnxModel:
    """An exported file ready to run: its session, fixed batch size (None when dynamic), classes, preprocessing."""

    session: object
    batch: int | None
    class_names: list[str]
    preprocessing: Preprocessing

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``images`` (any count: a fixed-batch file is fed in chunks, the last padded)."""
        array = images.float().numpy()
        if self.batch is None:
            return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])
        out = []
        for start in range(0, len(array), self.batch):
            chunk = array[start:start + self.batch]
            padded = np.concatenate([chunk, np.zeros((self.batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            out.append(self.session.run([OUTPUT_NAME], {INPUT_NAME: padded})[0][:len(chunk)])
        return torch.from_numpy(np.concatenate(out))


def load_onnx_model(path: str | Path, recipe=None, threads: int | None = None) -> OnnxModel:
    """An ONNX file pace exported; ``recipe`` overrides the preprocessing it records."""
    path = Path(path)
    if not path.is_file():
        raise PaceError(f"ONNX file '{path}' not found", remedy="check the path")
    session = open_session(path, threads)
    props = session.get_modelmeta().custom_metadata_map
    if recipe is not None:
        pre = Preprocessing.from_recipe(recipe)
    elif PROP_PREPROCESSING in props:
        pre = Preprocessing.from_metadata(props[PROP_PREPROCESSING], str(path))
    else:
        raise PaceError(f"'{path}' does not record its preprocessing ({PROP_PREPROCESSING})",
                        remedy="pass --recipe with the recipe it was trained with")
    inputs = session.get_inputs()
    dim = inputs[0].shape[0] if inputs and inputs[0].shape else None
    outputs = session.get_outputs()[0].shape
    width = outputs[-1] if outputs and isinstance(outputs[-1], int) else 0
    try:
        names = [str(n) for n in json.loads(props.get(PROP_CLASS_NAMES, "[]"))]
    except json.JSONDecodeError:
        names = []
    names = (names + [str(i) for i in range(len(names), width)])[:width] if width else names
    return OnnxModel(session, dim if isinstance(dim, int) else None, names, pre)
