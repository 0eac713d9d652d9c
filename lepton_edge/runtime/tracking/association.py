"""Overlap and assignment: IoU between boxes and a gated linear assignment.

The solver is scipy's ``linear_sum_assignment`` (a maintained, well-tested LAPJV-style solver in a package most
Python installs already have, with wheels for x86_64 and aarch64); ``lap``/``lapx`` would add a compiled package
for the same answer at our sizes (tens of tracks).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

FORBIDDEN = 1e6
"""Cost given to pairs the gate rules out."""


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``(len(a), len(b))`` of xyxy boxes."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def assign(cost: np.ndarray, max_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the cheapest one-to-one assignment, keeping only pairs that cost at most ``max_cost``."""
    if not cost.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = linear_sum_assignment(np.where(cost <= max_cost, cost, FORBIDDEN))
    ok = cost[rows, cols] <= max_cost
    return rows[ok], cols[ok]
