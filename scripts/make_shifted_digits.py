"""Write shifted copies of the shipped digits test split as image folders: small real targets for
`pace eval` with `[[eval.targets]]` (see recipes/examples/quickstart-targets.toml).

    python scripts/make_shifted_digits.py [--out data/digits-shifted]

Three shifts of the same 898 test images, each an `imagefolder` root with `test/<class>/<n>.png`:
`inverted` (dark digits on light ground), `noisy` (Gaussian pixel noise) and `upper-half`
(only the classes 5-9, the case `restrict_logits` is for). Deterministic (fixed seed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from pace_cli.data import build_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/digits-shifted"))
    args = parser.parse_args()
    test = build_dataset("digits", "test", image_size=8, channels=1)
    rng = np.random.default_rng(0)
    shifts = {
        "inverted": lambda x: 1.0 - x,
        "noisy": lambda x: np.clip(x + rng.normal(0.0, 0.25, x.shape), 0.0, 1.0),
        "upper-half": lambda x: x,
    }
    for name, shift in shifts.items():
        for i in range(len(test)):
            image, label, _ = test[i]
            if name == "upper-half" and label < 5:
                continue
            pixels = shift(image[0].numpy())
            folder = args.out / name / "test" / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((pixels * 255).round().astype(np.uint8), mode="L").save(folder / f"{i}.png")
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
