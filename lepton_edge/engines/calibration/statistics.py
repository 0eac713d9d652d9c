"""Activation statistics collected while the model runs: running min/max and absolute-value histograms."""

from __future__ import annotations

import math

import numpy as np

from lepton_edge.engines.calibration.methods import entropy_threshold, f32, percentile_threshold

HISTOGRAM_BINS = 4096
"""Bins of the absolute-value histogram per tensor. Its range doubles (merging bin pairs) when a larger
value arrives, so at least half the bins always cover the observed range."""


class TensorStats:
    """Running min/max of one tensor and, for entropy/percentile, a histogram of absolute values."""

    __slots__ = ("hi", "hist", "lo", "nonfinite", "top")

    def __init__(self, histogram: bool) -> None:
        self.lo, self.hi = math.inf, -math.inf
        self.nonfinite = 0
        self.hist = np.zeros(HISTOGRAM_BINS, np.int64) if histogram else None
        self.top = 0.0
        """Upper edge of the histogram's range (0 until a non-zero value arrives)."""

    def update(self, value: np.ndarray) -> None:
        a = np.asarray(value)
        if a.size == 0:
            return
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        lo, hi = a.min(), a.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            finite = np.isfinite(a)
            self.nonfinite += int(a.size - np.count_nonzero(finite))
            a = a[finite]
            if a.size == 0:
                return
            lo, hi = a.min(), a.max()
        self.lo, self.hi = min(self.lo, float(lo)), max(self.hi, float(hi))
        if self.hist is not None:
            self._histogram(a, max(-float(lo), float(hi)))

    def _histogram(self, a: np.ndarray, amax: float) -> None:
        hist = self.hist
        assert hist is not None
        if amax <= 0:
            hist[0] += a.size
            return
        if self.top == 0:
            self.top = amax
        while self.top < amax:
            merged = hist.reshape(-1, 2).sum(axis=1)
            hist[: merged.size] = merged
            hist[merged.size:] = 0
            self.top *= 2
        index = (np.abs(a) * np.float32(HISTOGRAM_BINS / self.top)).astype(np.intp).ravel()
        np.minimum(index, HISTOGRAM_BINS - 1, out=index)
        hist += np.bincount(index, minlength=HISTOGRAM_BINS)

    def range(self, method: str, percentile: float) -> tuple[float, float]:
        if self.lo > self.hi:  # never saw a value
            return 0.0, 0.0
        if method == "minmax" or self.hist is None or self.top == 0:
            return f32(self.lo), f32(self.hi)
        amax = max(-self.lo, self.hi)
        width = self.top / HISTOGRAM_BINS
        if method == "percentile":
            threshold = percentile_threshold(self.hist, width, percentile)
        else:
            threshold = entropy_threshold(self.hist, width)
        threshold = min(threshold, amax)
        return f32(max(self.lo, -threshold)), f32(min(self.hi, threshold))

