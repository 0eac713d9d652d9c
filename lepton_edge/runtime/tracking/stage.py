"""Tracking and analytics as one step after postprocessing, one tracker (and one set of counters) per stream."""

from __future__ import annotations

from typing import Any

from lepton_edge.config.pipeline import AnalyticsConfig, TrackingConfig
from lepton_edge.core.results import Detections
from lepton_edge.runtime.analytics import Analytics, AnalyticsFrame
from lepton_edge.runtime.tracking.tracker import Tracker

MAX_STREAMS = 64
"""Streams tracked at once by one stage; the least recently seen one is forgotten beyond it."""


class TrackingStage:
    """Adds tracks (and, when configured, analytics) to detections; other outputs pass through untouched."""

    def __init__(self, tracking: TrackingConfig, analytics: AnalyticsConfig | None = None) -> None:
        self.tracking = tracking
        self.analytics = analytics
        self._streams: dict[str, tuple[Tracker, Analytics | None]] = {}

    def _stream(self, source_id: str) -> tuple[Tracker, Analytics | None]:
        stream = self._streams.pop(source_id, None)
        if stream is None:
            stream = (Tracker(self.tracking), Analytics(self.analytics) if self.analytics is not None else None)
            if len(self._streams) >= MAX_STREAMS:
                del self._streams[next(iter(self._streams))]
        self._streams[source_id] = stream  # most recent last
        return stream

    def __call__(
        self, output: Any, capture_ts: float, source_id: str, frame_size: tuple[int, int]
    ) -> tuple[Any, AnalyticsFrame | None]:
        """``output`` with its tracks, and this frame's analytics (None without an analytics section)."""
        if not isinstance(output, Detections):
            return output, None
        tracker, analytics = self._stream(source_id)
        update = tracker.update(output, capture_ts)
        if analytics is None:
            return update.detections, None
        return update.detections, analytics.update(update.detections, capture_ts, frame_size, update.ended)
