"""An annotated video file: boxes, labels, scores and the frame's latency drawn on the source frame."""

from __future__ import annotations

import numpy as np

from lepton_edge.config.pipeline import VideoSinkConfig
from lepton_edge.core.errors import ConfigError
from lepton_edge.core.results import Classification, Detections, Result
from lepton_edge.runtime.sinks.base import Sink

_PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207),
            (10, 249, 72), (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0)]


def annotate(image: np.ndarray, result: Result) -> np.ndarray:
    """Draw ``result`` on a copy of ``image`` (BGR)."""
    import cv2

    out = image.copy()
    output = result.output
    if isinstance(output, Detections):
        for box, score, cls in zip(output.boxes, output.scores, output.class_ids, strict=True):
            color = _PALETTE[int(cls) % len(_PALETTE)]
            x1, y1, x2, y2 = (round(float(v)) for v in box)
            cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
            text = f"{output.label(int(cls))} {score:.2f}"
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
            cv2.rectangle(out, (x1, max(0, y1 - th - 6)), (x1 + tw + 4, y1), color, -1)
            cv2.putText(out, text, (x1 + 2, max(th, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                        cv2.LINE_AA)
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

    def release(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
