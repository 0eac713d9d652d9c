"""Cheap measurement primitives: a sliding latency window with percentiles, and drop counters."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np

from lepton_edge.core.results import now


class LatencyWindow:
    """The last ``size`` latency samples (ms) in a preallocated ring, plus all-time count and max.

    One thread writes; any thread may read. Percentiles are computed on demand, never per sample.
    """

    __slots__ = ("_buf", "_i", "count", "max_ms", "total_ms")

    def __init__(self, size: int = 4096) -> None:
        self._buf = np.zeros(size, np.float64)
        self._i = 0
        self.count = 0
        self.max_ms = 0.0
        self.total_ms = 0.0

    def add(self, ms: float) -> None:
        self._buf[self._i] = ms
        self._i = (self._i + 1) % len(self._buf)
        self.count += 1
        self.total_ms += ms
        if ms > self.max_ms:
            self.max_ms = ms

    def samples(self) -> np.ndarray:
        """The samples in the window, oldest first (a copy)."""
        n = min(self.count, len(self._buf))
        if n < len(self._buf):
            return self._buf[:n].copy()
        return np.roll(self._buf, -self._i)

    def summary(self) -> dict[str, float]:
        """p50/p90/p99 of the window and the all-time max, in ms (zeros when empty)."""
        return latency_summary(self.samples(), self.count, self.max_ms)


def latency_summary(samples: np.ndarray, count: int, max_ms: float) -> dict[str, float]:
    """p50/p90/p99 of ``samples`` with the all-time ``count`` and ``max_ms`` (zeros when there are no samples)."""
    if not len(samples):
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "count": 0}
    p50, p90, p99 = np.percentile(samples, (50, 90, 99))
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": max_ms, "count": count}


class DropCounter:
    """Thread-safe counts of dropped frames or messages, by reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._counts[reason] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


def round_floats(d: dict[str, Any], ndigits: int = 3) -> dict[str, Any]:
    """A copy of a nested dict with floats rounded, for logs and JSON."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, float):
            out[k] = round(v, ndigits)
        elif isinstance(v, dict):
            out[k] = round_floats(v, ndigits)
        else:
            out[k] = v
    return out


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up (default: one second's worth).

    The caller passes the monotonic time, so one bucket per device costs a few floats and no lock; use
    each bucket from one thread.
    """

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float | None = None, now: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.burst = max(1.0, float(burst if burst is not None else rate))
        self.tokens, self.last = self.burst, now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False



class RateMeter:
    """Results per second between successive ``update`` calls (each consumer keeps its own); ``stats`` is
    anything with a growing ``results`` count (the pipeline's statistics)."""

    def __init__(self, stats: Any) -> None:
        self.stats = stats
        self._last = (stats.results, now())
        self.fps = 0.0

    def update(self) -> float:
        count, t = self.stats.results, now()
        dt = t - self._last[1]
        if dt > 0:
            self.fps = (count - self._last[0]) / dt
        self._last = (count, t)
        return self.fps
