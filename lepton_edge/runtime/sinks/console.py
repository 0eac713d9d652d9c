"""A live table on the terminal (redrawn in place on a TTY, one line per interval otherwise)."""

from __future__ import annotations

import sys
from typing import TextIO

from lepton_edge.config.pipeline import ConsoleSinkConfig
from lepton_edge.core.metrics import RateMeter
from lepton_edge.core.results import Detections, RawOutputs, Result, now
from lepton_edge.runtime.sinks.base import Sink

TABLE_STAGES = ("decode", "queue", "preprocess", "infer", "postprocess", "e2e", "frame_age")


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

    def write(self, result: Result) -> None:
        self._last = result
        if now() >= self._next:
            self._next = now() + self.interval
            self.draw()

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
            self.stream.write(
                f"fps={self.rate.fps:.1f} results={self.stats_source.results} "
                f"e2e_p50_ms={e2e['p50']:.2f} e2e_p99_ms={e2e['p99']:.2f} "
                f"drops={self.stats_source.drops.total()} last=\"{lines[-1]}\"\n"
            )
        self.stream.flush()

    def release(self) -> None:
        self.draw()
