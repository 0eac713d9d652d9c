"""Polygon zones: entries, exits, occupancy, dwell time and loitering per track."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from lepton_edge.runtime.analytics.events import AnalyticsEvent
from lepton_edge.runtime.analytics.geometry import distance_to_edges, inside_polygon


@dataclass(slots=True)
class _Visit:
    entered_ts: float
    class_id: int
    label: str
    loitered: bool = False


class ZoneMonitor:
    """Which tracks are inside ``polygon`` and since when.

    A track enters as soon as its anchor is inside, and leaves only once it is at least ``hysteresis`` pixels
    outside (or its track ends): a track on the edge enters once, however it jitters. A visit longer than
    ``loiter_s`` raises one loitering event.
    """

    def __init__(self, name: str, polygon: np.ndarray, hysteresis: float, loiter_s: float | None) -> None:
        self.name = name
        self.polygon = polygon
        self.hysteresis = hysteresis
        self.loiter_s = loiter_s
        self.entered: Counter[str] = Counter()
        self._visits: dict[int, _Visit] = {}

    @property
    def occupancy(self) -> int:
        return len(self._visits)

    def update(
        self, ids: np.ndarray, class_ids: np.ndarray, labels: list[str], anchors: np.ndarray, t: float
    ) -> list[AnalyticsEvent]:
        events: list[AnalyticsEvent] = []
        if len(ids):
            inside = inside_polygon(anchors, self.polygon).tolist()
            clear = (distance_to_edges(anchors, self.polygon) >= self.hysteresis).tolist()
            for i, (tid, cls) in enumerate(zip(ids.tolist(), class_ids.tolist(), strict=True)):
                visit = self._visits.get(tid)
                if visit is None and inside[i]:
                    self._visits[tid] = _Visit(t, cls, labels[i])
                    self.entered[labels[i]] += 1
                    events.append(AnalyticsEvent("zone_enter", self.name, tid, cls, labels[i], t))
                elif visit is not None and not inside[i] and clear[i]:
                    events.append(self._exit(tid, t))
        for tid, visit in self._visits.items():
            if self.loiter_s is not None and not visit.loitered and t - visit.entered_ts >= self.loiter_s:
                visit.loitered = True
                events.append(
                    AnalyticsEvent(
                        "loitering", self.name, tid, visit.class_id, visit.label, t, dwell_s=t - visit.entered_ts
                    )
                )
        return events

    def _exit(self, tid: int, t: float) -> AnalyticsEvent:
        visit = self._visits.pop(tid)
        return AnalyticsEvent("zone_exit", self.name, tid, visit.class_id, visit.label, t, dwell_s=t - visit.entered_ts)

    def end(self, ended: tuple[int, ...], t: float) -> list[AnalyticsEvent]:
        """Tracks that ended leave the zone (their last dwell time is reported)."""
        return [self._exit(tid, t) for tid in ended if tid in self._visits]

    def dwell(self, tid: int, t: float) -> float | None:
        visit = self._visits.get(tid)
        return None if visit is None else t - visit.entered_ts

    def counts(self) -> dict[str, dict[str, int]]:
        occupancy = Counter(v.label for v in self._visits.values())
        return {"entered": dict(self.entered), "occupancy": dict(occupancy)}
