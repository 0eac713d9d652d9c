"""Fetch the PP-OCR text-angle classifier (Apache-2.0) from the rapidocr-onnxruntime wheel, and render text lines.

Run by hand only (the runtime and the tests never download anything):

    .venv/bin/python models/fetch_ppocr_cls.py               # downloads the wheel, writes the files below
    .venv/bin/python models/fetch_ppocr_cls.py --lines-only  # only (re)renders the text lines

Writes:

- ``models/ppocr_cls.onnx``: ``rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx`` from the
  ``rapidocr-onnxruntime`` wheel (PaddleOCR's mobile v2.0 angle classifier, converted by RapidOCR), unchanged and
  checked against the sha256 below: a real trained model, dynamic height and width, no metadata;
- ``calibration/text_lines/line_NNN.jpg``: printed text lines (OpenCV's Hershey fonts, random words, sizes,
  contrast and noise; seeded), every odd-numbered one turned upside down. The classifier's classes are
  ``0`` (upright) and ``180``; ``--measure`` reports its top-1 on them with RapidOCR's own preprocessing.

Needs pip (``pip download rapidocr-onnxruntime==VERSION --no-deps``), numpy and OpenCV (and onnxruntime for
``--measure``).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

VERSION = "1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
SHA256 = "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
HERE = Path(__file__).resolve().parent
MODEL = HERE / "ppocr_cls.onnx"
LINES = HERE.parent / "calibration" / "text_lines"
COUNT = 160

WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "edge", "camera", "robot", "vehicle",
    "sensor", "model", "engine", "fleet", "device", "track", "zone", "event", "clip", "lane", "gate",
    "exit", "dock", "bay",
)
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX,
         cv2.FONT_HERSHEY_PLAIN)


def fetch() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", f"rapidocr-onnxruntime=={VERSION}", "--no-deps",
                        "--only-binary", ":all:", "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("rapidocr_onnxruntime-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            model = archive.read(MEMBER)
    digest = hashlib.sha256(model).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{MEMBER} from rapidocr-onnxruntime {VERSION} has sha256 {digest}, expected {SHA256}")
    MODEL.write_bytes(model)
    print(f"wrote {MODEL} ({len(model)} bytes, sha256 {digest})")


def text_line(index: int) -> np.ndarray:
    """One printed text line, BGR uint8, upright; deterministic in ``index``."""
    rng = random.Random(index)
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
    text = text.upper() if rng.random() < 0.5 else text
    font, scale, thickness = rng.choice(FONTS), rng.uniform(0.8, 1.6), rng.randint(1, 3)
    (width, height), baseline = cv2.getTextSize(text, font, scale, thickness)
    pad = rng.randint(2, 8)
    ink, paper = rng.randint(0, 80), rng.randint(170, 255)
    image = np.full((height + baseline + 2 * pad, width + 2 * pad, 3), paper, np.uint8)
    cv2.putText(image, text, (pad, height + pad), font, scale, (ink, ink, ink), thickness, cv2.LINE_AA)
    noise = np.random.default_rng(index).normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def render_lines() -> None:
    LINES.mkdir(parents=True, exist_ok=True)
    for old in LINES.glob("line_*.jpg"):
        old.unlink()
    for index in range(COUNT):
        image = text_line(index)
        if index % 2:
            image = cv2.rotate(image, cv2.ROTATE_180)
        cv2.imwrite(str(LINES / f"line_{index:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    print(f"wrote {COUNT} text lines to {LINES} (odd numbers upside down)")


def rapidocr_input(image: np.ndarray) -> np.ndarray:
    """RapidOCR's classifier preprocessing: height 48, width up to 192 keeping the aspect, padded right."""
    height, width = image.shape[:2]
    resized_width = min(192, math.ceil(48 * width / height))
    resized = cv2.resize(image, (resized_width, 48)).astype(np.float32).transpose(2, 0, 1) / 255
    tensor = np.zeros((3, 48, 192), np.float32)
    tensor[:, :, :resized_width] = (resized - 0.5) / 0.5
    return tensor[None]


def measure() -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    right = 0
    for index, path in enumerate(sorted(LINES.glob("line_*.jpg"))):
        scores = session.run(None, {"x": rapidocr_input(cv2.imread(str(path)))})[0][0]
        right += int(np.argmax(scores)) == index % 2
    print(f"top-1 with RapidOCR's preprocessing: {right}/{COUNT} = {right / COUNT:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines-only", action="store_true", help="only render calibration/text_lines")
    parser.add_argument("--measure", action="store_true", help="report the classifier's top-1 on the lines")
    args = parser.parse_args()
    if not args.lines_only:
        fetch()
    render_lines()
    if args.measure:
        measure()


if __name__ == "__main__":
    main()
