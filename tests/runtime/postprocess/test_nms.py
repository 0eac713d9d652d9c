"""NMS and IoU against a brute-force pure-Python reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lepton_edge.runtime.postprocess.nms import box_iou, nms


def ref_area(box: list[float]) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def ref_iou(a: list[float], b: list[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = ref_area(a) + ref_area(b) - inter
    return inter / union if union > 0 else 0.0


def ref_nms(boxes, scores, threshold, class_ids=None, max_detections=None) -> list[int]:
    """Textbook greedy NMS: visit boxes best first, keep one unless a kept box of its class overlaps it."""
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if max_detections is not None and len(keep) >= max_detections:
            break
        suppressed = any(
            (class_ids is None or class_ids[i] == class_ids[k]) and ref_iou(boxes[i], boxes[k]) > threshold
            for k in keep
        )
        if not suppressed:
            keep.append(i)
    return keep


# Integer coordinates keep every IoU exact, so ties at the threshold decide the same way in both.
coord = st.integers(-50, 150).map(float)
box = st.tuples(coord, coord, coord, coord).map(list)
# Mostly well-formed boxes (x1 <= x2), plus arbitrary ones (zero or negative area).
well_formed = st.tuples(coord, coord, st.integers(0, 80), st.integers(0, 80)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]]
)
case = st.integers(0, 30).flatmap(
    lambda n: st.tuples(
        st.lists(st.one_of(well_formed, well_formed, box), min_size=n, max_size=n),
        st.lists(st.sampled_from([0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0]), min_size=n, max_size=n),
        st.lists(st.integers(0, 3), min_size=n, max_size=n),
    )
)
threshold = st.sampled_from([0.0, 0.1, 0.3, 0.45, 0.5, 0.7, 1.0])
max_dets = st.one_of(st.none(), st.integers(1, 10))


@settings(max_examples=150, deadline=None)
@given(case, threshold, max_dets)
def test_class_agnostic_matches_reference(data, iou_threshold, max_detections):
    boxes, scores, _ = data
    got = nms(np.array(boxes).reshape(-1, 4), np.array(scores, np.float32), iou_threshold,
              max_detections=max_detections)
    assert got.tolist() == ref_nms(boxes, scores, iou_threshold, None, max_detections)
    assert got.dtype == np.int64


@settings(max_examples=150, deadline=None)
@given(case, threshold, max_dets)
def test_class_aware_matches_reference(data, iou_threshold, max_detections):
    boxes, scores, classes = data
    got = nms(np.array(boxes).reshape(-1, 4), np.array(scores, np.float32), iou_threshold,
              class_ids=np.array(classes), max_detections=max_detections)
    assert got.tolist() == ref_nms(boxes, scores, iou_threshold, classes, max_detections)


@settings(max_examples=100, deadline=None)
@given(st.lists(box, max_size=8), st.lists(box, max_size=8))
def test_box_iou_matches_reference(a, b):
    got = box_iou(np.array(a).reshape(-1, 4), np.array(b).reshape(-1, 4))
    assert got.shape == (len(a), len(b))
    want = [[ref_iou(x, y) for y in b] for x in a]
    np.testing.assert_allclose(got, np.array(want).reshape(len(a), len(b)), rtol=0, atol=1e-12)


def test_hand_computed_overlap():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    # [0,0,10,10] vs [5,0,15,10]: intersection 50, union 150 -> IoU 1/3.
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(1 / 3)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]
    assert nms(boxes, scores, 0.34).tolist() == [0, 1, 2]
    # Best first, whatever the input order.
    assert nms(boxes, np.array([0.1, 0.8, 0.5], np.float32), 0.5).tolist() == [1, 2, 0]


def test_class_aware_keeps_overlapping_boxes_of_other_classes():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, scores, 0.5, class_ids=np.array([0, 1, 0])).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5).tolist() == [0]


def test_class_aware_with_negative_coordinates():
    # Boxes partly left of / above the image must still not leak across classes.
    boxes = np.array([[-100, -100, 50, 50], [-90, -90, 50, 50]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(boxes, scores, 0.5, class_ids=np.array([0, 1])).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5, class_ids=np.array([1, 1])).tolist() == [0]


def test_degenerate_boxes_do_not_crash_and_suppress_nothing():
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [10, 10, 0, 0], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    with np.errstate(all="raise"):
        assert nms(boxes, scores, 0.0).tolist() == [0, 1, 2, 3]
        assert box_iou(boxes, boxes)[:3].sum() == 0.0


def test_empty_and_limits():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]], np.float32)
    scores = np.array([0.1, 0.3, 0.2], np.float32)
    assert nms(boxes, scores, 0.5, max_detections=2).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5, max_detections=0).tolist() == []


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="3 boxes but 2 scores"):
        nms(np.zeros((3, 4)), np.zeros(2), 0.5)
    with pytest.raises(ValueError, match="3 boxes but 1 class ids"):
        nms(np.zeros((3, 4)), np.zeros(3), 0.5, class_ids=np.zeros(1))
