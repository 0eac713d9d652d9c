"""A constant-velocity Kalman filter over box centre and size, in capture-time seconds, for many tracks at once.

Each of the four box coordinates (centre x, centre y, width, height) is an independent position/velocity pair:
with a diagonal measurement noise and a process noise that does not couple coordinates, the 8-state filter
ByteTrack uses splits exactly into four 2-state filters, which keeps every step a few vector operations over all
tracks. Prediction takes the real time between frames: the state moves by ``velocity * dt`` and the uncertainty
grows with ``dt`` (continuous white-noise acceleration: ``q*dt^3/3``, ``q*dt^2/2``, ``q*dt``), so a dropped or late
frame widens the prediction instead of leaving it a frame behind.
"""

from __future__ import annotations

import numpy as np

SIZE_NOISE_RATIO = 0.25
"""Width and height change more slowly than the centre moves: their process noise is this fraction."""
INITIAL_SPEED_SPREAD = 4.0
"""Prior spread of a new track's velocity, in box heights per second (unknown until its second detection)."""


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    out = np.empty_like(boxes, dtype=np.float64)
    out[:, 0] = (boxes[:, 0] + boxes[:, 2]) / 2
    out[:, 1] = (boxes[:, 1] + boxes[:, 3]) / 2
    out[:, 2] = boxes[:, 2] - boxes[:, 0]
    out[:, 3] = boxes[:, 3] - boxes[:, 1]
    return out


def cxcywh_to_xyxy(state: np.ndarray) -> np.ndarray:
    half = np.maximum(state[:, 2:4], 1.0) / 2
    return np.concatenate([state[:, :2] - half, state[:, :2] + half], axis=1)


class BoxMotion:
    """Positions ``x``, velocities ``v`` and covariances (``p00``, ``p01``, ``p11``), each ``(N, 4)``, of N tracks.

    ``accel`` is the acceleration spread in box heights per second squared; ``measure`` the spread of a
    detected coordinate as a fraction of the box height.
    """

    def __init__(self, accel: float, measure: float) -> None:
        self.accel = accel
        self.measure = measure
        self.x = np.zeros((0, 4))
        self.v = np.zeros((0, 4))
        self.p00 = np.zeros((0, 4))
        self.p01 = np.zeros((0, 4))
        self.p11 = np.zeros((0, 4))
        self._scale = np.array([1.0, 1.0, SIZE_NOISE_RATIO, SIZE_NOISE_RATIO])

    def __len__(self) -> int:
        return len(self.x)

    def _height(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x[:, 3:4], 1.0)

    def measurement_var(self, x: np.ndarray | None = None) -> np.ndarray:
        """Variance of a detected coordinate for boxes ``x`` (default: the tracks' own), ``(N, 4)``."""
        h = self._height(self.x if x is None else x)
        return (self.measure * h) ** 2 * np.ones(4)

    def add(self, boxes_xyxy: np.ndarray) -> None:
        """Start tracks at ``boxes`` with zero velocity and a wide velocity prior."""
        z = xyxy_to_cxcywh(boxes_xyxy)
        h = self._height(z)
        r = self.measurement_var(z)
        self.x = np.concatenate([self.x, z])
        self.v = np.concatenate([self.v, np.zeros_like(z)])
        self.p00 = np.concatenate([self.p00, r])
        self.p01 = np.concatenate([self.p01, np.zeros_like(z)])
        self.p11 = np.concatenate([self.p11, (INITIAL_SPEED_SPREAD * h * self._scale) ** 2])

    def keep(self, mask: np.ndarray) -> None:
        for name in ("x", "v", "p00", "p01", "p11"):
            setattr(self, name, getattr(self, name)[mask])

    def predict(self, dt: float) -> None:
        """Move every track ``dt`` seconds forward."""
        if dt <= 0 or not len(self.x):
            return
        q = (self.accel * self._height(self.x) * self._scale) ** 2
        self.x = self.x + self.v * dt
        self.p00 = self.p00 + 2 * dt * self.p01 + dt * dt * self.p11 + q * dt**3 / 3
        self.p01 = self.p01 + dt * self.p11 + q * dt**2 / 2
        self.p11 = self.p11 + q * dt

    def update(self, rows: np.ndarray, boxes_xyxy: np.ndarray) -> None:
        """Correct tracks ``rows`` with their detected boxes."""
        if not len(rows):
            return
        z = xyxy_to_cxcywh(boxes_xyxy)
        x, v, p00, p01, p11 = (a[rows] for a in (self.x, self.v, self.p00, self.p01, self.p11))
        s = p00 + self.measurement_var(x)
        k0, k1 = p00 / s, p01 / s
        innovation = z - x
        self.x[rows] = x + k0 * innovation
        self.v[rows] = v + k1 * innovation
        self.p00[rows] = (1 - k0) * p00
        self.p01[rows] = (1 - k0) * p01
        self.p11[rows] = p11 - k1 * p01

    def boxes(self) -> np.ndarray:
        """Current (predicted or corrected) boxes, xyxy ``(N, 4)``."""
        return cxcywh_to_xyxy(self.x)

    def centre_distance2(self, rows: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance ``(rows, boxes)`` between the predicted centre of each track in ``rows``
        and each box's centre, with the prediction's uncertainty plus the detection's."""
        z = xyxy_to_cxcywh(boxes_xyxy)
        x = self.x[rows]
        var = (self.p00[rows, :2] + self.measurement_var(x)[:, :2])[:, None, :]
        d = z[None, :, :2] - x[:, None, :2]
        return (d * d / var).sum(axis=2)
