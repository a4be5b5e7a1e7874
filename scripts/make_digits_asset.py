"""Write pace_cli/assets/digits.npz from scikit-learn's 8x8 digits.

The CLI ships the array instead of importing scikit-learn at run time.
Run from the repository root: ``python scripts/make_digits_asset.py``.
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def main() -> None:
    bunch = load_digits()
    # Pixel values are integers 0..16 stored as float64; uint8 is lossless and 8x smaller.
    images = bunch.images.astype(np.uint8)
    labels = bunch.target.astype(np.uint8)
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    assert np.array_equal(images, bunch.images) and images.max() <= 16
    out = Path(__file__).resolve().parents[1] / "pace_cli" / "assets" / "digits.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images, labels=labels)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
