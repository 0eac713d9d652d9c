"""Shared by the Ultralytics ``predict`` comparisons: the committed references in ``models/ultralytics/``, running
their frames through our preprocess, onnxruntime and a postprocessor, and matching results one-to-one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lepton_edge.config.pipeline import PostprocessConfig, PreprocessConfig
from lepton_edge.core.results import Detections
from lepton_edge.runtime.backends import create_backend
from lepton_edge.runtime.postprocess import create_postprocessor
from lepton_edge.runtime.postprocess.nms import box_iou
from lepton_edge.runtime.preprocess import Preprocessor, Transform

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")

MODELS = Path(__file__).resolve().parents[3] / "models" / "ultralytics"
MIN_MATCHED = 0.99
MAX_EXTRA = 0.01
MATCH_IOU = 0.9
ULTRALYTICS_INTERPOLATION = "linear"
"""Ultralytics resizes bilinearly, shrinking too; our default (area when shrinking) moves borderline scores."""


@dataclass(frozen=True)
class Score:
    references: int
    matched: int
    ours: int

    @property
    def matched_share(self) -> float:
        return self.matched / self.references if self.references else 1.0

    @property
    def extra_share(self) -> float:
        return (self.ours - self.matched) / max(self.references, 1)

    @property
    def passes(self) -> bool:
        return self.matched_share >= MIN_MATCHED and self.extra_share <= MAX_EXTRA

    def __add__(self, other: Score) -> Score:
        return Score(self.references + other.references, self.matched + other.matched, self.ours + other.ours)

    def __str__(self) -> str:
        return (f"matched {self.matched}/{self.references} ({self.matched_share:.1%}), "
                f"extra {self.ours - self.matched} ({self.extra_share:.1%})")


def match_pairs(overlap: np.ndarray, threshold: float = MATCH_IOU) -> list[tuple[int, int]]:
    """(reference, ours) pairs matched one-to-one, greedily best overlap first, above ``threshold``."""
    overlap = np.array(overlap, dtype=np.float64, copy=True)
    pairs = []
    while overlap.size and overlap.max() > threshold:
        r, o = np.unravel_index(np.argmax(overlap), overlap.shape)
        overlap[r, :] = 0.0
        overlap[:, o] = 0.0
        pairs.append((int(r), int(o)))
    return pairs


def same_class(overlap: np.ndarray, ref_classes: np.ndarray, ours_classes: np.ndarray) -> np.ndarray:
    """``overlap`` with pairs of different classes zeroed."""
    out = np.array(overlap, dtype=np.float64, copy=True)
    out[np.asarray(ref_classes)[:, None] != np.asarray(ours_classes)[None, :]] = 0.0
    return out


def count_matches(ours_boxes: np.ndarray, ours_classes: np.ndarray, ref_boxes: np.ndarray,
                  ref_classes: np.ndarray) -> int:
    """Reference boxes matched one-to-one (greedily, best IoU first) by ours of the same class, IoU > 0.9."""
    if len(ours_boxes) == 0 or len(ref_boxes) == 0:
        return 0
    return len(match_pairs(same_class(box_iou(ref_boxes, ours_boxes), ref_classes, ours_classes)))


def reference(onnx: Path) -> dict:
    return json.loads(onnx.with_suffix(".json").read_text())


@dataclass(frozen=True)
class Frame:
    """One reference frame with what our pipeline stages made of it."""

    ref: dict
    image: np.ndarray
    transform: Transform
    result: Detections

    @property
    def ref_boxes(self) -> np.ndarray:
        return np.asarray(self.ref.get("xyxy", []), np.float32).reshape(-1, 4)

    @property
    def ref_classes(self) -> np.ndarray:
        return np.asarray(self.ref["cls"], np.int64)


def run_frames(onnx: Path, config: PostprocessConfig | None, *, size_from_reference: bool = False) -> Iterator[Frame]:
    """Each reference frame through our preprocess (linear, as Ultralytics), onnxruntime and ``config``'s
    postprocessor (the model's default when None)."""
    ref = reference(onnx)
    backend = create_backend(onnx)
    backend.load()
    try:
        post = create_postprocessor(config, backend.outputs, backend.metadata, ())
        for frame in ref["frames"]:
            image = cv2.imread(str(MODELS / frame["frame"]), cv2.IMREAD_COLOR)
            _, _, h, w = frame["input_shape"]
            size = (w, h) if size_from_reference else None
            pre = Preprocessor(backend.inputs[0], PreprocessConfig(size=size, interpolation=ULTRALYTICS_INTERPOLATION),
                               metadata=backend.metadata)
            tensor = pre.new_buffer()
            transform = pre(image, tensor)
            yield Frame(frame, image, transform, post(backend.infer({backend.inputs[0].name: tensor}), transform))
    finally:
        backend.close()


def predict_args(onnx: Path) -> tuple[float, float]:
    """Ultralytics' conf and iou for the reference."""
    args = reference(onnx)["predict_args"]
    return args["conf"], args["iou"]
