"""Oriented boxes: ProbIoU, Fast-NMS, regularisation, exact rotated IoU and the decoder on synthetic outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lepton_edge.config.pipeline import ObbConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.results import RotatedBoxes
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.postprocess.nms import box_iou
from lepton_edge.runtime.postprocess.obb import ObbPostprocessor, probiou, regularize, rotated_iou, rotated_nms
from lepton_edge.runtime.preprocess import Transform


def spec(*shape) -> TensorSpec:
    return TensorSpec("output0", tuple(shape), np.dtype(np.float32))


def test_probiou_is_one_for_the_same_box_and_falls_with_distance():
    box = np.array([[50, 50, 20, 10, 0.3]])
    near = np.array([[52, 50, 20, 10, 0.3]])
    far = np.array([[500, 50, 20, 10, 0.3]])
    assert probiou(box, box)[0, 0] == pytest.approx(1.0, abs=1e-3)
    assert 0.5 < probiou(box, near)[0, 0] < 1.0
    assert probiou(box, far)[0, 0] == pytest.approx(0.0, abs=1e-3)
    np.testing.assert_allclose(probiou(box, near), probiou(near, box).T)
    # a rectangle turned by 90 degrees with w and h swapped is the same rectangle
    assert probiou(box, [[50, 50, 10, 20, 0.3 + math.pi / 2]])[0, 0] == pytest.approx(1.0, abs=1e-3)


def test_fast_nms_drops_a_box_overlapped_by_a_better_one_even_if_that_one_was_dropped():
    # A overlaps B, B overlaps C, A does not overlap C: greedy NMS keeps A and C, Fast-NMS (Ultralytics) only A
    boxes = np.array([[0, 0, 10, 10, 0], [4, 0, 10, 10, 0], [8, 0, 10, 10, 0]], np.float32)
    scores = np.array([0.9, 0.8, 0.7])
    overlaps = probiou(boxes, boxes)
    threshold = (overlaps[0, 1] + overlaps[0, 2]) / 2
    assert overlaps[1, 2] >= threshold > overlaps[0, 2]
    assert rotated_nms(boxes, scores, threshold).tolist() == [0]
    assert rotated_nms(boxes, scores, threshold, class_ids=np.array([0, 1, 0])).tolist() == [0, 1, 2]
    assert rotated_nms(boxes, scores, 0.99, max_detections=2).tolist() == [0, 1]
    assert rotated_nms(np.zeros((0, 5)), np.zeros(0), 0.5).tolist() == []


def test_regularize_keeps_the_rectangle():
    boxes = np.array([[10, 10, 20, 5, 2.0], [10, 10, 20, 5, -0.3], [10, 10, 20, 5, 0.4]], np.float32)
    out = regularize(boxes)
    assert ((out[:, 4] >= 0) & (out[:, 4] < math.pi / 2)).all()
    np.testing.assert_allclose(out[0, 2:4], [5, 20])  # 2.0 rad is past pi/2: sides swap
    for before, after in zip(RotatedBoxes(boxes).corners(), RotatedBoxes(out).corners(), strict=True):
        assert rotated_iou(before[None], after[None])[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_rotated_iou_is_exact():
    rng = np.random.default_rng(1)
    xyxy = np.sort(rng.uniform(0, 50, size=(6, 2, 2)), axis=1).transpose(0, 2, 1).reshape(6, 4)[:, [0, 2, 1, 3]]
    xywhr = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2, xyxy[:, 2] - xyxy[:, 0],
                      xyxy[:, 3] - xyxy[:, 1], np.zeros(6)], axis=1)
    corners = RotatedBoxes(xywhr).corners()
    np.testing.assert_allclose(rotated_iou(corners, corners), box_iou(xyxy, xyxy), atol=1e-5)
    square = RotatedBoxes([[0, 0, 2, 2, 0]]).corners()
    diamond = RotatedBoxes([[0, 0, 2, 2, math.pi / 4]]).corners()
    # the overlap of a square and the same square turned 45 degrees is a regular octagon: 8 (sqrt 2 - 1) of 4
    octagon = 8 * (math.sqrt(2) - 1)
    assert rotated_iou(square, diamond)[0, 0] == pytest.approx(octagon / (8 - octagon), abs=1e-6)


def test_decoder_yolov8_and_end2end():
    out = np.zeros((1, 4 + 2 + 1, 30), np.float32)
    out[0, :, 0] = [10, 10, 8, 4, 0.9, 0.1, 0.5]
    out[0, :, 1] = [10, 10, 8, 4, 0.1, 0.8, 0.5]  # same place, other class: class-aware NMS keeps both
    out[0, :, 2] = [10, 10, 8, 4, 0.7, 0.1, 0.5]  # same as the first, worse: suppressed
    post = ObbPostprocessor(ObbConfig(type="obb"), [spec(1, 7, 30)], {"task": "obb"}, ("a", "b"))
    assert post.layout == "yolov8"
    # a 40x20 source letterboxed into 20x20: scale 0.5, 5 rows of padding on top
    found = post([out], Transform(0.5, 0.5, 0.0, 5.0, 40, 20))
    assert found.class_ids.tolist() == [0, 1] and found.rotated is not None
    np.testing.assert_allclose(found.rotated.xywhr[0], [20, 10, 16, 8, 0.5], atol=1e-5)
    agnostic = ObbPostprocessor(ObbConfig(type="obb", class_agnostic=True), [spec(1, 7, 30)], {}, ())
    assert len(agnostic([out], Transform.identity(20, 20))) == 1

    rows = np.zeros((1, 10, 7), np.float32)
    rows[0, 0] = [10, 10, 8, 4, 0.6, 1, -0.2]
    rows[0, 1] = [10, 10, 8, 4, 0.9, 1, -0.2]
    e2e = ObbPostprocessor(ObbConfig(type="obb"), [spec(1, 10, 7)], {"end2end": "True"}, ())
    found = e2e([rows], Transform.identity(20, 20))
    assert found.scores.tolist() == pytest.approx([0.9, 0.6]) and found.rotated.xywhr[0, 4] == pytest.approx(-0.2)
    assert (found.boxes[:, 2:] <= 20).all() and (found.boxes[:, :2] >= 0).all()


def test_empty_and_bad_outputs():
    post = ObbPostprocessor(ObbConfig(type="obb"), [spec(1, 7, 30)], {}, ())
    found = post([np.zeros((1, 7, 30), np.float32)], Transform.identity(20, 20))
    assert len(found) == 0 and found.rotated is not None and found.rotated.xywhr.shape == (0, 5)
    with pytest.raises(ModelError, match="too few rows"):
        post([np.zeros((1, 5, 30), np.float32)], Transform.identity(20, 20))
    with pytest.raises(ModelError, match="one output"):
        ObbPostprocessor(ObbConfig(type="obb"), [], {}, ())
    with pytest.raises(ModelError, match=r"6\+1 values"):
        ObbPostprocessor(ObbConfig(type="obb", layout="end2end"), [spec(1, 300, 6)], {}, ())
    with pytest.raises(ModelError, match="cannot tell the obb layout"):
        ObbPostprocessor(ObbConfig(type="obb"), [spec(1, "n", "m")], {}, ())
