"""Models for the agent tests that the shared helpers do not cover."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def fails_at_inference(path: Path, size: int = 32) -> Path:
    """A classifier that loads fine but fails on any bright frame: a Gather whose index is computed from
    the pixels (max * 1000) and falls outside its 3-element table. Real onnxruntime raises at run time."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["logits0"], axes=[2, 3], keepdims=0),
        helper.make_node("ReduceMax", ["images"], ["peak"], keepdims=0),
        helper.make_node("Mul", ["peak", "thousand"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["index"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["index", "one"], ["index1"]),
        helper.make_node("Gather", ["table", "index1"], ["picked"]),
        helper.make_node("Add", ["logits0", "picked"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(1000.0, np.float32), "thousand"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.zeros(3, np.float32), "table"),
    ]
    graph = helper.make_graph(
        nodes,
        "fails_at_inference",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"lepton.task": "classify", "lepton.labels": json.dumps(["r", "g", "b"])}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
