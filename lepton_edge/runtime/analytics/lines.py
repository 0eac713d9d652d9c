"""Directional counting on a line segment, decided between two observations of a track."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from lepton_edge.runtime.analytics.events import AnalyticsEvent
from lepton_edge.runtime.analytics.geometry import crossing_within_segment, signed_distance_to_line


@dataclass(slots=True)
class _Pending:
    """A track just past the line, not yet clear of the band on the new side: the crossing it will count."""

    direction: str
    class_id: int
    label: str
    ts: float


class LineCounter:
    """Counts tracks crossing the segment ``start``-``end``.

    Each track keeps the side of the line it was last seen clearly on (at least ``hysteresis`` pixels away) and
    where. When a later observation is clearly on the other side, however many frames apart, the path between
    the two is a crossing if it meets the segment itself (not the line beyond its ends). A track wobbling on the
    line never leaves the band, so it does not count twice.

    A track that is past the line but still inside the band holds a pending crossing: it counts when the track
    goes clear on the new side, or when the track ends there (lost, or the stream ended, just past the line: the
    event then carries the capture time it crossed at), and is dropped if the track comes back.
    """

    def __init__(self, name: str, start: np.ndarray, end: np.ndarray, hysteresis: float) -> None:
        self.name = name
        self.start, self.end = start, end
        self.hysteresis = max(hysteresis, 1e-9)
        self.totals = {"in": 0, "out": 0}
        self.per_class: dict[str, Counter[str]] = {"in": Counter(), "out": Counter()}
        self._last: dict[int, tuple[np.ndarray, float]] = {}
        """Track id -> (its anchor and signed distance when last clearly on one side)."""
        self._pending: dict[int, _Pending] = {}

    def update(
        self, ids: np.ndarray, class_ids: np.ndarray, labels: list[str], anchors: np.ndarray, t: float
    ) -> list[AnalyticsEvent]:
        events: list[AnalyticsEvent] = []
        if not len(ids):
            return events
        distance = signed_distance_to_line(anchors, self.start, self.end)
        last, pending = self._last, self._pending
        for i, (tid, s1) in enumerate(zip(ids.tolist(), distance.tolist(), strict=True)):
            previous = last.get(tid)
            clear = abs(s1) >= self.hysteresis
            if s1 == 0.0:
                continue  # exactly on the line: on neither side
            if previous is None or (previous[1] > 0) == (s1 > 0):
                pending.pop(tid, None)  # on its side again (or never clear yet): whatever wobble it made is over
                if clear:
                    last[tid] = (anchors[i], s1)
                continue
            meets = crossing_within_segment(previous[0], previous[1], anchors[i], s1, self.start, self.end)
            direction = "in" if s1 > 0 else "out"
            if not clear:
                if meets and tid not in pending:
                    pending[tid] = _Pending(direction, int(class_ids[i]), labels[i], t)
                continue
            last[tid] = (anchors[i], s1)
            pending.pop(tid, None)
            if meets:
                events.append(self._count(tid, direction, int(class_ids[i]), labels[i], t))
        return events

    def _count(self, tid: int, direction: str, class_id: int, label: str, t: float) -> AnalyticsEvent:
        self.totals[direction] += 1
        self.per_class[direction][label] += 1
        return AnalyticsEvent("line_crossed", self.name, tid, class_id, label, t, direction=direction)

    def finish(self, ended: tuple[int, ...]) -> list[AnalyticsEvent]:
        """Tracks that ended: a crossing they were making (past the line, inside the band) counts."""
        events = []
        for tid in ended:
            self._last.pop(tid, None)
            p = self._pending.pop(tid, None)
            if p is not None:
                events.append(self._count(tid, p.direction, p.class_id, p.label, p.ts))
        return events

    def counts(self) -> dict[str, dict[str, int]]:
        return {d: dict(c) for d, c in self.per_class.items()}
