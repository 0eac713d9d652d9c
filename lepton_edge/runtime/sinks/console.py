"""A live table on the terminal (redrawn in place on a TTY, one line per interval otherwise), with the stream's line
and zone counts and its analytics events as they happen."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter, deque
from typing import TextIO

from lepton_edge.config.pipeline import ConsoleSinkConfig
from lepton_edge.core.metrics import RateMeter
from lepton_edge.core.results import Detections, RawOutputs, Result, now
from lepton_edge.runtime.analytics.events import AnalyticsEvent, AnalyticsFrame
from lepton_edge.runtime.sinks.base import Sink

TABLE_STAGES = ("decode", "queue", "preprocess", "infer", "postprocess", "e2e", "frame_age")
RECENT_EVENTS = 5
"""Events the table shows (newest last)."""
MAX_PENDING_EVENTS = 1000
"""Events waiting to be printed (one line each, without a TTY); beyond that the oldest are counted, not printed."""


def describe_event(event: AnalyticsEvent) -> str:
    """One line about an analytics event, e.g. ``line_crossed middle in: track 12 circle``."""
    what = " ".join(part for part in (event.kind, event.name, event.direction) if part)
    extra = ""
    if event.dwell_s is not None:
        extra = f" after {event.dwell_s:.1f} s"
    elif event.confidence is not None:
        extra = f" {event.confidence:.2f}"
    return f"{what}: track {event.track_id} {event.label}{extra}"


class AnalyticsTally:
    """What the console shows of a stream's analytics: the running line counts and zone occupancy of the newest
    frame, zone entries and events per kind since the start, and the recent events. Fed on the pipeline's thread
    (every result, also those the table skips), read on the sink's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.line_counts: dict[str, dict[str, int]] = {}
        self.occupancy: dict[str, int] = {}
        self.entries: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.recent: deque[str] = deque(maxlen=RECENT_EVENTS)
        self._pending: deque[str] = deque()
        self.unprinted = 0
        self.stream = ""

    def note(self, frame: AnalyticsFrame, stream: str) -> None:
        """Take one frame's analytics (of ``stream``: the result's source)."""
        with self._lock:
            self.stream = stream
            self.line_counts, self.occupancy = frame.line_counts, frame.occupancy
            for event in frame.events:
                self.kinds[event.kind] += 1
                if event.kind == "zone_enter":
                    self.entries[event.name] += 1
                line = f"{time.strftime('%H:%M:%S')} {stream}: {describe_event(event)}"
                self.recent.append(line)
                if len(self._pending) >= MAX_PENDING_EVENTS:
                    self._pending.popleft()
                    self.unprinted += 1
                self._pending.append(line)

    def take_pending(self) -> list[str]:
        """The events not yet printed, oldest first (after a line saying how many were skipped, if any)."""
        with self._lock:
            lines = list(self._pending)
            self._pending.clear()
            skipped, self.unprinted = self.unprinted, 0
        return ([f"({skipped} earlier event(s) not printed)"] if skipped else []) + lines

    def counts_line(self) -> str | None:
        """``cam: lines: middle in=3 out=2  zones: left-half now=2 entered=5  events: 12 (line_crossed 5, ...)``, or
        None before any analytics."""
        with self._lock:
            if not (self.line_counts or self.occupancy or self.kinds):
                return None
            lines = " ".join(f"{name} in={c.get('in', 0)} out={c.get('out', 0)}"
                             for name, c in sorted(self.line_counts.items()))
            zones = " ".join(f"{name} now={n} entered={self.entries[name]}"
                             for name, n in sorted(self.occupancy.items()))
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.kinds.items()))
            parts = [f"lines: {lines}" if lines else "", f"zones: {zones}" if zones else "",
                     f"events: {sum(self.kinds.values())}" + (f" ({kinds})" if kinds else "")]
        return f"{self.stream}: " + "  ".join(part for part in parts if part)


