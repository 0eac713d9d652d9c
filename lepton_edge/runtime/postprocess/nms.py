"""Greedy non-maximum suppression and pairwise IoU, vectorised with numpy."""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``a`` ``(N, 4)`` and ``b`` ``(M, 4)`` as an ``(N, M)`` array.

    Boxes with zero or negative area have IoU 0 with everything.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = _areas(a)[:, None]
    area_b = _areas(b)[None, :]
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    class_ids: np.ndarray | None = None,
    max_detections: int | None = None,
) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, best score first.

    A box is suppressed when its IoU with a kept, higher-scoring box is above ``iou_threshold``.
    With ``class_ids``, only boxes of the same class suppress each other. Equal scores keep the
    lower index first. At most ``max_detections`` indices are returned when it is given.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"nms: {len(boxes)} boxes but {len(scores)} scores")
    if len(boxes) == 0 or max_detections == 0:
        return np.zeros(0, dtype=np.int64)
    areas = _areas(boxes)
    if class_ids is not None:
        class_ids = np.asarray(class_ids).reshape(-1)
        if len(class_ids) != len(boxes):
            raise ValueError(f"nms: {len(boxes)} boxes but {len(class_ids)} class ids")
        # Shift each class into its own region so boxes of different classes never overlap.
        span = float(boxes.max() - boxes.min()) + 1.0
        boxes = boxes + (class_ids.astype(np.float64) * span)[:, None]
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, i]) for i in range(4))
    order = np.argsort(-scores, kind="stable")
    limit = len(order) if max_detections is None else max_detections
    keep: list[int] = []
    while order.size:
        best = order[0]
        keep.append(int(best))
        if len(keep) >= limit:
            break
        rest = order[1:]
        w = np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest])
        h = np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest])
        inter = np.clip(w, 0, None) * np.clip(h, 0, None)
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
