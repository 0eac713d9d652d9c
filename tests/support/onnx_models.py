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


def mean_color_classifier(path: Path, size: int = 32, layout: str = "nchw", batch: int | str = 1) -> Path:
    """Classifies an image by its mean colour: logits = mean per channel (R, G, B order in the tensor).

    The answer is computable by hand, so tests can check preprocessing end to end. ``batch``: a fixed batch
    size, or the name of a dynamic batch axis.
    """
    if layout == "nchw":
        shape = [batch, 3, size, size]
        nodes = [helper.make_node("ReduceMean", ["images"], ["logits"], axes=[2, 3], keepdims=0)]
    else:
        shape = [batch, size, size, 3]
        nodes = [helper.make_node("ReduceMean", ["images"], ["logits"], axes=[1, 2], keepdims=0)]
    graph = helper.make_graph(
        nodes, "mean_color",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
    )
    # ReduceMean with axes as an attribute is valid up to opset 17.
    return _save(graph, path, {"lepton.task": "classify", "lepton.labels": json.dumps(["red", "green", "blue"])})


def slow_model(path: Path, size: int = 32, work: int = 16, width: int = 64) -> Path:
    """A classifier whose inference does real work (a stack of 3x3 convolutions, ~40 M multiply-adds per
    layer at the defaults), so that it is slower than a fast live source: for drop-policy tests."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((width, 3, 3, 3)) * 0.2).astype(np.float32), "w0")]
    nodes = [helper.make_node("Conv", ["images", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["h0"])]
    for i in range(1, work + 1):
        w = (rng.standard_normal((width, width, 3, 3)) / np.sqrt(width * 9)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [f"h{i - 1}", f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"h{i}"]))
    inits.append(numpy_helper.from_array(np.ones((width, 3), np.float32), "w_out"))
    nodes.append(helper.make_node("ReduceMean", [f"h{work}"], ["pooled"], axes=[2, 3], keepdims=0))
    nodes.append(helper.make_node("MatMul", ["pooled", "w_out"], ["logits"]))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    return _save(graph, path, {"lepton.task": "classify"})
