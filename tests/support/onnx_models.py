"""Small real ONNX models built with onnx.helper for tests (run by real onnxruntime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph: onnx.GraphProto, path: Path, metadata: dict[str, str] | None = None, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def mean_color_classifier(path: Path, size: int = 32, layout: str = "nchw") -> Path:
    """Classifies an image by its mean colour: logits = mean per channel (R, G, B order in the tensor).

    The answer is computable by hand, so tests can check preprocessing end to end.
    """
    if layout == "nchw":
        shape = [1, 3, size, size]
        nodes = [helper.make_node("ReduceMean", ["images"], ["logits"], axes=[2, 3], keepdims=0)]
    else:
        shape = [1, size, size, 3]
        nodes = [helper.make_node("ReduceMean", ["images"], ["logits"], axes=[1, 2], keepdims=0)]
    graph = helper.make_graph(
        nodes, "mean_color",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
    )
    # ReduceMean with axes as an attribute is valid up to opset 17.
    return _save(graph, path, {"lepton.task": "classify", "lepton.labels": json.dumps(["red", "green", "blue"])})


def slow_model(path: Path, size: int = 32, work: int = 12, width: int = 1024) -> Path:
    """A classifier whose inference does real work (a chain of matmuls): for drop-policy tests."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["x0"]),
        helper.make_node("MatMul", ["x0", "w_in"], ["h0"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, size * size], np.int64), "flat_shape"),
        numpy_helper.from_array((rng.standard_normal((size * size, width)) / size).astype(np.float32), "w_in"),
    ]
    for i in range(work):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    inits.append(numpy_helper.from_array(np.ones((width, 3), np.float32), "w_out"))
    nodes.append(helper.make_node("MatMul", [f"h{work}", "w_out"], ["logits"]))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    return _save(graph, path, {"lepton.task": "classify"})
