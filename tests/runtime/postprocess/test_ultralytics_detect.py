"""Our preprocess + onnxruntime + detection decoders against Ultralytics' own ``predict`` (issue #10).

Each committed detect-family export in ``models/ultralytics/`` runs on the committed frames; its reference JSON
holds what Ultralytics 8.4.190 found (conf 0.25, iou 0.7). A reference box is matched by one of ours of the same
class with IoU > 0.9; at least 99 % must match and at most 1 % (of the reference count) may be extra.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lepton_edge.config.pipeline import DetectConfig, PreprocessConfig
from lepton_edge.runtime.backends import create_backend
from lepton_edge.runtime.postprocess import create_postprocessor, infer_task
from lepton_edge.runtime.postprocess.detect import DetectionPostprocessor
from lepton_edge.runtime.postprocess.nms import box_iou
from lepton_edge.runtime.preprocess import Preprocessor

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")

MODELS = Path(__file__).resolve().parents[3] / "models" / "ultralytics"
MIN_MATCHED = 0.99
MAX_EXTRA = 0.01
MATCH_IOU = 0.9
ULTRALYTICS_INTERPOLATION = "linear"
"""Ultralytics resizes bilinearly, shrinking too; our default (area when shrinking) moves borderline scores."""

DYNAMIC_SQUARE = (
    "Ultralytics letterboxes a dynamic model to the smallest stride-multiple rectangle around the frame "
    "(e.g. 160x128 for 320x240; the reference input_shape), we letterbox to the square imgsz 160x160: the "
    "network sees a different tensor, so its boxes differ"
)

FP16_AT_CONF = (
    "frame_02 has a box whose fp16 score is exactly 0.25 = conf: Ultralytics keeps scores > conf, our "
    "conf_threshold is a minimum (>=), so we report 1 extra box of 79 (1.3 %); all 79 references match"
)


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

    def __str__(self) -> str:
        return (f"matched {self.matched}/{self.references} ({self.matched_share:.1%}), "
                f"extra {self.ours - self.matched} ({self.extra_share:.1%})")


def count_matches(ours_boxes: np.ndarray, ours_classes: np.ndarray, ref_boxes: np.ndarray,
                  ref_classes: np.ndarray) -> int:
    """Reference boxes matched one-to-one (greedily, best IoU first) by ours of the same class, IoU > 0.9."""
    if len(ours_boxes) == 0 or len(ref_boxes) == 0:
        return 0
    iou = box_iou(ref_boxes, ours_boxes)
    iou[ref_classes[:, None] != ours_classes[None, :]] = 0.0
    matched = 0
    while iou.size and iou.max() > MATCH_IOU:
        r, o = np.unravel_index(np.argmax(iou), iou.shape)
        iou[r, :] = 0.0
        iou[:, o] = 0.0
        matched += 1
    return matched


def reference(onnx: Path) -> dict:
    return json.loads(onnx.with_suffix(".json").read_text())


def run_variant(onnx: Path, *, size_from_reference: bool = False) -> Score:
    """Run every reference frame through our pipeline stages and score the detections against Ultralytics'."""
    ref = reference(onnx)
    backend = create_backend(onnx)
    backend.load()
    try:
        assert infer_task(backend.outputs, backend.metadata) == "detect"
        conf, iou = ref["predict_args"]["conf"], ref["predict_args"]["iou"]
        detect = DetectConfig(type="detect", conf_threshold=conf, iou_threshold=iou, max_detections=300)
        post = create_postprocessor(detect, backend.outputs, backend.metadata, ())
        totals = np.zeros(3, dtype=np.int64)
        for frame in ref["frames"]:
            image = cv2.imread(str(MODELS / frame["frame"]), cv2.IMREAD_COLOR)
            _, _, h, w = frame["input_shape"]
            size = (w, h) if size_from_reference else None
            config = PreprocessConfig(size=size, interpolation=ULTRALYTICS_INTERPOLATION)
            pre = Preprocessor(backend.inputs[0], config, metadata=backend.metadata)
            tensor = pre.new_buffer()
            transform = pre(image, tensor)
            detections = post(backend.infer({backend.inputs[0].name: tensor}), transform)
            ref_boxes = np.asarray(frame["xyxy"], np.float32).reshape(-1, 4)
            ref_classes = np.asarray(frame["cls"], np.int64)
            totals += (len(ref_boxes),
                       count_matches(detections.boxes, detections.class_ids, ref_boxes, ref_classes),
                       len(detections.boxes))
        return Score(*(int(t) for t in totals))
    finally:
        backend.close()


VARIANTS = [
    pytest.param("detect/yolo11t-detect.onnx", "yolov8", id="yolo11-static"),
    pytest.param("detect/yolo11t-detect_fp16.onnx", "yolov8", id="yolo11-fp16",
                 marks=pytest.mark.xfail(reason=FP16_AT_CONF, strict=True)),
    pytest.param("detect/yolo11t-detect_nms.onnx", "nms", id="yolo11-nms-true"),
    pytest.param("detect/yolo26t-detect.onnx", "yolov8", id="yolo26-default"),
    pytest.param("detect/yolo26t-detect_e2e.onnx", "nms", id="yolo26-end2end"),
    pytest.param("rtdetr/rtdetr-tiny.onnx", "rtdetr", id="rtdetr"),
    pytest.param("detect/yolo11t-detect_dynamic.onnx", "yolov8", id="yolo11-dynamic-square",
                 marks=pytest.mark.xfail(reason=DYNAMIC_SQUARE, strict=True)),
]


@pytest.mark.parametrize(("path", "layout"), VARIANTS)
def test_matches_ultralytics_predict(path: str, layout: str) -> None:
    onnx = MODELS / path
    backend = create_backend(onnx)
    backend.load()
    try:
        post = create_postprocessor(None, backend.outputs, backend.metadata, ())
    finally:
        backend.close()
    assert isinstance(post, DetectionPostprocessor) and post.layout == layout
    score = run_variant(onnx)
    assert score.matched_share >= MIN_MATCHED and score.extra_share <= MAX_EXTRA, str(score)


def test_dynamic_matches_at_the_reference_input_shape() -> None:
    """Given the rectangle Ultralytics fed (preprocess.size), the dynamic export matches too."""
    score = run_variant(MODELS / "detect/yolo11t-detect_dynamic.onnx", size_from_reference=True)
    assert score.matched_share >= MIN_MATCHED and score.extra_share <= MAX_EXTRA, str(score)


def test_rtdetr_is_stretched_unless_resize_is_set() -> None:
    backend = create_backend(MODELS / "rtdetr/rtdetr-tiny.onnx")
    backend.load()
    try:
        spec, metadata = backend.inputs[0], backend.metadata
    finally:
        backend.close()
    assert Preprocessor(spec, None, metadata=metadata).config.resize == "stretch"
    assert Preprocessor(spec, PreprocessConfig(resize="letterbox"), metadata=metadata).config.resize == "letterbox"
