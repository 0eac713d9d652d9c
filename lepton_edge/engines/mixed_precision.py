"""Mixed precision: when an int8 engine fails the fidelity gate, keep its most sensitive layers in float.

The layers are ranked once (:mod:`lepton_edge.engines.calibration.sensitivity`), then :class:`FloatLayerSearch`
finds the fewest top-ranked layers whose float copy passes the gate: counts 1, 2, 4, ... up to the limit, then
bisection between the last count that failed and the first that passed, about 2 log2(limit) gate runs instead of
one per layer. Every count is tried on a real onnxruntime QDQ engine (the ranked layers' nodes excluded from
quantization) and gated exactly as the final engine is; the build then makes and gates its engine with that set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

DEFAULT_FLOAT_SHARE = 0.25
"""Without an explicit limit, at most this share of the ranked layers (rounded up) stays in float."""


@dataclass(frozen=True)
class Trial:
    """One gate run with the ``layers`` most sensitive layers in float."""

    layers: int
    passed: bool
    measured: dict[str, float]


def float_layer_limit(ranked: int, max_float_layers: int | None) -> int:
    """How many layers the search may keep in float: the option, else :data:`DEFAULT_FLOAT_SHARE` of them."""
    if max_float_layers is None:
        return min(ranked, -(-ranked * int(DEFAULT_FLOAT_SHARE * 100) // 100))
    return min(ranked, max_float_layers)


@dataclass
class FloatLayerSearch:
    """The fewest top-ranked layers kept in float for ``trial`` to pass, within ``limit``; count 0 failed already."""

    trial: Callable[[int], Trial]
    limit: int
    trials: list[Trial] = field(default_factory=list)

    def run(self) -> Trial | None:
        """The passing trial with the fewest layers, or None when even ``limit`` layers fail."""
        failed, passed = 0, None
        count = 1
        while count <= self.limit:
            result = self._try(count)
            if result.passed:
                passed = result
                break
            failed = count
            if count == self.limit:
                return None
            count = min(2 * count, self.limit)
        if passed is None:
            return None
        while passed.layers - failed > 1:
            middle = (failed + passed.layers) // 2
            result = self._try(middle)
            if result.passed:
                passed = result
            else:
                failed = middle
        return passed

    def _try(self, count: int) -> Trial:
        result = self.trial(count)
        self.trials.append(result)
        return result
