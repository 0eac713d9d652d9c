"""Zones, lines and loitering of one stream, updated with each frame's tracked detections."""

from __future__ import annotations

import numpy as np

from lepton_edge.config.pipeline import AnalyticsConfig
from lepton_edge.core.results import Detections
from lepton_edge.runtime.analytics.events import AnalyticsEvent, AnalyticsFrame, Geometry
from lepton_edge.runtime.analytics.lines import LineCounter
from lepton_edge.runtime.analytics.zones import ZoneMonitor


def anchor_points(boxes: np.ndarray, anchor: str) -> np.ndarray:
    """The point of each xyxy box that zones and lines see: its bottom centre or its centre."""
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    y = boxes[:, 3] if anchor == "bottom_center" else (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([x, y], axis=1).astype(np.float64)


class Analytics:
    """Runs every zone and line of ``config`` on tracked detections.

    Geometry in normalised coordinates is scaled to the first frame's size (a stream keeps its size; a new size
    starts the counters again).
    """

    def __init__(self, config: AnalyticsConfig) -> None:
        self.config = config
        self._size: tuple[int, int] | None = None
        self.zones: list[tuple[ZoneMonitor, frozenset[str]]] = []
        self.lines: list[tuple[LineCounter, frozenset[str]]] = []
        self._next_counts_ts: float | None = None
        self._geometry = Geometry({}, {})
        self._seen: set[int] = set()

    def _build(self, width: int, height: int) -> None:
        cfg = self.config
        scale = np.array([width, height], np.float64) if cfg.coordinates == "normalized" else np.ones(2)
        self.zones = [
            (
                ZoneMonitor(z.name, np.array(z.polygon, np.float64) * scale, cfg.hysteresis_px, z.loiter_s),
                frozenset(z.classes),
            )
            for z in cfg.zones
        ]
        self.lines = [
            (
                LineCounter(
                    ln.name,
                    np.array(ln.start, np.float64) * scale,
                    np.array(ln.end, np.float64) * scale,
                    cfg.hysteresis_px,
                ),
                frozenset(ln.classes),
            )
            for ln in cfg.lines
        ]
        self._size = (width, height)
        self._geometry = Geometry(
            {z.name: z.polygon for z, _ in self.zones},
            {ln.name: np.stack([ln.start, ln.end]) for ln, _ in self.lines},
        )

    def update(
        self, detections: Detections, t: float, frame_size: tuple[int, int], ended: tuple[int, ...] = ()
    ) -> AnalyticsFrame:
        """One frame: ``frame_size`` is (width, height) in source pixels, ``ended`` the ids of tracks that ended."""
        if self._size != frame_size:
            self._build(*frame_size)
        tracks = detections.tracks
        on = np.flatnonzero(tracks.ids >= 0) if tracks is not None else np.zeros(0, np.int64)
        ids = tracks.ids[on] if tracks is not None else on
        class_ids = detections.class_ids[on]
        labels = [detections.label(c) for c in class_ids.tolist()]
        boxes = tracks.smoothed if tracks is not None else detections.boxes
        anchors = anchor_points(boxes[on], self.config.anchor)
        events: list[AnalyticsEvent] = []
        if self.config.appeared:
            events += self._appeared(ids, class_ids, labels, detections.scores[on], t, ended)
        for zone, classes in self.zones:
            events += zone.end(ended, t)
            pick = self._pick(labels, classes)
            events += zone.update(ids[pick], class_ids[pick], [labels[i] for i in pick], anchors[pick], t)
        for line, classes in self.lines:
            events += line.finish(ended)
            pick = self._pick(labels, classes)
            events += line.update(ids[pick], class_ids[pick], [labels[i] for i in pick], anchors[pick], t)
        return AnalyticsFrame(
            tuple(events),
            {line.name: dict(line.totals) for line, _ in self.lines},
            {zone.name: zone.occupancy for zone, _ in self.zones},
            self._geometry,
            self._counts(t),
        )

    def _appeared(
        self, ids: np.ndarray, class_ids: np.ndarray, labels: list[str], scores: np.ndarray, t: float,
        ended: tuple[int, ...],
    ) -> list[AnalyticsEvent]:
        """One ``appeared`` event per track, on its first frame as a confirmed track."""
        self._seen.difference_update(ended)
        new = [i for i, track in enumerate(ids.tolist()) if track not in self._seen]
        self._seen.update(int(ids[i]) for i in new)
        return [
            AnalyticsEvent("appeared", "", int(ids[i]), int(class_ids[i]), labels[i], t, confidence=float(scores[i]))
            for i in new
        ]

    @staticmethod
    def _pick(labels: list[str], classes: frozenset[str]) -> np.ndarray:
        if not classes:
            return np.arange(len(labels))
        return np.array([i for i, label in enumerate(labels) if label in classes], np.int64)

    def _counts(self, t: float) -> dict[str, object] | None:
        if self._next_counts_ts is None:
            self._next_counts_ts = t + self.config.counts_interval_s
        if t < self._next_counts_ts:
            return None
        self._next_counts_ts = t + self.config.counts_interval_s
        return {
            "lines": {line.name: line.counts() for line, _ in self.lines},
            "zones": {zone.name: zone.counts() for zone, _ in self.zones},
        }
