"""Accuracy metrics for the accuracy gate and the bundled models: detection mAP and top-1 accuracy.

numpy only, so the build tool and tests can measure a model without any training framework.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lepton_edge.core.results import Detections

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
    """COCO-style 101-point interpolated AP of a precision/recall curve ordered by falling score."""
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


def _class_ap(
    predictions: list[Detections], ground_truth: list[tuple[np.ndarray, np.ndarray]], cls: int,
    iou_threshold: float,
) -> tuple[float, int]:
    """AP of one class and its number of ground-truth objects."""
    gt_boxes = [boxes[classes == cls] for boxes, classes in ground_truth]
    n_gt = sum(len(b) for b in gt_boxes)
    image_ids, scores, boxes = [], [], []
    for i, det in enumerate(predictions):
        keep = det.class_ids == cls
        image_ids.append(np.full(int(keep.sum()), i))
        scores.append(det.scores[keep])
        boxes.append(det.boxes[keep])
    image_ids = np.concatenate(image_ids)
    scores = np.concatenate(scores)
    boxes = np.concatenate(boxes).reshape(-1, 4)
    if n_gt == 0:
        return float("nan"), 0
    order = np.argsort(-scores, kind="stable")
    matched = [np.zeros(len(b), bool) for b in gt_boxes]
    true_positive = np.zeros(len(order), bool)
    for rank, d in enumerate(order):
        img = image_ids[d]
        if not len(gt_boxes[img]):
            continue
        ious = box_iou(boxes[d], gt_boxes[img])[0]
        ious[matched[img]] = -1.0  # each object may be matched once; a duplicate is a false positive
        best = int(np.argmax(ious))
        if ious[best] >= iou_threshold:
            matched[img][best] = True
            true_positive[rank] = True
    tp = np.cumsum(true_positive)
    fp = np.cumsum(~true_positive)
    return average_precision(tp / n_gt, tp / np.maximum(tp + fp, 1)), n_gt


def mean_average_precision(
    predictions: list[Detections],
    ground_truth: list[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Detection mAP at one IoU threshold (mAP@0.5 by default), COCO-style 101-point interpolation.

    ``predictions[i]`` and ``ground_truth[i] = (boxes (N, 4) xyxy, class_ids (N,))`` describe image ``i``
    in the same pixel coordinates. Per class, detections from all images are ranked by score and each is
    matched greedily to the unmatched object of its class with the highest IoU, if that IoU reaches
    ``iou_threshold``; unmatched detections (wrong place, wrong class, duplicates) are false positives.

    Returns ``{"map": float, "per_class": {class_id: ap}, "images": n}``. Classes without ground truth
    are left out of ``per_class`` and of the mean; ``map`` is NaN when no image has any object.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"mean_average_precision: iou_threshold must be in (0, 1], got {iou_threshold}")
    gt = _check_inputs(predictions, ground_truth, num_classes)
    per_class: dict[int, float] = {}
    for cls in range(num_classes):
        ap, n_gt = _class_ap(predictions, gt, cls, iou_threshold)
        if n_gt:
            per_class[cls] = ap
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
