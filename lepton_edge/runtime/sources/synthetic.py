"""``synthetic://shapes``: the moving-shapes scene as a source, for demos, tests and benchmarks."""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np

from lepton_edge.core.errors import SourceError
from lepton_edge.runtime.sources.base import Source
from lepton_edge.runtime.sources.reader import Pacer, float_param, import_cv2, int_param, mask_uri, parse_query
from lepton_edge.runtime.sources.shapes import ShapesScene

SCENES = ("shapes",)
UNTHROTTLED_STEP_S = 1 / 30
"""Animation step per frame when fps=0, so unthrottled runs are deterministic."""


def _count(raw: str) -> tuple[int, int]:
    lo, sep, hi = raw.partition("-")
    try:
        bounds = (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise ValueError("expected a number of shapes or a range such as 3-6") from None
    if bounds[0] < 0 or bounds[0] > bounds[1]:
        raise ValueError("expected 0 <= low <= high")
    return bounds


PARAMS = {
    "fps": float_param(0.0),
    "width": int_param(32),
    "height": int_param(32),
    "count": _count,
    "seed": int_param(0),
    "frames": int_param(0),
}


class SyntheticSource(Source):
    """Rendered frames of a :class:`ShapesScene`.

    ``synthetic://shapes?fps=30&width=640&height=480&count=3-6&seed=0&frames=0``. With ``fps > 0`` it
    is live: frames are released on a fixed schedule and the scene moves by the real elapsed time. With
    ``fps=0`` it is offline and unthrottled, and each frame advances the scene by a fixed 1/30 s, so the
    sequence is the same for a given seed. ``frames=N`` ends after N frames (0: endless).
    """

    kind: Literal["image", "tensor"] = "image"

    def __init__(self, uri: str) -> None:
        self.uri = uri
        rest = uri.split("://", 1)[1]
        scene, _, query = rest.partition("?")
        scene = scene.rstrip("/")
        if scene not in SCENES:
            raise SourceError(
                f"{mask_uri(uri)}: unknown synthetic scene {scene!r}; available: {', '.join(SCENES)}"
            )
        p = parse_query(uri, query, PARAMS)
        self.fps: float = p.get("fps", 30.0)
        self.width: int = p.get("width", 640)
        self.height: int = p.get("height", 480)
        self.count: tuple[int, int] = p.get("count", (3, 6))
        self.seed: int = p.get("seed", 0)
        self.frame_limit: int = p.get("frames", 0)
        self.live = self.fps > 0
        self.finite = self.frame_limit > 0
        self._scene: ShapesScene | None = None
        self._produced = 0
        self._pacer: Pacer | None = None
        self._last_render: float | None = None

    def open(self) -> None:
        import_cv2()
        self._scene = ShapesScene(self.width, self.height, count=self.count, seed=self.seed)
        self._produced = 0
        self._last_render = None
        self._pacer = Pacer(self.fps) if self.fps > 0 else None

    @property
    def scene(self) -> ShapesScene | None:
        """The scene in its current state (its ``boxes()`` match the last frame returned)."""
        return self._scene

    def read(self) -> np.ndarray | None:
        if self._scene is None:
            raise SourceError(f"{self.uri}: read() called before open()")
        if self.frame_limit and self._produced >= self.frame_limit:
            return None
        if self._pacer is not None:
            self._pacer.wait()
            now = time.monotonic()
            if self._last_render is not None:
                self._scene.step(now - self._last_render)
            self._last_render = now
        elif self._produced:
            self._scene.step(UNTHROTTLED_STEP_S)
        self._produced += 1
        return self._scene.render()

    def close(self) -> None:
        self._scene, self._pacer = None, None

    def describe(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "live": self.live,
            "kind": self.kind,
            "scene": "shapes",
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "count": list(self.count),
            "seed": self.seed,
            "frames": self.frame_limit or None,
        }
