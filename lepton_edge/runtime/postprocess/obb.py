"""Oriented boxes: Ultralytics -obb heads, YOLOv8/11 ``[1, 4+C+1, A]`` (cx, cy, w, h, C class scores, angle in
radians) and YOLO26 end-to-end ``[1, N, 7]`` (cx, cy, w, h, score, class, angle).

One-to-many heads need rotated NMS; Ultralytics measures overlap with ProbIoU (each box as the Gaussian of a
uniform rectangle, one minus their Hellinger distance) and suppresses Fast-NMS style (a box goes when any
better-scored box overlaps it, kept or not), which :func:`rotated_nms` follows. Angles are reported as the model
gives them, as Ultralytics 8.4's ``predict`` does (its ``xywhr``); :func:`regularize` maps them to [0, pi/2)
when a caller wants one form per rectangle. ``Detections.boxes`` is the axis-aligned box around each rotated one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lepton_edge.config.pipeline import ObbConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.results import Detections, RotatedBoxes
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.postprocess.detect import describe_outputs
from lepton_edge.runtime.postprocess.heads import check_head, head_candidates, head_layout
from lepton_edge.runtime.preprocess import Transform

_EPS = 1e-7


def _covariances(xywhr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Second moments (xx, yy, xy) of each box seen as a uniform rectangle: diag(w^2, h^2) / 12, rotated."""
    w2, h2 = xywhr[:, 2] ** 2 / 12.0, xywhr[:, 3] ** 2 / 12.0
    cos, sin = np.cos(xywhr[:, 4]), np.sin(xywhr[:, 4])
    return w2 * cos**2 + h2 * sin**2, w2 * sin**2 + h2 * cos**2, (w2 - h2) * cos * sin


def probiou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ProbIoU ``(N, M)`` of cx, cy, w, h, angle boxes ``a`` ``(N, 5)`` and ``b`` ``(M, 5)``: one minus the
    Hellinger distance of their Gaussians, from the Bhattacharyya distance (clamped to [1e-7, 100])."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 5)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 5)
    axx, ayy, axy = _covariances(a)
    bxx, byy, bxy = _covariances(b)
    sxx, syy, sxy = axx[:, None] + bxx[None], ayy[:, None] + byy[None], axy[:, None] + bxy[None]
    det = sxx * syy - sxy**2
    dx, dy = a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1]
    mahalanobis = (syy * dx**2 + sxx * dy**2 - 2.0 * sxy * dx * dy) / (det + _EPS)
    det_a = np.clip(axx * ayy - axy**2, 0, None)[:, None]
    det_b = np.clip(bxx * byy - bxy**2, 0, None)[None]
    spread = 0.5 * np.log(det / (4.0 * np.sqrt(det_a * det_b) + _EPS) + _EPS)
    bhattacharyya = np.clip(0.25 * mahalanobis + spread, _EPS, 100.0)
    return 1.0 - np.sqrt(1.0 - np.exp(-bhattacharyya) + _EPS)


def rotated_nms(
    xywhr: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    class_ids: np.ndarray | None = None,
    max_detections: int | None = None,
) -> np.ndarray:
    """Indices kept by Fast-NMS with :func:`probiou`, best score first: a box is dropped when a better-scored box
    (of the same class, with ``class_ids``) overlaps it by ``iou_threshold`` or more, whether that one is kept."""
    scores = np.asarray(scores).reshape(-1)
    if len(scores) == 0 or max_detections == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    boxes = np.asarray(xywhr, dtype=np.float64).reshape(-1, 5)[order]
    overlap = np.triu(probiou(boxes, boxes), k=1)
    if class_ids is not None:
        ids = np.asarray(class_ids).reshape(-1)[order]
        overlap[ids[:, None] != ids[None, :]] = 0.0
    keep = order[~(overlap >= iou_threshold).any(axis=0)]
    return keep if max_detections is None else keep[:max_detections]


def regularize(xywhr: np.ndarray) -> np.ndarray:
    """The same rectangles with angles in [0, pi/2): width and height swap where the angle (mod pi) is past
    pi/2."""
    out = np.array(xywhr, dtype=np.float32).reshape(-1, 5)
    swap = np.mod(out[:, 4], math.pi) >= math.pi / 2
    out[swap, 2], out[swap, 3] = out[swap, 3].copy(), out[swap, 2].copy()
    out[:, 4] = np.mod(out[:, 4], math.pi / 2)
    return out


