"""Write ``calibration/shapes/``: calibration images for the shapes detector, and their manifest.

    .venv/bin/python calibration/make_shapes_calibration.py

64 JPEG images (640x480, quality 90) rendered by ``lepton_edge.runtime.sources.shapes.random_sample`` with
seeds 2_000_000 + i: disjoint from the training seeds (0 ..) and the held-out seeds (1_000_000 ..) of
``models/train_shapes_detector.py``. ``manifest.json`` holds the data set's manifest (file names, sizes,
sha256; as ``lepton_edge.engines.calibration.dataset_manifest`` computes it) and how the images were made.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2

from lepton_edge.engines.calibration import dataset_manifest
from lepton_edge.runtime.sources.shapes import random_sample

HERE = Path(__file__).resolve().parent
CALIBRATION_SEED = 2_000_000
SIZE = (640, 480)
JPEG_QUALITY = 90
MAX_BYTES = 4 * 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="number of images (default 64)")
    parser.add_argument("--out", type=Path, default=HERE / "shapes", help="folder to write (default: shapes/)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("shapes_*.jpg"):
        old.unlink()
    seeds = range(CALIBRATION_SEED, CALIBRATION_SEED + args.images)
    for seed in seeds:
        image, _boxes, _classes = random_sample(seed, *SIZE)
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise SystemExit(f"OpenCV could not encode image {seed} as JPEG")
        (args.out / f"shapes_{seed}.jpg").write_bytes(encoded.tobytes())
    manifest = dataset_manifest(args.out)
    manifest["generator"] = {
        "script": "calibration/make_shapes_calibration.py",
        "function": "lepton_edge.runtime.sources.shapes.random_sample",
        "seeds": [seeds.start, seeds.stop],
        "width": SIZE[0],
        "height": SIZE[1],
        "jpeg_quality": JPEG_QUALITY,
        "description": "Calibration images (seeds are a half-open range [start, stop)); disjoint from the "
        "training (0..) and held-out (1_000_000..) seeds.",
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    total = sum(f["size"] for f in manifest["files"])
    print(f"wrote {len(manifest['files'])} images ({total / 1e6:.2f} MB) and manifest.json to {args.out}")
    if total > MAX_BYTES:
        raise SystemExit(f"the calibration images take {total} bytes, more than the {MAX_BYTES} allowed; "
                         "use fewer images")


if __name__ == "__main__":
    main()
