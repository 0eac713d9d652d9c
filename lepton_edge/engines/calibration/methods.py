"""Range methods: the clipping threshold chosen from an absolute-value histogram.

``minmax`` keeps the true range; ``entropy`` (TensorRT's method) picks the threshold that minimises the
KL divergence between the histogram and its 128-level quantization; ``percentile`` keeps a percentile
of the absolute values.
"""

from __future__ import annotations

import math

import numpy as np

QUANTIZED_BINS = 128
"""Levels of one sign of int8: the entropy search compares the histogram with its 128-level quantization."""


def f32(x: float) -> float:
    """``x`` rounded to float32 (what every consumer stores), as a Python float."""
    return float(np.float32(x))


def percentile_threshold(hist: np.ndarray, width: float, percentile: float) -> float:
    cdf = np.cumsum(hist)
    k = int(np.searchsorted(cdf, cdf[-1] * (percentile / 100.0)))
    return (min(k, hist.size - 1) + 1) * width


def entropy_threshold(hist: np.ndarray, width: float) -> float:
    """The clipping threshold whose 128-level quantization loses the least information, searched over
    every bin edge from the 128th on (TensorRT's entropy calibration).

    For a candidate keeping ``i`` bins, P is the histogram cut at bin ``i`` with the cut-off mass added to
    its last bin, and Q is the kept bins merged into 128 levels, each level's mass spread evenly over
    P's non-empty bins in it; the threshold minimises KL(P || Q). All candidates are evaluated at once
    from prefix sums.
    """
    nonzero = np.flatnonzero(hist)
    if nonzero.size == 0:
        return 0.0
    h = hist[: nonzero[-1] + 1].astype(np.float64)
    n = h.size
    if n <= QUANTIZED_BINS:
        return n * width  # every bin gets its own level: nothing to gain by clipping
    total = h.sum()
    mass = np.concatenate([[0.0], np.cumsum(h)])
    filled = np.concatenate([[0], np.cumsum(h > 0)])
    h_log_h = np.concatenate([[0.0], np.cumsum(_x_log_x(h))])
    best, best_kl = n, math.inf
    for chunk in np.array_split(np.arange(QUANTIZED_BINS, n + 1), max(1, (n - QUANTIZED_BINS) // 1024 + 1)):
        kl = _clipped_kl(chunk, h, total, mass, filled, h_log_h)
        k = int(np.argmin(kl))
        if kl[k] < best_kl:
            best, best_kl = int(chunk[k]), float(kl[k])
    return best * width


def _x_log_x(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def _clipped_kl(keep: np.ndarray, h: np.ndarray, total: float, mass: np.ndarray, filled: np.ndarray,
                h_log_h: np.ndarray) -> np.ndarray:
    """KL(P || Q) for each candidate number of kept bins in ``keep`` (see :func:`entropy_threshold`).

    ``mass``, ``filled`` and ``h_log_h`` are prefix sums of the histogram, of its non-empty bins and of
    h*log(h); the cut-off mass always ends in the last kept bin, so sum(P) is the histogram's total.
    """
    cut = total - mass[keep]  # mass beyond the kept bins, added to the last kept bin of P
    last = h[keep - 1]
    # sum of P log P over the kept bins, P normalised by the total
    p_log_p = (h_log_h[keep - 1] + _x_log_x(last + cut)) / total - np.log(total)
    merged = (keep // QUANTIZED_BINS)[:, None]
    starts = merged * np.arange(QUANTIZED_BINS)
    ends = starts + merged
    ends[:, -1] = keep  # the last level also takes the remainder bins
    level_mass = mass[ends] - mass[starts]  # Q's mass per level (without the cut-off mass)
    level_bins = (filled[ends] - filled[starts]).astype(np.float64)
    level_bins[:, -1] += (last == 0) & (cut > 0)  # the cut-off mass makes P's last bin non-empty
    p_mass = level_mass.copy()
    p_mass[:, -1] += cut
    q_total = mass[keep][:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q_per_bin = np.where(level_bins > 0, level_mass / level_bins / q_total, 0.0)
    log_q = np.log(np.maximum(q_per_bin, 1e-12))
    p_log_q = np.sum(np.where(p_mass > 0, p_mass / total * log_q, 0.0), axis=1)
    return p_log_p - p_log_q

