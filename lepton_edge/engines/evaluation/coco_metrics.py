"""Detection AP by pycocotools, the COCO reference evaluation, so the numbers compare with published ones.

The images, objects and detections are handed to ``COCOeval`` in memory (category id = class id + 1,
image id = position + 1), evaluated at one IoU threshold, every object size and at most 100 detections
per image and class; pycocotools' progress prints are swallowed.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lepton_edge.core.results import Detections

MAX_DETECTIONS = 100
"""Detections scored per image and class, the highest-scoring first (COCO's maxDets)."""
_DECIMALS = 12
"""APs are rounded to this many decimals: pycocotools divides by ``tp + fp + eps``, so a perfect AP would
otherwise read 0.9999999999999998."""


def coco_average_precision(
    predictions: list[Detections], ground_truth: list[tuple[np.ndarray, np.ndarray]], num_classes: int,
    iou_threshold: float,
) -> dict[int, float]:
    """AP per class at ``iou_threshold`` (101-point interpolation); classes without objects are left out."""
    images = [{"id": index + 1} for index in range(len(predictions))]
    categories = [{"id": class_id + 1} for class_id in range(num_classes)]
    truth = _coco({"images": images, "categories": categories, "annotations": _objects(ground_truth)})
    found = _coco({"images": images, "categories": categories, "annotations": _detections(predictions)})
    evaluation = COCOeval(truth, found, iouType="bbox")
    evaluation.params.iouThrs = np.array([iou_threshold])
    evaluation.params.areaRng = [[0.0, float("inf")]]
    evaluation.params.areaRngLbl = ["all"]
    evaluation.params.maxDets = [MAX_DETECTIONS]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, :, 0, 0]  # [recall points, classes]
    return {
        class_id: round(float(precision[:, class_id].mean()), _DECIMALS)
        for class_id in range(num_classes)
        if (precision[:, class_id] > -1).all()  # -1: the class has no objects
    }


def _coco(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _annotation(serial: int, image: int, box: np.ndarray, class_id: int) -> dict[str, Any]:
    xywh = _xywh(box)
    area = xywh[2] * xywh[3]  # w * h as COCO.loadRes computes it, so the figures equal the library's own
    return {"id": serial, "image_id": image + 1, "category_id": int(class_id) + 1, "bbox": xywh, "area": area}


def _objects(ground_truth: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    rows = [
        (image, box, c)
        for image, (boxes, classes) in enumerate(ground_truth)
        for box, c in zip(boxes, classes, strict=True)
    ]
    return [{**_annotation(serial, *row), "iscrowd": 0} for serial, row in enumerate(rows, 1)]  # ids from 1: 0 = none


def _detections(predictions: list[Detections]) -> list[dict[str, Any]]:
    rows = [
        (image, box, c, score)
        for image, found in enumerate(predictions)
        for box, c, score in zip(found.boxes, found.class_ids, found.scores, strict=True)
    ]
    return [{**_annotation(serial, image, box, c), "score": float(score)} for serial, (image, box, c, score)
            in enumerate(rows, 1)]
