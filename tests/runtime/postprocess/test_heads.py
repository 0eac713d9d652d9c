"""The Ultralytics task heads' layout: config first, then metadata (end2end, nms=True args, task), then shapes."""

from __future__ import annotations

import numpy as np
import pytest

from lepton_edge.config.pipeline import ObbConfig, PoseConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.postprocess.heads import head_layout


def spec(*shape) -> TensorSpec:
    return TensorSpec("output0", tuple(shape), np.dtype(np.float32))


@pytest.mark.parametrize(("shape", "metadata", "layout"), [
    ((1, 20, 525), {}, "yolov8"),
    ((1, 300, 21), {}, "end2end"),
    ((1, 300, 21), {"end2end": "True"}, "end2end"),
    ((1, 300, 21), {"args": "{'batch': 1, 'nms': True, 'dynamic': False}"}, "end2end"),
    (("batch", "rows", "anchors"), {"task": "pose"}, "yolov8"),  # a dynamic one-to-many export
    ((1, 20, 525), {"task": "pose", "end2end": "False", "args": "{'nms': None}"}, "yolov8"),
])
def test_layout_from_metadata_then_shapes(shape, metadata, layout):
    assert head_layout(PoseConfig(type="pose"), spec(*shape), metadata, "pose") == layout


def test_the_config_wins():
    assert head_layout(ObbConfig(type="obb", layout="end2end"), spec(1, 8, 525), {"task": "obb"}, "obb") == "end2end"


def test_undecidable_shapes_ask_for_the_layout():
    with pytest.raises(ModelError, match=r"set postprocess\.layout"):
        head_layout(PoseConfig(type="pose"), spec(1, "n", 21), {}, "pose")
    with pytest.raises(ModelError, match="rank-3"):
        head_layout(PoseConfig(type="pose"), spec(1, 21), {}, "pose")
