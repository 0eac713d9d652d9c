"""Typed analytics events and the per-frame analytics output a result carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

EventKind = Literal["zone_enter", "zone_exit", "line_crossed", "loitering", "appeared"]


@dataclass(frozen=True, slots=True)
class AnalyticsEvent:
    """Something a track did at capture time ``capture_ts``: entered or left zone ``name``, crossed line ``name``
    in ``direction`` (``in``/``out``), stayed in zone ``name`` longer than its loitering time, or appeared (was
    confirmed, with the detection's ``confidence``; ``name`` is empty)."""

    kind: EventKind
    name: str
    track_id: int
    class_id: int
    label: str
    capture_ts: float
    direction: Literal["in", "out"] | None = None
    dwell_s: float | None = None
    """Seconds in the zone (exit and loitering)."""
    confidence: float | None = None
    """Score of the detection that confirmed the track (appeared)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "track_id": self.track_id,
            "class_id": self.class_id,
            "label": self.label,
            "capture_ts": round(self.capture_ts, 6),
        }
        if self.direction is not None:
            out["direction"] = self.direction
        if self.dwell_s is not None:
            out["dwell_s"] = round(self.dwell_s, 3)
        if self.confidence is not None:
            out["confidence"] = round(self.confidence, 4)
        return out


@dataclass(frozen=True, slots=True)
class Geometry:
    """Zones and lines in source pixels, for drawing: ``zones[name]`` is a ``(P, 2)`` polygon, ``lines[name]``
    a ``(2, 2)`` segment."""

    zones: dict[str, np.ndarray]
    lines: dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class AnalyticsFrame:
    """One frame's analytics: the events it raised, the running totals, and (every ``counts_interval_s``) a
    counts snapshot to report."""

    events: tuple[AnalyticsEvent, ...]
    line_counts: dict[str, dict[str, int]]
    """Per line: crossings ``in`` and ``out`` since the start."""
    occupancy: dict[str, int]
    """Per zone: tracks inside now."""
    geometry: Geometry
    counts: dict[str, Any] | None = field(default=None)
    """Per-class counts (lines: crossings per direction; zones: entries and occupancy), on report frames only."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.events:
            out["events"] = [e.to_dict() for e in self.events]
        if self.counts is not None:
            out["counts"] = self.counts
        return out
