"""Plane geometry for analytics, vectorised over points: sides of a line, inside a polygon, distance to its edges."""

from __future__ import annotations

import numpy as np


def signed_distance_to_line(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance ``(N,)`` of each point from the infinite line start->end, positive on the right-hand side when
    walking from start to end on an image (y down)."""
    d = end - start
    rel = points - start
    return (d[0] * rel[:, 1] - d[1] * rel[:, 0]) / float(np.hypot(*d))


def crossing_within_segment(
    p0: np.ndarray, s0: float, p1: np.ndarray, s1: float, start: np.ndarray, end: np.ndarray
) -> bool:
    """Whether the path p0 -> p1, whose signed distances from the line are ``s0`` and ``s1`` (opposite signs),
    meets the line between ``start`` and ``end``."""
    x = p0 + (p1 - p0) * (s0 / (s0 - s1))
    d = end - start
    u = float(np.dot(x - start, d) / np.dot(d, d))
    return 0.0 <= u <= 1.0


def inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule: which points ``(N, 2)`` lie inside ``polygon`` ``(P, 2)``."""
    x, y = points[:, 0:1], points[:, 1:2]
    a, b = polygon, np.roll(polygon, -1, axis=0)
    straddles = (a[None, :, 1] > y) != (b[None, :, 1] > y)
    dy = np.where(b[:, 1] == a[:, 1], 1e-12, b[:, 1] - a[:, 1])
    x_at_y = a[None, :, 0] + (y - a[None, :, 1]) * (b[None, :, 0] - a[None, :, 0]) / dy[None, :]
    return ((straddles & (x < x_at_y)).sum(axis=1) % 2) == 1


def distance_to_edges(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Distance ``(N,)`` from each point to the polygon's nearest edge."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab = b - a
    length2 = np.maximum((ab * ab).sum(axis=1), 1e-12)
    rel = points[:, None, :] - a[None, :, :]
    u = np.clip((rel * ab[None]).sum(axis=2) / length2[None], 0.0, 1.0)
    nearest = a[None] + u[..., None] * ab[None]
    return np.sqrt(((points[:, None, :] - nearest) ** 2).sum(axis=2)).min(axis=1)
