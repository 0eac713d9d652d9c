"""Fixtures for the backend tests: the simulated GPU, the TensorRT/CUDA fakes, and tiny ONNX models.

The models are built with onnx.helper and are small enough that the TensorRT fake runs them with
real onnxruntime, so every inference result can be checked against numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support.fake_cuda import FakeGpu, block_pycuda, install_cuda_python
from tests.support.fake_tensorrt import install_tensorrt

TRT_VERSIONS = ("8.6.1", "10.3.0", "11.4.0")


def _save(graph: onnx.GraphProto, path: Path, *, check: bool = True, domains: tuple[str, ...] = ()) -> Path:
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def static_model(path: Path) -> Path:
    """``input`` [1,3,4,4] -> ``scaled`` = 2*x + 1 and ``mean`` = mean over H, W ([1,3])."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "two"], ["doubled"]),
            helper.make_node("Add", ["doubled", "one"], ["scaled"]),
            helper.make_node("ReduceMean", ["input"], ["mean"], axes=[2, 3], keepdims=0),
        ],
        "static",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, [1, 3, 4, 4]),
         helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
         numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    return _save(graph, path)


def static_expected(x: np.ndarray) -> list[np.ndarray]:
    return [x * 2 + 1, x.mean(axis=(2, 3))]


def dynamic_model(path: Path) -> Path:
    """``input`` [batch, 3, 8] -> ``tripled`` = 3*x, with a dynamic batch."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "three"], ["tripled"])],
        "dynamic",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8])],
        [helper.make_tensor_value_info("tripled", TensorProto.FLOAT, ["batch", 3, 8])],
        [numpy_helper.from_array(np.array(3.0, np.float32), "three")],
    )
    return _save(graph, path)


DYNAMIC_PROFILE = {"input": ((1, 3, 8), (2, 3, 8), (4, 3, 8))}


def qdq_model(path: Path) -> Path:
    """An explicitly quantized model: Q/DQ (scale 0.1) around the input, then ReLU."""
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
            helper.make_node("Relu", ["dq"], ["output"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
         numpy_helper.from_array(np.array(0, np.int8), "zero")],
    )
    return _save(graph, path)


def fp16_model(path: Path) -> Path:
    """A model already in FP16 (as ModelOpt AutoCast writes them): ``output`` = 2*x in half precision."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "two"], ["output"])],
        "fp16",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT16, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT16, [1, 3, 4, 4])],
        [numpy_helper.from_array(np.array(2.0, np.float16), "two")],
    )
    return _save(graph, path)


def unsupported_model(path: Path) -> Path:
    """Two custom-domain operators TensorRT has no importer for (nodes 1 and 2)."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["input"], ["a"]),
            helper.make_node("FancyWarp", ["a"], ["b"], domain="com.acme"),
            helper.make_node("FancyBlur", ["b"], ["c"], domain="com.acme"),
            helper.make_node("Relu", ["c"], ["output"]),
        ],
        "unsupported",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    return _save(graph, path, check=False, domains=("com.acme",))


@pytest.fixture
def gpu():
    """The simulated GPU; no test may leave a pycuda context pushed on a thread (pycuda would abort)."""
    gpu = FakeGpu()
    yield gpu
    assert gpu.context_aborts == [], gpu.context_aborts
    assert gpu.context_stack() == [], "a pycuda context was left pushed on the test's thread"


@pytest.fixture
def cuda_python(monkeypatch: pytest.MonkeyPatch, gpu: FakeGpu) -> FakeGpu:
    """cuda-python (the fake) installed, pycuda absent."""
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    return gpu


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch, cuda_python: FakeGpu):
    """The TensorRT 10.3 fake over the simulated GPU, with cuda-python."""
    return install_tensorrt(monkeypatch, "10.3.0", cuda_python)
