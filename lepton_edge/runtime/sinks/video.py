"""An annotated video file: boxes (or rotated boxes), translucent masks, keypoints with their skeleton, labels,
scores, track ids, zones and counting lines with their counts, and the frame's latency drawn on the source
frame."""

from __future__ import annotations

import numpy as np

from lepton_edge.config.pipeline import VideoSinkConfig
from lepton_edge.core.errors import ConfigError
from lepton_edge.core.results import Classification, Detections, Result
from lepton_edge.runtime.analytics import AnalyticsFrame
from lepton_edge.runtime.sinks.base import Sink, rotate

_PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207),
            (10, 249, 72), (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0)]
MASK_ALPHA = 0.45
SIZE_CHECK_FRAMES = 30
"""Frames between checks of the file's size against ``max_bytes``."""
"""Opacity of a mask's colour over the frame."""
KEYPOINT_MIN_CONF = 0.5
"""Keypoints (and the skeleton lines between them) with a lower visibility are not drawn, as Ultralytics does."""


def _color(class_id: int) -> tuple[int, int, int]:
    return _PALETTE[int(class_id) % len(_PALETTE)]


def draw_masks(out: np.ndarray, detections: Detections) -> None:
    """Blend each mask's class colour into ``out`` (in place) where the mask is set."""
    masks = detections.masks
    if masks is None or (masks.height, masks.width) != out.shape[:2]:
        return
    for crop, (x, y), cls in zip(masks.crops, masks.origins, detections.class_ids, strict=True):
        if crop.size == 0:
            continue
        region = out[y:y + crop.shape[0], x:x + crop.shape[1]]
        blended = region[crop] * (1 - MASK_ALPHA) + np.array(_color(cls), np.float32) * MASK_ALPHA
        region[crop] = blended.astype(out.dtype)


def draw_keypoints(out: np.ndarray, detections: Detections) -> None:
    """Dots on the visible keypoints and lines along the skeleton between visible pairs."""
    import cv2

    if detections.keypoints is None:
        return
    data, skeleton = detections.keypoints.data, detections.keypoints.skeleton
    for points, cls in zip(data, detections.class_ids, strict=True):
        visible = points[:, 2] >= KEYPOINT_MIN_CONF if points.shape[1] == 3 else np.ones(len(points), bool)
        xy = [(round(float(x)), round(float(y))) for x, y in points[:, :2]]
        for a, b in skeleton:
            if visible[a] and visible[b]:
                cv2.line(out, xy[a], xy[b], _color(cls), 2, cv2.LINE_AA)
        for (x, y), shown in zip(xy, visible, strict=True):
            if shown:
                cv2.circle(out, (x, y), 3, (255, 255, 255), -1, cv2.LINE_AA)
                cv2.circle(out, (x, y), 3, _color(cls), 1, cv2.LINE_AA)


def _label(out: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    import cv2

    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    cv2.rectangle(out, (x, max(0, y - th - 6)), (x + tw + 4, y), color, -1)
    cv2.putText(out, text, (x + 2, max(th, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)


def draw_detections(out: np.ndarray, detections: Detections) -> None:
    """Masks, then boxes (rotated ones as polygons) with labels, then keypoints."""
    import cv2

    draw_masks(out, detections)
    corners = detections.rotated.corners() if detections.rotated is not None else None
    for i, (box, score, cls) in enumerate(zip(detections.boxes, detections.scores, detections.class_ids,
                                               strict=True)):
        color = _color(cls)
        text = f"{detections.label(int(cls))} {score:.2f}"
        if detections.tracks is not None and detections.tracks.ids[i] >= 0:
            text = f"#{detections.tracks.ids[i]} {text}"
        if corners is not None:
            polygon = np.round(corners[i]).astype(np.int32)
            cv2.polylines(out, [polygon], True, color, 2, cv2.LINE_AA)
            top = polygon[np.argmin(polygon[:, 1])]
            _label(out, text, int(top[0]), int(top[1]), color)
            continue
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
        _label(out, text, x1, y1, color)
    draw_keypoints(out, detections)


def draw_analytics(out: np.ndarray, analytics: AnalyticsFrame) -> None:
    """Zones (outlined, with their occupancy) and counting lines (with their in/out totals)."""
    import cv2

    zone_color, line_color = (255, 200, 0), (0, 220, 255)
    for name, polygon in analytics.geometry.zones.items():
        points = np.round(polygon).astype(np.int32)
        cv2.polylines(out, [points], True, zone_color, 2, cv2.LINE_AA)
        x, y = points.min(axis=0)
        _label(out, f"{name}: {analytics.occupancy.get(name, 0)}", int(x), int(y) + 18, zone_color)
    for name, segment in analytics.geometry.lines.items():
        (x1, y1), (x2, y2) = np.round(segment).astype(int).tolist()
        cv2.line(out, (x1, y1), (x2, y2), line_color, 2, cv2.LINE_AA)
        totals = analytics.line_counts.get(name, {})
        _label(out, f"{name} in {totals.get('in', 0)} out {totals.get('out', 0)}", min(x1, x2),
               min(y1, y2), line_color)


def annotate(image: np.ndarray, result: Result) -> np.ndarray:
    """Draw ``result`` on a copy of ``image`` (BGR)."""
    import cv2

    out = image.copy()
    output = result.output
    if isinstance(result.analytics, AnalyticsFrame):
        draw_analytics(out, result.analytics)
    if isinstance(output, Detections):
        draw_detections(out, output)
    elif isinstance(output, Classification) and len(output):
        text = f"{output.label(int(output.class_ids[0]))} {output.scores[0]:.2f}"
        cv2.putText(out, text, (8, 44), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    info = f"#{result.seq}  latency {result.latency_ms:.1f} ms"
    cv2.putText(out, info, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, info, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class VideoSink(Sink):
    name = "video"
    needs_image = True

    def __init__(self, config: VideoSinkConfig) -> None:
        super().__init__(config.queue_size)
        self.config = config
        self.path = config.path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = None
        self._frames = 0
        self.rotations = 0

    def write(self, result: Result) -> None:
        import cv2

        image = result.image
        if image is None or image.ndim != 3:
            return
        if self._writer is None:
            h, w = image.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.config.codec),
                                           self.config.fps, (w, h))
            if not self._writer.isOpened():
                self._writer = None
                raise ConfigError(f"{self.path}: cannot open a video writer with codec {self.config.codec!r}")
            self._size = (w, h)
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size)
        self._writer.write(annotate(image, result))
        self._frames += 1
        if self._frames % SIZE_CHECK_FRAMES == 0 and self.path.stat().st_size >= self.config.max_bytes:
            self.release()  # the next frame opens a new file
            rotate(self.path)
            self.rotations += 1

    def stats(self) -> dict[str, object]:
        return {**super().stats(), "rotations": self.rotations}

    def release(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
