"""Write ``calibration/digits.npy``: calibration images for the digits classifier.

    .venv/bin/python calibration/make_digits_calibration.py

The images are 200 uint8 8x8 digits drawn (seed 0) from the TRAINING split of scikit-learn's digits,
made by the same split as ``models/train_digits_classifier.py`` (which never stores that split), so they
never overlap the held-out images in ``models/digits_heldout.npz``. Needs scikit-learn (the data set
ships inside it; nothing is downloaded).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "models"))

from train_digits_classifier import load_split  # noqa: E402  (the one definition of the split)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200, help="number of images (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice (default 0)")
    parser.add_argument("--out", type=Path, default=HERE / "digits.npy")
    args = parser.parse_args()
    x_train, _y_train, _x_test, _y_test = load_split()
    chosen = np.sort(np.random.default_rng(args.seed).choice(len(x_train), size=args.samples, replace=False))
    images = np.ascontiguousarray(x_train[chosen], dtype=np.uint8)
    np.save(args.out, images, allow_pickle=False)
    print(f"wrote {args.out}: {images.shape} {images.dtype} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
