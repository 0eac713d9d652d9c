"""The device's pipeline figures: the sum of its workloads' :class:`PipelineStats`, read like one of them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from lepton_edge.core.metrics import LatencyWindow, latency_summary
from lepton_edge.core.results import now
from lepton_edge.runtime.pipeline import STAGES, PipelineStats


class MergedWindow:
    """Several latency windows read as one (percentiles over all their samples)."""

    def __init__(self, windows: list[LatencyWindow]) -> None:
        self._windows = windows
        self.count = sum(w.count for w in windows)
        self.total_ms = sum(w.total_ms for w in windows)
        self.max_ms = max((w.max_ms for w in windows), default=0.0)

    def samples(self) -> np.ndarray:
        return np.concatenate([w.samples() for w in self._windows]) if self._windows else np.zeros(0)

    def summary(self) -> dict[str, float]:
        return latency_summary(self.samples(), self.count, self.max_ms)


class MergedDrops:
    """Drop counts of several pipelines (and of removed ones) read as one counter."""

    def __init__(self, counts: list[dict[str, int]]) -> None:
        total: Counter[str] = Counter()
        for c in counts:
            total.update(c)
        self._counts = dict(total)

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)

    def total(self) -> int:
        return sum(self._counts.values())


class DeviceStats:
    """Counters and latency of every workload, summed; the counts of removed workloads stay in, so the totals
    only grow (rates, Prometheus counters and the watchdog see one series). ``parts()`` returns the running
    workloads' stats by name."""

    def __init__(self, parts: Callable[[], dict[str, PipelineStats]]) -> None:
        self._parts = parts
        self.started_at = now()
        self._retired = {"frames_in": 0, "results": 0, "detections": 0}
        self._retired_drops: Counter[str] = Counter()
        self.idle_state = "idle"

    def retire(self, stats: PipelineStats) -> None:
        """Keep the counts of a workload that is removed."""
        for name in self._retired:
            self._retired[name] += getattr(stats, name)
        self._retired_drops.update(stats.drops.snapshot())

    def _sum(self, name: str) -> int:
        return self._retired[name] + sum(getattr(s, name) for s in self._parts().values())

    @property
    def frames_in(self) -> int:
        return self._sum("frames_in")

    @property
    def results(self) -> int:
        return self._sum("results")

    @property
    def detections(self) -> int:
        return self._sum("detections")

    @property
    def drops(self) -> MergedDrops:
        return MergedDrops([dict(self._retired_drops)] + [s.drops.snapshot() for s in self._parts().values()])

    @property
    def latency(self) -> dict[str, MergedWindow]:
        parts = list(self._parts().values())
        return {name: MergedWindow([s.latency[name] for s in parts]) for name in STAGES}

    @property
    def last_result_at(self) -> float | None:
        times = [s.last_result_at for s in self._parts().values() if s.last_result_at is not None]
        return max(times, default=None)

    @property
    def source_state(self) -> str:
        """The state shared by every stream, or how many are in each (``2 streaming, 1 reconnecting``)."""
        states = Counter(s.source_state for s in self._parts().values())
        if not states:
            return self.idle_state
        if len(states) == 1:
            return next(iter(states))
        return ", ".join(f"{n} {state}" for state, n in sorted(states.items()))

    def snapshot(self) -> dict[str, Any]:
        t = now()
        parts = self._parts()
        return {
            "time": t,
            "uptime_s": t - self.started_at,
            "frames_in": self.frames_in,
            "results": self.results,
            "detections": self.detections,
            "drops": self.drops.snapshot(),
            "latency_ms": {name: w.summary() for name, w in self.latency.items()},
            "source_state": self.source_state,
            "workloads": {name: s.snapshot() for name, s in parts.items()},
        }
