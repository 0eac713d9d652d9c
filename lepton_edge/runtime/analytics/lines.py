"""Directional counting on a line segment, decided between two observations of a track."""

from __future__ import annotations

from collections import Counter

import numpy as np

from lepton_edge.runtime.analytics.events import AnalyticsEvent
from lepton_edge.runtime.analytics.geometry import crossing_within_segment, signed_distance_to_line


class LineCounter:
    """Counts tracks crossing the segment ``start``-``end``.

    Each track keeps the side of the line it was last seen clearly on (at least ``hysteresis`` pixels away) and
    where. When a later observation is clearly on the other side, however many frames apart, the path between
    the two is a crossing if it meets the segment itself (not the line beyond its ends). A track wobbling on the
    line never leaves the band, so it does not count twice.
    """

    def __init__(self, name: str, start: np.ndarray, end: np.ndarray, hysteresis: float) -> None:
        self.name = name
        self.start, self.end = start, end
        self.hysteresis = hysteresis
        self.totals = {"in": 0, "out": 0}
        self.per_class: dict[str, Counter[str]] = {"in": Counter(), "out": Counter()}
        self._last: dict[int, tuple[np.ndarray, float]] = {}
        """Track id -> (its anchor and signed distance when last clearly on one side)."""

    def update(
        self, ids: np.ndarray, class_ids: np.ndarray, labels: list[str], anchors: np.ndarray, t: float
    ) -> list[AnalyticsEvent]:
        events: list[AnalyticsEvent] = []
        if not len(ids):
            return events
        distance = signed_distance_to_line(anchors, self.start, self.end)
        clear = np.flatnonzero(np.abs(distance) >= max(self.hysteresis, 1e-9))
        last = self._last
        for i, tid, s1 in zip(clear.tolist(), ids[clear].tolist(), distance[clear].tolist(), strict=True):
            previous = last.get(tid)
            last[tid] = (anchors[i], s1)
            if previous is None or (previous[1] > 0) == (s1 > 0):
                continue
            if not crossing_within_segment(previous[0], previous[1], anchors[i], s1, self.start, self.end):
                continue
            direction = "in" if s1 > 0 else "out"
            self.totals[direction] += 1
            self.per_class[direction][labels[i]] += 1
            events.append(
                AnalyticsEvent("line_crossed", self.name, tid, int(class_ids[i]), labels[i], t, direction=direction)
            )
        return events

    def forget(self, ended: tuple[int, ...]) -> None:
        for tid in ended:
            self._last.pop(tid, None)

    def counts(self) -> dict[str, dict[str, int]]:
        return {d: dict(c) for d, c in self.per_class.items()}