def summarize_output(result: Result, limit: int = 6) -> str:
    """One line about a result: how many detections (and masks, poses, rotated boxes) or classes, the first few
    with their scores, or the raw outputs."""
    output = result.output
    if isinstance(output, RawOutputs):
        return f"{len(output)} raw output(s)"
    items = [(output.label(int(c)), float(s)) for c, s in zip(output.class_ids, output.scores, strict=True)]
    shown = ", ".join(f"{label} {score:.2f}" for label, score in items[:limit])
    more = f" (+{len(items) - limit})" if len(items) > limit else ""
    text = f"{len(items)}: {shown}{more}" if items else "none"
    return text + (_parts(output) if isinstance(output, Detections) else "")


def _parts(detections: Detections) -> str:
    """What the detections carry besides boxes, e.g. `` [3 mask(s), 812 px; 3 pose(s) x 17 keypoints]``."""
    parts = []
    if detections.masks is not None:
        parts.append(f"{len(detections.masks)} mask(s), {int(detections.masks.areas().sum())} px")
    if detections.keypoints is not None:
        parts.append(f"{len(detections.keypoints)} pose(s) x {detections.keypoints.data.shape[1]} keypoints")
    if detections.rotated is not None:
        parts.append(f"{len(detections.rotated)} rotated")
    return f" [{'; '.join(parts)}]" if parts else ""


class ConsoleSink(Sink):
    name = "console"
    latest_only = True

    def __init__(self, config: ConsoleSinkConfig, stats, title: str = "", stream: TextIO | None = None) -> None:
        super().__init__(queue_size=1)
        self.interval = config.interval_s
        self.stats_source = stats
        self.rate = RateMeter(stats)
        self.title = title
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._next = now() + self.interval
        self._drawn_lines = 0
        self._last: Result | None = None
        self.analytics = AnalyticsTally()

    def offer(self, result: Result) -> bool:
        # The table shows only the newest result, but every frame's events and counts are noted (cheaply, here).
        if isinstance(result.analytics, AnalyticsFrame):
            self.analytics.note(result.analytics, result.source_id)
        return super().offer(result)

    def write(self, result: Result) -> None:
        self._last = result
        if not self.tty:
            self.print_events()
        if now() >= self._next:
            self._next = now() + self.interval
            self.draw()

    def print_events(self) -> None:
        """Without a TTY: one line per analytics event since the last call (with a TTY the table shows them)."""
        for line in self.analytics.take_pending():
            self.stream.write(f"event {line}\n")

    def render(self) -> list[str]:
        snap = self.stats_source.snapshot()
        fps = self.rate.update()
        drops = snap["drops"]
        drop_text = " ".join(f"{k}={v}" for k, v in sorted(drops.items())) or "none"
        lines = [
            f"lepton-edge {self.title}  state={snap['source_state']}  uptime {snap['uptime_s']:.1f} s",
            f"fps {fps:6.1f}   frames {snap['frames_in']}   results {snap['results']}   drops: {drop_text}",
            f"{'stage (ms)':<12}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}",
        ]
        for stage in TABLE_STAGES:
            s = snap["latency_ms"][stage]
            lines.append(f"{stage:<12}{s['p50']:9.2f}{s['p90']:9.2f}{s['p99']:9.2f}{s['max']:9.2f}")
        counts = self.analytics.counts_line()
        if counts is not None:
            lines.append(counts)
            lines += [f"  {event}" for event in self.analytics.recent]
        if self._last is not None:
            lines.append(f"last #{self._last.seq}: {summarize_output(self._last)}")
        return lines

    def draw(self) -> None:
        lines = self.render()
        if self.tty:
            prefix = f"\x1b[{self._drawn_lines}F\x1b[J" if self._drawn_lines else ""
            self.stream.write(prefix + "\n".join(lines) + "\n")
            self._drawn_lines = len(lines)
        else:
            e2e = self.stats_source.latency["e2e"].summary()
            counts = self.analytics.counts_line()
            self.stream.write(
                f"fps={self.rate.fps:.1f} results={self.stats_source.results} "
                f"e2e_p50_ms={e2e['p50']:.2f} e2e_p99_ms={e2e['p99']:.2f} "
                f"drops={self.stats_source.drops.total()} last=\"{lines[-1]}\"\n"
                + (f"  {counts}\n" if counts is not None else "")
            )
        self.stream.flush()

    def release(self) -> None:
        if not self.tty:
            self.print_events()
        self.draw()
