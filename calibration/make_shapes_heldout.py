"""Write ``calibration/shapes_heldout.json``: the held-out set of the shapes detector, as seeds.

    .venv/bin/python calibration/make_shapes_heldout.py

The images are regenerated deterministically by ``lepton_edge.runtime.sources.shapes.random_sample`` when the
set is read (``lepton_edge.engines.evaluation.datasets.load_labelled``), so no pixels are committed. Seeds start at
1_000_000, the held-out range of ``models/train_shapes_detector.py``, so they never overlap training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELDOUT_SEED = 1_000_000


def spec(images: int, width: int = 640, height: int = 480) -> dict:
    return {
        "generator": "shapes",
        "width": width,
        "height": height,
        "seeds": [HELDOUT_SEED, HELDOUT_SEED + images],
        "description": "Held-out synthetic shapes scenes (never used for training or calibration); "
        "seeds are a half-open range [start, stop).",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="number of held-out images (default 300)")
    parser.add_argument("--out", type=Path, default=HERE / "shapes_heldout.json")
    args = parser.parse_args()
    args.out.write_text(json.dumps(spec(args.images), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({args.images} images)")


if __name__ == "__main__":
    main()
