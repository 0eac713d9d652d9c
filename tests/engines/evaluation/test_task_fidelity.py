"""Label-free fidelity of segment, pose and obb models: mask IoU and keypoint OKS over the boxes kept, rotated-IoU
matching, and compare decoding each Ultralytics task family with its own decoder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lepton_edge.core.results import Detections, Keypoints, Masks, RotatedBoxes
from lepton_edge.engines.evaluation.compare import compare
from lepton_edge.engines.evaluation.fidelity import (
    OKS_KAPPA,
    boxes_kept,
    detection_report,
    kept_agreement,
    keypoint_oks,
)

REPO = Path(__file__).resolve().parents[3]
ULTRALYTICS = REPO / "models" / "ultralytics"
H, W = 100, 100


def segmented(shift: int = 0) -> Detections:
    crop = np.zeros((20, 20), bool)
    crop[:, : 20 - shift] = True  # a 20x20 square, its right part cut by ``shift`` columns
    return Detections([[10, 10, 30, 30]], [0.9], [0], masks=Masks((crop,), [[10, 10]], H, W))


def posed(offset: float = 0.0, visibility: float = 0.9) -> Detections:
    points = np.array([[[20 + offset, 20, visibility], [40 + offset, 40, 0.9]]], np.float32)
    return Detections([[10, 10, 50, 50]], [0.9], [0], keypoints=Keypoints(points))


def oriented(angle: float) -> Detections:
    xywhr = np.array([[50, 50, 60, 6, angle]], np.float32)
    corners = RotatedBoxes(xywhr).corners()
    box = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    return Detections(box, [0.9], [0], rotated=RotatedBoxes(xywhr))


def test_mask_iou_of_the_boxes_kept():
    assert kept_agreement([segmented()], [segmented()], "segment") == pytest.approx(1.0)
    assert kept_agreement([segmented()], [segmented(shift=5)], "segment") == pytest.approx(15 / 20)
    assert math.isnan(kept_agreement([segmented()], [Detections.empty()], "segment"))
    report = detection_report([segmented()], [segmented(shift=5)], [], task="segment")
    assert report.task == "segment" and report.mask_iou == pytest.approx(0.75) and report.keypoint_oks is None
    assert "mask IoU 0.7500" in report.format()


def test_keypoint_oks_of_the_boxes_kept():
    assert kept_agreement([posed()], [posed()], "pose") == pytest.approx(1.0)
    moved = keypoint_oks(posed(), posed(offset=4.0), (0, 0))
    assert moved == pytest.approx(math.exp(-16 / (2 * 40 * 40 * OKS_KAPPA**2)))
    # the first keypoint hidden in the reference is left out: the OKS is the second's, which moved as far
    hidden = keypoint_oks(posed(visibility=0.1), posed(offset=4.0, visibility=0.1), (0, 0))
    assert hidden == pytest.approx(moved)
    assert keypoint_oks(posed(visibility=0.1), posed(), (0, 0)) == pytest.approx(1.0)
    report = detection_report([posed()], [posed(offset=4.0)], [], task="pose")
    assert report.keypoint_oks == pytest.approx(moved) and report.mask_iou is None


def test_oriented_boxes_are_matched_by_their_rotated_iou():
    # two thin boxes crossing at right angles: the same axis-aligned box around them, almost no overlap
    up, down = oriented(math.pi / 4), oriented(-math.pi / 4)
    np.testing.assert_allclose(up.boxes, down.boxes, atol=1e-4)
    assert boxes_kept([up], [down]) == (0, 1)
    assert boxes_kept([up], [oriented(math.pi / 4 + 0.01)]) == (1, 1)
    assert kept_agreement([up], [down], "obb") is None


@pytest.mark.parametrize(("model", "task", "extra"), [
    ("segment/yolo11t-seg.onnx", "segment", "mask_iou"),
    ("segment/yolo26t-seg_e2e.onnx", "segment", "mask_iou"),
    ("pose/yolo11t-pose.onnx", "pose", "keypoint_oks"),
    ("obb/yolo11t-obb.onnx", "obb", None),
])
def test_compare_decodes_each_task_with_its_decoder(model, task, extra):
    pytest.importorskip("cv2")
    onnx = ULTRALYTICS / model
    report = compare(onnx, onnx, ULTRALYTICS / "frames")
    fidelity = report.fidelity
    assert report.task == task and fidelity.task == task
    assert fidelity.value == pytest.approx(1.0) and fidelity.boxes_kept == pytest.approx(1.0)
    assert fidelity.reference_boxes > 0
    if extra is not None:
        assert getattr(fidelity, extra) == pytest.approx(1.0)
