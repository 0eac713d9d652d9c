"""What the Ultralytics task heads (segment, pose, obb) share: their two layouts and the box candidates in them.

* ``yolov8``: the one-to-many head of YOLOv8/11 (and YOLO26 exported without ``nms=False``), ``[1, 4+C+E, A]``:
  cx, cy, w, h, C class scores, then E values of the task (mask coefficients, keypoints, angle); NMS is ours.
* ``end2end``: YOLO26 end-to-end (``nms=False``) or an ``nms=True`` export, ``[1, N, 6+E]``: the box, score,
  class, then the E values; rows are already selected, only conf applies.

The layout comes from the config, else Ultralytics metadata (``end2end``, ``args`` ``nms``), else the shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from lepton_edge.config.pipeline import TaskHeadConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.postprocess.detect import (
    Candidates,
    describe_outputs,
    end2end_candidates,
    is_ultralytics_end2end,
    is_ultralytics_nms_export,
    static_dim,
    yolov8_candidates,
)

HeadLayout = Literal["yolov8", "end2end"]


def head_layout(config: TaskHeadConfig, output: TensorSpec, metadata: dict[str, str], task: str) -> HeadLayout:
    """The layout of a task head's ``[1, ., .]`` output: the config's, else the metadata's, else the shapes'."""
    if len(output.shape) != 3:
        raise ModelError(f"{task} decoder expects a rank-3 output [1, 4+C+E, A] or [1, N, 6+E], got {output.name} "
                         f"{output.shape_str}")
    if config.layout != "auto":
        return config.layout
    if is_ultralytics_end2end(metadata) or is_ultralytics_nms_export(metadata):
        return "end2end"
    if metadata.get("task") == task:
        return "yolov8"  # an Ultralytics one-to-many head, even when a dynamic export names its dims
    _, d1, d2 = (static_dim(d) for d in output.shape)
    if d1 is not None and d2 is not None and d1 != d2:
        return "yolov8" if d1 < d2 else "end2end"
    raise ModelError(
        f"cannot tell the {task} layout of output {output.name} {output.shape_str}: set postprocess.layout "
        "(yolov8 for [1, 4+C+E, A], end2end for [1, N, 6+E])"
    )


def check_head(layout: HeadLayout, output: TensorSpec, extra: int | None, task: str, what: str) -> None:
    """Fail early, naming the shapes, when ``output`` cannot hold ``extra`` values of ``what`` per box."""
    if extra is None:
        return
    _, d1, d2 = (static_dim(d) for d in output.shape)
    if layout == "yolov8" and d1 is not None and d1 < 5 + extra:
        raise ModelError(f"{task} output {output.name} {output.shape_str} has {d1} rows: too few for 4 box values, "
                         f"at least one class and {extra} {what} ([1, 4+C+{extra}, A])")
    if layout == "end2end" and d2 is not None and d2 != 6 + extra:
        raise ModelError(f"{task} end-to-end output {output.name} {output.shape_str} should have rows of "
                         f"6+{extra} values (box, score, class, {extra} {what}), not {d2}")


def head_candidates(layout: HeadLayout, output: np.ndarray, conf: float, extra: int, task: str) -> Candidates:
    """Candidates of one inference, ``extra`` values after the classes (yolov8) or after score and class."""
    if layout == "yolov8":
        if output.ndim != 3 or output.shape[1] < 5 + extra:
            raise ModelError(f"{task} output of shape {output.shape} has too few rows for 4 box values, a class "
                             f"and {extra} more ([1, 4+C+{extra}, A])")
        return yolov8_candidates(output, conf, num_classes=output.shape[1] - 4 - extra)
    found = end2end_candidates(output, conf, width=6 + extra)
    if found.extras.shape[1] != extra:
        raise ModelError(f"{task} end-to-end output of shape {output.shape} should have rows of 6+{extra} values")
    return found


def find_outputs(outputs: Sequence[TensorSpec], ranks: Sequence[int], task: str, expected: str) -> list[int]:
    """The index of the one output of each rank in ``ranks``, or ModelError naming what was expected."""
    found = []
    for rank in ranks:
        idx = [i for i, spec in enumerate(outputs) if len(spec.shape) == rank]
        if len(idx) != 1:
            raise ModelError(f"{task} decoder expects {expected}, got outputs {describe_outputs(outputs)}")
        found.append(idx[0])
    return found