def rotated_to_source(xywhr: np.ndarray, transform: Transform) -> np.ndarray:
    """cx, cy, w, h, angle from model-input to source pixels. A letterbox scales both axes alike; under an
    anisotropic resize (stretch) the sides take the geometric mean of the two scales, an approximation."""
    out = np.array(xywhr, dtype=np.float32).reshape(-1, 5)
    out[:, 0] = (out[:, 0] - transform.pad_x) / transform.scale_x
    out[:, 1] = (out[:, 1] - transform.pad_y) / transform.scale_y
    out[:, 2:4] /= math.sqrt(transform.scale_x * transform.scale_y)
    return out


def enclosing_boxes(corners: np.ndarray, width: int, height: int) -> np.ndarray:
    """xyxy boxes around ``(N, 4, 2)`` corners, clipped to a ``width`` x ``height`` frame."""
    if len(corners) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    return boxes.astype(np.float32)


def _clip_polygon(subject: np.ndarray, edge_start: np.ndarray, edge_end: np.ndarray) -> np.ndarray:
    """The part of convex polygon ``subject`` on the left of the directed edge (Sutherland-Hodgman step)."""
    if len(subject) == 0:
        return subject
    ex, ey = edge_end - edge_start
    side = ex * (subject[:, 1] - edge_start[1]) - ey * (subject[:, 0] - edge_start[0])
    out = []
    for i in range(len(subject)):
        j = (i + 1) % len(subject)
        if side[i] >= 0:
            out.append(subject[i])
        if (side[i] >= 0) != (side[j] >= 0):
            t = side[i] / (side[i] - side[j])
            out.append(subject[i] + t * (subject[j] - subject[i]))
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def _area(polygon: np.ndarray) -> float:
    if len(polygon) < 3:
        return 0.0
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _counter_clockwise(corners: np.ndarray) -> np.ndarray:
    return corners if _signed_area(corners) >= 0 else corners[::-1]


def _signed_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def rotated_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact IoU ``(N, M)`` of rotated boxes given by their corners, ``a`` ``(N, 4, 2)`` and ``b`` ``(M, 4, 2)``
    (the intersection of the two convex quadrilaterals, clipped edge by edge)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4, 2)
    out = np.zeros((len(a), len(b)), dtype=np.float64)
    a_ccw = [_counter_clockwise(q) for q in a]
    b_ccw = [_counter_clockwise(q) for q in b]
    areas_a = [_area(q) for q in a_ccw]
    areas_b = [_area(q) for q in b_ccw]
    for i, qa in enumerate(a_ccw):
        lo_a, hi_a = qa.min(axis=0), qa.max(axis=0)
        for j, qb in enumerate(b_ccw):
            if np.any(qb.min(axis=0) > hi_a) or np.any(qb.max(axis=0) < lo_a):
                continue
            inter = qa
            for k in range(4):
                inter = _clip_polygon(inter, qb[k], qb[(k + 1) % 4])
            overlap = _area(inter)
            union = areas_a[i] + areas_b[j] - overlap
            out[i, j] = overlap / union if union > 0 else 0.0
    return out


class ObbPostprocessor:
    """Turns an oriented-box model's outputs into :class:`Detections` with :class:`RotatedBoxes`, in source
    pixels."""

    def __init__(
        self,
        config: ObbConfig,
        outputs: Sequence[TensorSpec],
        metadata: dict[str, str] | None = None,
        labels: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.labels = labels
        if len(outputs) != 1:
            raise ModelError(f"obb decoder expects one output [1, 4+C+1, A] or [1, N, 7], got "
                             f"{describe_outputs(outputs)}")
        self.layout = head_layout(config, outputs[0], metadata or {}, "obb")
        check_head(self.layout, outputs[0], 1, "obb", "angle")

    def __call__(self, outputs: list[np.ndarray], transform: Transform) -> Detections:
        cfg = self.config
        found = head_candidates(self.layout, outputs[0], cfg.conf_threshold, 1, "obb")
        xywhr = np.concatenate([found.boxes, found.extras[:, :1]], axis=1)  # both layouts: cx, cy, w, h first
        if self.layout == "yolov8":
            keep = rotated_nms(xywhr, found.scores, cfg.iou_threshold,
                               None if cfg.class_agnostic else found.class_ids, cfg.max_detections)
        else:
            keep = np.argsort(-found.scores, kind="stable")[: cfg.max_detections]
        rotated = RotatedBoxes(rotated_to_source(xywhr[keep], transform))
        boxes = enclosing_boxes(rotated.corners(), transform.source_width, transform.source_height)
        return Detections(boxes, found.scores[keep], found.class_ids[keep], self.labels, rotated=rotated)
