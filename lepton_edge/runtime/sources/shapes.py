"""The moving-shapes scene: the demo detector's training data and the ``synthetic://shapes`` source.

One renderer serves both, so the demo model sees at run time exactly the kind of image it was
trained on. Each scene is deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES: tuple[str, ...] = ("circle", "square", "triangle")


@dataclass(slots=True)
class Shape:
    class_id: int
    cx: float
    cy: float
    size: float
    """Circumradius in pixels."""
    angle: float
    color: tuple[int, int, int]
    vx: float = 0.0
    vy: float = 0.0
    spin: float = 0.0

    def polygon(self) -> np.ndarray:
        """Vertices (K, 2) float32 for squares and triangles; a 32-gon for circles."""
        n = {0: 32, 1: 4, 2: 3}[self.class_id]
        start = self.angle if self.class_id else 0.0
        t = start + np.arange(n) * (2 * np.pi / n)
        return np.stack([self.cx + self.size * np.cos(t), self.cy + self.size * np.sin(t)], 1).astype(np.float32)

    def box(self) -> np.ndarray:
        if self.class_id == 0:
            r = self.size
            return np.array([self.cx - r, self.cy - r, self.cx + r, self.cy + r], np.float32)
        p = self.polygon()
        return np.concatenate([p.min(0), p.max(0)])


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth two-colour gradient with fixed sensor-like noise."""
    import cv2

    c0 = rng.integers(20, 120, 3)
    c1 = rng.integers(60, 200, 3)
    gx = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    gy = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    w = 0.5 * gx + 0.5 * gy
    img = c0 * (1 - w) + c1 * w + rng.normal(0, 6, (height, width, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (3, 3), 0)


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour that stands out from the muted background."""
    c = rng.integers(0, 256, 3)
    c[rng.integers(0, 3)] = rng.integers(200, 256)
    return int(c[0]), int(c[1]), int(c[2])


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class ShapesScene:
    """Circles, squares and triangles moving and spinning over a noisy gradient.

    ``step()`` advances the animation; ``render()`` draws the current state; ``boxes()`` gives the
    ground truth (xyxy pixels, clipped to the image) and class ids.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        count: int | tuple[int, int] = (3, 6),
        seed: int = 0,
        min_size: float | None = None,
        max_size: float | None = None,
    ) -> None:
        if width < 32 or height < 32:
            raise ValueError(f"shapes scene needs at least 32x32 pixels, got {width}x{height}")
        self.width, self.height = width, height
        self.rng = np.random.default_rng(seed)
        short = min(width, height)
        self.min_size = min_size if min_size is not None else short * 0.04
        self.max_size = max_size if max_size is not None else short * 0.16
        lo, hi = (count, count) if isinstance(count, int) else count
        self.background = _background(self.rng, width, height)
        self.shapes: list[Shape] = []
        target = int(self.rng.integers(lo, hi + 1))
        for _ in range(target * 20):
            if len(self.shapes) == target:
                break
            shape = self._random_shape()
            if all(_box_iou(shape.box(), s.box()) < 0.1 for s in self.shapes):
                self.shapes.append(shape)

    def _random_shape(self) -> Shape:
        rng = self.rng
        size = float(rng.uniform(self.min_size, self.max_size))
        speed = float(rng.uniform(20, 120))
        heading = float(rng.uniform(0, 2 * np.pi))
        return Shape(
            class_id=int(rng.integers(0, len(CLASSES))),
            cx=float(rng.uniform(size, self.width - size)),
            cy=float(rng.uniform(size, self.height - size)),
            size=size,
            angle=float(rng.uniform(0, 2 * np.pi)),
            color=_random_color(rng),
            vx=speed * np.cos(heading),
            vy=speed * np.sin(heading),
            spin=float(rng.uniform(-1.5, 1.5)),
        )

    def step(self, dt: float) -> None:
        """Move every shape by ``dt`` seconds, bouncing off the borders."""
        for s in self.shapes:
            s.cx += s.vx * dt
            s.cy += s.vy * dt
            s.angle += s.spin * dt
            if not s.size <= s.cx <= self.width - s.size:
                s.vx = -s.vx
                s.cx = min(max(s.cx, s.size), self.width - s.size)
            if not s.size <= s.cy <= self.height - s.size:
                s.vy = -s.vy
                s.cy = min(max(s.cy, s.size), self.height - s.size)

    def render(self, out: np.ndarray | None = None) -> np.ndarray:
        """Draw the scene into ``out`` (allocated when None) and return it: HxWx3 BGR uint8."""
        import cv2

        if out is None:
            out = self.background.copy()
        else:
            np.copyto(out, self.background)
        for s in self.shapes:
            if s.class_id == 0:
                cv2.circle(out, (round(s.cx), round(s.cy)), round(s.size), s.color, -1, cv2.LINE_AA)
            else:
                pts = np.round(s.polygon()).astype(np.int32)
                cv2.fillPoly(out, [pts], s.color, cv2.LINE_AA)
        return out

    def boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """Ground truth: boxes ``(N, 4)`` xyxy clipped to the image, class ids ``(N,)``."""
        if not self.shapes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        b = np.stack([s.box() for s in self.shapes])
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, self.width)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, self.height)
        return b.astype(np.float32), np.array([s.class_id for s in self.shapes], np.int64)


def random_sample(
    seed: int, width: int = 640, height: int = 480, count: tuple[int, int] = (1, 8)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One independent labelled image: (BGR image, boxes xyxy, class ids). Deterministic in ``seed``."""
    scene = ShapesScene(width, height, count=count, seed=seed)
    image = scene.render()
    boxes, classes = scene.boxes()
    return image, boxes, classes
