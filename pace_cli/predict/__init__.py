"""`pace predict`: a trained model (merged file, adapter, or exported ONNX file) run over unlabelled images.

The face of the package: the names other packages use, each loaded from its submodule on first
access (see :mod:`pace_cli.lazy`).
"""

from pace_cli.lazy import lazy_face

_EXPORTS = {
    "OUTPUT_FORMATS": "output",
    "format_for": "output",
    "render_predictions": "output",
    "write_predictions": "output",
    "ImageModel": "run",
    "PredictReport": "run",
    "PredictionRow": "run",
    "load_image_model": "run",
    "predict_images": "run",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
