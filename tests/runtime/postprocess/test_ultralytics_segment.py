"""Our preprocess + onnxruntime + segmentation decoder against Ultralytics' own ``predict`` (8.4.190, conf 0.25,
iou 0.7) on the committed frames, for both committed -seg exports.

Boxes: at least 99 % of the reference boxes matched one-to-one by ours of the same class with IoU > 0.9, at most
1 % extra. Masks: each matched pair's masks overlap with IoU > 0.9, in source pixels; the reference masks
(``Results.masks.data``, in the letterboxed input's pixels) are brought to the source as Ultralytics'
``scale_masks`` does, with OpenCV here: the image part resized bilinearly, above 0.5.
"""

from __future__ import annotations

import numpy as np
import pytest

from lepton_edge.config.pipeline import SegmentConfig
from lepton_edge.core.results import Detections
from lepton_edge.runtime.postprocess.nms import box_iou
from tests.runtime.postprocess.ultralytics_refs import (
    MODELS,
    Frame,
    Score,
    cv2,
    match_pairs,
    predict_args,
    run_frames,
    same_class,
)

MASK_IOU = 0.9


def reference_masks_in_source(frame: Frame, masks: np.ndarray) -> np.ndarray:
    """Ultralytics' input-pixel masks ``(N, H, W)`` in source pixels (the letterbox undone, bilinear, > 0.5)."""
    h, w = frame.ref["orig_shape"]
    _, _, ih, iw = frame.ref["input_shape"]
    gain = min(ih / h, iw / w)
    nw, nh = round(w * gain), round(h * gain)
    left, top = (iw - nw) // 2, (ih - nh) // 2
    return np.stack([
        cv2.resize(m[top:top + nh, left:left + nw].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
        for m in masks
    ]) if len(masks) else np.zeros((0, h, w), bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def score_segmentation(path: str, config: SegmentConfig) -> tuple[Score, list[float]]:
    onnx = MODELS / path
    references = np.load(onnx.with_suffix(".masks.npz"))
    score, ious = Score(0, 0, 0), []
    for frame in run_frames(onnx, config):
        found: Detections = frame.result
        assert found.masks is not None and len(found.masks) == len(found)
        pairs = match_pairs(same_class(box_iou(frame.ref_boxes, found.boxes), frame.ref_classes, found.class_ids))
        score += Score(len(frame.ref_boxes), len(pairs), len(found))
        ref_masks = reference_masks_in_source(frame, references[frame.ref["frame"].split("/")[-1][:-4]])
        ious += [mask_iou(ref_masks[r], found.masks.dense(o)) for r, o in pairs]
    return score, ious


@pytest.mark.parametrize(("path", "layout"), [
    pytest.param("segment/yolo11t-seg.onnx", "yolov8", id="yolo11-seg"),
    pytest.param("segment/yolo26t-seg_e2e.onnx", "end2end", id="yolo26-seg-end2end"),
])
def test_matches_ultralytics_predict(path: str, layout: str) -> None:
    conf, iou = predict_args(MODELS / path)
    config = SegmentConfig(type="segment", conf_threshold=conf, iou_threshold=iou, max_detections=300)
    score, ious = score_segmentation(path, config)
    assert score.passes, str(score)
    assert ious and min(ious) > MASK_IOU, f"mask IoU min {min(ious):.3f}, mean {np.mean(ious):.3f}"


def test_the_model_default_is_the_segmentation_decoder() -> None:
    frame = next(run_frames(MODELS / "segment/yolo11t-seg.onnx", None))
    assert frame.result.masks is not None and frame.result.masks.height == frame.image.shape[0]


def test_polygons_outline_the_masks() -> None:
    config = SegmentConfig(type="segment", mask_format="polygon")
    frame = next(run_frames(MODELS / "segment/yolo11t-seg.onnx", config))
    masks = frame.result.masks
    assert masks is not None and masks.polygons is not None and len(masks) > 0
    for i in range(len(masks)):
        drawn = np.zeros((masks.height, masks.width), np.uint8)
        cv2.fillPoly(drawn, [p.round().astype(np.int32) for p in masks.polygons[i]], 1)
        assert mask_iou(drawn.astype(bool), masks.dense(i)) > 0.7
    item = frame.result.to_dict()["detections"][0]
    assert set(item["mask"]) == {"polygons"} and all(len(p) % 2 == 0 for p in item["mask"]["polygons"])
