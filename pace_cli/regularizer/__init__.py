"""The PACE regulariser: noise schedule over depth, shared drop masks, the loss variants, the ablations' penalties.

The face of the package: the names other packages use, each loaded from its submodule on first
access (see :mod:`pace_cli.lazy`).
"""

from pace_cli.lazy import lazy_face

_EXPORTS = {
    "LossParts": "losses",
    "PaceConfig": "losses",
    "PaceRegularizer": "losses",
    "VARIANTS": "losses",
    "fp_distance": "losses",
    "mean_pair_distance_sum": "losses",
    "pretrained_logits": "losses",
    "Float32Forward": "masks",
    "PairState": "masks",
    "SharedDropPath": "masks",
    "SharedDropout": "masks",
    "float32_forward": "masks",
    "share_random_masks": "masks",
    "block_of": "schedule",
    "depth_groups": "schedule",
    "sigma_schedule": "schedule",
    "GP_RADIUS": "sharpness",
    "second_pass": "sharpness",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
