"""fp16 models as fp32 for int8 builds (lepton_edge.engines.float16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from lepton_edge.engines.float16 import write_float32_copy
from lepton_edge.runtime.sources.shapes import random_sample

ROOT = Path(__file__).resolve().parents[2]
HALF_DETECTOR = ROOT / "models/ultralytics/detect/yolo11t-detect_fp16.onnx"
FLOAT_DETECTOR = ROOT / "models/ultralytics/detect/yolo11t-detect.onnx"


def _run(path: Path, feed: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: feed})[0]


def _frame() -> np.ndarray:
    image = random_sample(7, 160, 160)[0]
    return np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def test_ultralytics_half_model_becomes_float32_and_computes_the_same(tmp_path):
    out = tmp_path / "fp32.onnx"
    assert write_float32_copy(HALF_DETECTOR, out)
    model = onnx.load(str(out))
    assert not [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert all(n.attribute[0].i == TensorProto.FLOAT for n in model.graph.node if n.op_type == "Cast")
    feed = _frame()
    half, upcast = _run(HALF_DETECTOR, feed), _run(out, feed)
    # Same weights, fp32 arithmetic: fp16's accumulated rounding stays (measured: scores 0.009 at most,
    # boxes 0.93 px on a 160 px input).
    assert np.abs(upcast[:, 4:] - half[:, 4:]).max() < 0.02
    assert np.abs(upcast[:, 4:] - half[:, 4:]).mean() < 1e-3
    assert np.abs(upcast[:, :4] - half[:, :4]).max() < 2.0


def test_float16_inputs_and_constants_become_float32(tmp_path):
    weight = numpy_helper.from_array(np.full((1, 1, 1, 1), 2.0, np.float16), "w")
    offset = helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(np.array(0.5, np.float16)))
    graph = helper.make_graph(
        [offset, helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT16, [1, 1, 2, 2])], [weight])
    source = tmp_path / "half.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    out = tmp_path / "float.onnx"
    assert write_float32_copy(source, out)
    feed = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(_run(out, feed), feed * 2 + 0.5)


def test_float32_model_is_left_alone(tmp_path):
    out = tmp_path / "copy.onnx"
    assert not write_float32_copy(FLOAT_DETECTOR, out)
    assert not out.exists()
