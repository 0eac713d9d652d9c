"""Accuracy metrics for the accuracy gate and the bundled models: detection mAP and top-1 accuracy.

Detection AP comes from pycocotools (``coco_metrics.py``); the rest is numpy. No training framework.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lepton_edge.core.results import Detections
from lepton_edge.engines.evaluation.coco_metrics import coco_average_precision

_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(N, M)`` of xyxy boxes ``a`` ``(N, 4)`` and ``b`` ``(M, 4)``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO-style 101-point interpolated AP of a precision/recall curve ordered by falling score.

    For a curve at hand; :func:`mean_average_precision` gets its APs from pycocotools instead.
    """
    recall = np.asarray(recall, np.float64)
    if recall.size == 0:
        return 0.0
    # Interpolated precision: the best precision at any recall at least as high.
    envelope = np.maximum.accumulate(np.asarray(precision, np.float64)[::-1])[::-1]
    idx = np.searchsorted(recall, _RECALL_POINTS, side="left")
    sampled = np.where(idx < recall.size, envelope[np.minimum(idx, recall.size - 1)], 0.0)
    return float(sampled.mean())


def _check_inputs(
    predictions: list[Detections], ground_truth: list[tuple[np.ndarray, np.ndarray]], num_classes: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(predictions) != len(ground_truth):
        raise ValueError(
            f"mean_average_precision: {len(predictions)} predictions but {len(ground_truth)} ground-truth "
            "entries; pass one Detections and one (boxes, class_ids) pair per image, in the same order"
        )
    if num_classes < 1:
        raise ValueError(f"mean_average_precision: num_classes must be >= 1, got {num_classes}")
    checked = []
    for i, (det, gt) in enumerate(zip(predictions, ground_truth, strict=True)):
        if not isinstance(det, Detections):
            raise TypeError(
                f"mean_average_precision: predictions[{i}] is {type(det).__name__}, not Detections"
            )
        boxes, classes = gt
        boxes = np.asarray(boxes, np.float64)
        classes = np.asarray(classes).reshape(-1)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != len(classes):
            raise ValueError(
                f"mean_average_precision: ground_truth[{i}] must be (boxes (N, 4) xyxy, class_ids (N,)), "
                f"got boxes {boxes.shape} and class_ids {classes.shape}"
            )
        for what, ids in (("ground_truth", classes), ("predictions", det.class_ids)):
            bad = ids[(ids < 0) | (ids >= num_classes)]
            if bad.size:
                raise ValueError(
                    f"mean_average_precision: {what}[{i}] has class id {int(bad[0])} outside "
                    f"0..{num_classes - 1}; check num_classes against the model's labels"
                )
        checked.append((boxes, classes.astype(np.int64)))
    return checked


def mean_average_precision(
    predictions: list[Detections],
    ground_truth: list[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Detection mAP at one IoU threshold (mAP@0.5 by default), computed by pycocotools' ``COCOeval``.

    ``predictions[i]`` and ``ground_truth[i] = (boxes (N, 4) xyxy, class_ids (N,))`` describe image ``i``
    in the same pixel coordinates. COCO's evaluation restricted to one IoU threshold, all object sizes and
    at most 100 detections per image and class: per class, detections are ranked by score and
    each is matched to the unmatched object of its class with the highest IoU, if that IoU reaches
    ``iou_threshold``; unmatched ones (wrong place, wrong class, duplicates) are false positives; AP is the
    101-point interpolated precision. This equals the COCO AP50 of the same boxes.

    Unlike the hand-written version it replaces (same matching and interpolation, in numpy), only the
    100 highest-scoring detections per image and class count, and ties between equally good
    objects go to the later one, as in pycocotools.

    Returns ``{"map": float, "per_class": {class_id: ap}, "images": n}``. Classes without ground truth
    are left out of ``per_class`` and of the mean; ``map`` is NaN when no image has any object.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"mean_average_precision: iou_threshold must be in (0, 1], got {iou_threshold}")
    gt = _check_inputs(predictions, ground_truth, num_classes)
    per_class = coco_average_precision(predictions, gt, num_classes, iou_threshold)
    mean = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"map": mean, "per_class": per_class, "images": len(predictions)}


def top1_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose predicted class equals the label.

    ``predicted`` is either class ids ``(N,)`` or scores/logits ``(N, C)`` (the arg-max is taken).
    """
    predicted = np.asarray(predicted)
    labels = np.asarray(labels).reshape(-1)
    if predicted.ndim == 2:
        predicted = predicted.argmax(axis=1)
    elif predicted.ndim != 1:
        raise ValueError(
            f"top1_accuracy: predicted must be class ids (N,) or scores (N, C), got shape {predicted.shape}"
        )
    if len(predicted) != len(labels):
        raise ValueError(f"top1_accuracy: {len(predicted)} predictions but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("top1_accuracy: no samples; accuracy of an empty set is undefined")
    return float(np.mean(predicted == labels))
