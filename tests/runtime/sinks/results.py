"""Results with every kind of detection part, for the sink tests."""

from __future__ import annotations

import numpy as np

from lepton_edge.core.results import Detections, Keypoints, Masks, Result, RotatedBoxes

HEIGHT, WIDTH = 60, 80


def square_mask() -> Masks:
    """One mask: a 20x20 square with its top-left at (20, 30)."""
    return Masks((np.ones((20, 20), bool),), np.array([[20, 30]]), HEIGHT, WIDTH)


def segmented() -> Detections:
    return Detections([[20, 30, 40, 50]], [0.9], [1], ("cat", "dog"), masks=square_mask())


def posed() -> Detections:
    points = np.array([[[10, 10, 0.9], [30, 10, 0.9], [50, 50, 0.1]]], np.float32)  # the third is not visible
    return Detections([[5, 5, 55, 55]], [0.8], [0], ("person",), keypoints=Keypoints(points, ((0, 1), (1, 2))))


def rotated() -> Detections:
    xywhr = np.array([[40, 30, 30, 10, np.pi / 6]], np.float32)
    corners = RotatedBoxes(xywhr).corners()
    box = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    return Detections(box, [0.7], [2], ("a", "b", "ship"), rotated=RotatedBoxes(xywhr))


def result(output: Detections, seq: int = 1, image: bool = False) -> Result:
    return Result(output, seq, "cam", 1.0, 1700000000.0, {"infer": 1.0}, done_ts=1.01,
                  image=np.zeros((HEIGHT, WIDTH, 3), np.uint8) if image else None)
