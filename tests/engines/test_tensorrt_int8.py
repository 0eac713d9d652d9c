"""int8 for TensorRT: symmetric Q/DQ (issue #11 item 1), which TensorRT's ONNX parser takes and onnxruntime's CPU
default (uint8 activations) is not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lepton_edge.core.errors import ModelError
from lepton_edge.engines.builder import build_artifact
from lepton_edge.engines.calibration import calibrate, quantize_qdq
from lepton_edge.engines.options import BuildOptions
from lepton_edge.engines.tensorrt_builder import build_engine
from tests.support.fake_cuda import FakeGpu, block_pycuda, install_cuda_python
from tests.support.fake_tensorrt import install_tensorrt

ROOT = Path(__file__).resolve().parents[2]
DETECTOR = ROOT / "models" / "shapes_detector.onnx"
SHAPES = ROOT / "calibration" / "shapes"


@pytest.fixture(scope="module")
def table():
    return calibrate(DETECTOR, SHAPES, samples=8, progress=False)


def _zero_points(path: Path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [initializers[n.input[2]] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]


def test_symmetric_qdq_has_only_int8_zero_points_of_zero(table, tmp_path):
    zero_points = _zero_points(quantize_qdq(DETECTOR, table, tmp_path / "trt.onnx", symmetric=True))
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    cpu = _zero_points(quantize_qdq(DETECTOR, table, tmp_path / "cpu.onnx"))
    assert any(z.dtype == np.uint8 for z in cpu), "the CPU default stays uint8 activations"


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_tensorrt_refuses_asymmetric_qdq_and_takes_the_symmetric_one(table, tmp_path, monkeypatch, version):
    gpu = FakeGpu()
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    install_tensorrt(monkeypatch, version, gpu)
    asymmetric = quantize_qdq(DETECTOR, table, tmp_path / "cpu.onnx")
    with pytest.raises(ModelError, match="cannot parse"):
        build_engine(asymmetric, precision="int8")
    plan, _ = build_engine(quantize_qdq(DETECTOR, table, tmp_path / "trt.onnx", symmetric=True), precision="int8")
    assert plan
    manifest = build_artifact(DETECTOR, tmp_path / "artifact", BuildOptions(
        target="tensorrt", precision="int8", calibration=table, fidelity=False), progress=False)
    assert manifest.builder.int8_mode == "qdq"
