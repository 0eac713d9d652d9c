"""Range choice per tensor, knowing what the tensor is, and the report of what was clipped.

Entropy and percentile clip a tensor's rare large values so that its common values get finer int8 steps. That
suits features inside the network and ruins tensors whose rare large values are the answer. So these tensors
keep their observed (min, max) under every method:

- outputs of bounded activations (:data:`BOUNDED_ACTIVATIONS`: Sigmoid, HardSigmoid, Softmax, Tanh): their range
  is small and fixed already, and their rare high values are what a detector keeps (a YOLOv8 class score reaching
  0.97 among thousands of background anchors near 0 got [0, 0.08] from entropy: no detection survived);
- tensors that only move such values (:data:`VALUE_MOVING_OPS`: Reshape, Transpose, Concat of kept tensors, ...);
- the model's graph outputs (the heads), which the decoder reads as they are.

Every other tensor gets the method's range. One whose chosen absolute maximum is below
:data:`CLIP_REPORT_RATIO` of its observed one is reported: its observed range goes in the table's ``clipped``
and one summary warning names the count and the worst few.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lepton_edge.engines.calibration.statistics import TensorStats

log = logging.getLogger(__name__)

BOUNDED_ACTIVATIONS = frozenset({"Sigmoid", "HardSigmoid", "Softmax", "Tanh"})
"""Op types whose output range is bounded by the op itself: never clipped."""

VALUE_MOVING_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Slice",
                              "Split", "Gather", "Concat"})
"""Op types whose outputs hold only values of their data input(s): they inherit a kept input's full range."""

CLIP_REPORT_RATIO = 0.5
"""A tensor is reported when its chosen absolute maximum is below this share of the observed one. Trimming the
tail of bell-shaped data keeps more (entropy and percentile 99.99 on 8k-500k normal or Laplace values: 65-100% of
the maximum), so routine trims stay quiet; below half, the whole top half of the observed range saturates to one
value, which is worth a look (a ReLU of normal data over 500k values is at the edge: entropy keeps 43%)."""

REPORT_WORST = 3
"""How many of the worst clipped tensors the summary warning names."""

Range = tuple[float, float]


@dataclass(frozen=True)
class ChosenRanges:
    """The range of every tensor, and the observed range of those clipped below :data:`CLIP_REPORT_RATIO`."""

    ranges: dict[str, Range]
    clipped: dict[str, Range]


def full_range_tensors(model) -> set[str]:  # model: onnx.ModelProto (graph outputs not yet augmented)
    """Names of the tensors that keep their observed range: bounded activations' outputs, the tensors that
    only move them, and the graph outputs."""
    weights = {t.name for t in model.graph.initializer}
    kept: set[str] = set()
    for node in model.graph.node:  # ONNX nodes are topologically sorted
        if node.op_type in BOUNDED_ACTIVATIONS or _moves_kept_values(node, kept, weights):
            kept.update(name for name in node.output if name)
    return kept | {o.name for o in model.graph.output}


def _moves_kept_values(node, kept: set[str], weights: set[str]) -> bool:  # node: onnx.NodeProto
    if node.op_type not in VALUE_MOVING_OPS or not node.input:
        return False
    if node.op_type == "Concat":
        data = [name for name in node.input if name and name not in weights]
        return bool(data) and all(name in kept for name in data)
    return node.input[0] in kept


def choose_ranges(stats: dict[str, TensorStats], full_range: set[str], method: str,
                  percentile: float) -> ChosenRanges:
    """Each tensor's range, by name: the observed one for ``full_range`` tensors, ``method``'s otherwise."""
    ranges: dict[str, Range] = {}
    clipped: dict[str, Range] = {}
    for name in sorted(stats):
        observed = stats[name].range("minmax", percentile)
        chosen = observed if name in full_range else stats[name].range(method, percentile)
        ranges[name] = chosen
        if _clips_far(chosen, observed):
            clipped[name] = observed
    return ChosenRanges(ranges, clipped)


def _amax(bounds: Range) -> float:
    return max(abs(bounds[0]), abs(bounds[1]))


def _clips_far(chosen: Range, observed: Range) -> bool:
    return _amax(chosen) < CLIP_REPORT_RATIO * _amax(observed)


def warn_clipped(chosen: ChosenRanges, method: str) -> None:
    """One warning for all clipped tensors: their count and the worst :data:`REPORT_WORST`."""
    if not chosen.clipped:
        return
    share = {name: _amax(chosen.ranges[name]) / _amax(observed) for name, observed in chosen.clipped.items()}
    worst = sorted(share, key=lambda name: (share[name], name))[:REPORT_WORST]
    shown = ", ".join(f"{name} (max |x| {_amax(chosen.ranges[name]):.4g} of {_amax(chosen.clipped[name]):.4g} "
                      "observed)" for name in worst)
    log.warning(
        "%s calibration clipped %d tensor(s) to less than %d%% of their observed maximum (listed in the table's "
        "'clipped'); worst: %s; if int8 accuracy suffers, compare with method minmax",
        method, len(chosen.clipped), round(100 * CLIP_REPORT_RATIO), shown,
    )
