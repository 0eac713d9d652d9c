"""Mixed precision in the build: an int8 engine failing the fidelity gate keeps its most sensitive layers in float."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from lepton_edge.core.errors import ConfigError
from lepton_edge.engines.artifacts import read_manifest
from lepton_edge.engines.builder import FidelityGateError, build_artifact
from lepton_edge.engines.calibration import calibrate, write_tensorrt_cache
from lepton_edge.engines.options import BuildOptions, CalibrationOptions, TrtOptions
from lepton_edge.engines.tensorrt_builder import build_engine
from tests.engines.calibration.test_sensitivity import WIDTH, planted_model
from tests.support.fake_cuda import FakeGpu, block_pycuda, install_cuda_python
from tests.support.fake_tensorrt import install_tensorrt, make_fake_tensorrt

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits_classifier.onnx"
DIGITS_CALIBRATION = REPO / "calibration" / "digits.npy"


@pytest.fixture
def planted(tmp_path):
    """The planted model (its second layer's int8 ruins the output) and 64 recorded inputs."""
    model = planted_model(tmp_path / "planted.onnx")
    x = np.random.default_rng(1).standard_normal((64, 1, WIDTH)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return model, str(tmp_path / "x.npy")


def int8(data: str, **kwargs) -> BuildOptions:
    return BuildOptions(precision="int8", calibration_data=data, sensitivity_samples=8,
                        calibration_options=CalibrationOptions(method="minmax", samples=32), **kwargs)


def test_failing_int8_passes_with_the_sensitive_layer_in_float(tmp_path, planted):
    model, data = planted
    manifest = build_artifact(model, tmp_path / "a", int8(data), progress=False)
    mixed = read_manifest(tmp_path / "a").mixed_precision
    assert mixed == manifest.mixed_precision and mixed is not None
    assert [layer.name for layer in mixed.kept] == ["planted"]
    assert mixed.kept[0].nodes == ["planted", "planted_relu"] and mixed.kept[0].error > 0.1
    assert mixed.layers == 3 and mixed.limit == 1 and mixed.samples == 8
    (measure,) = mixed.before
    assert mixed.before[measure] < manifest.fidelity.required[measure] <= mixed.after[measure]
    assert manifest.fidelity.held_out and manifest.fidelity.value >= manifest.fidelity.required[measure]
    engine = onnx.load(str(tmp_path / "a" / manifest.engine.file))
    fed = {n.name: n for n in engine.graph.node}
    assert not any(name.startswith("t_") for name in fed["planted"].input), "no Q/DQ before the kept layer"
    assert any(n.op_type == "QuantizeLinear" for n in engine.graph.node), "the rest is still int8"


def test_mixed_precision_off_fails_and_says_what_to_try(tmp_path, planted):
    model, data = planted
    with pytest.raises(FidelityGateError, match=r"--mixed-precision auto") as failure:
        build_artifact(model, tmp_path / "a", int8(data, mixed_precision="off"), progress=False)
    assert "< required" in str(failure.value)
    assert not (tmp_path / "a").exists()


def test_the_limit_is_respected(tmp_path, planted):
    model, data = planted
    with pytest.raises(FidelityGateError, match=r"even with mixed precision") as failure:
        build_artifact(model, tmp_path / "a", int8(data, max_float_layers=0), progress=False)
    assert "--max-float-layers 1" in str(failure.value)
    assert not (tmp_path / "a").exists()


# -- TensorRT: the same exclusions ----------------------------------------------------------------

@pytest.fixture
def fake_trt(monkeypatch):
    gpu = FakeGpu()
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    return install_tensorrt(monkeypatch, "10.3.0", gpu)


@pytest.fixture(scope="module")
def digits_table():
    return calibrate(DIGITS, DIGITS_CALIBRATION, method="minmax", samples=32, progress=False)


def _first_nodes(count: int) -> list[str]:
    return [n.name for n in onnx.load(str(DIGITS)).graph.node[:count]]


def test_legacy_cache_int8_constrains_the_float_layers(tmp_path, fake_trt, digits_table):
    cache = write_tensorrt_cache(digits_table, tmp_path / "d.cache", trt_version=100300)
    kept = _first_nodes(2)
    profile = {"input": ((1, 1, 8, 8), (1, 1, 8, 8), (1, 1, 8, 8))}
    _, facts = build_engine(DIGITS, precision="int8", calibration_cache=cache, profiles=[profile],
                            float_layers=kept)
    assert facts["float_layers"] == sorted(kept)
    assert "OBEY_PRECISION_CONSTRAINTS" in facts["builder_flags"]
    built = fake_trt._state["builds"][-1]
    assert sorted(built["layer_precisions"]) == sorted(kept)
    assert all(entry["precision"] == "FLOAT" for entry in built["layer_precisions"].values())
    assert ("ILayer.precision", (kept[0], "FLOAT")) in fake_trt.calls


def test_the_fake_ignores_precisions_without_the_constraint_flag(tmp_path, fake_trt):
    trt = fake_trt
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    trt.OnnxParser(network, logger).parse_from_file(str(DIGITS))
    network.get_layer(0).precision = trt.float32
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 1, 8, 8), (1, 1, 8, 8), (1, 1, 8, 8))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None, logger.messages
    assert trt._state["builds"][-1]["layer_precisions"] == {}
    assert any("hints" in message for _, message in logger.messages)
    with pytest.raises(TypeError):
        network.get_layer(0).precision = "fp32"


def test_float_layers_need_calibration_cache_mode(tmp_path, fake_trt, digits_table):
    with pytest.raises(ConfigError, match="calibrated from a cache"):
        build_engine(DIGITS, precision="fp16", float_layers=_first_nodes(1),
                     profiles=[{"input": ((1, 1, 8, 8),) * 3}])


def test_tensorrt_qdq_mode_leaves_the_kept_layers_without_qdq(tmp_path, fake_trt, planted):
    model, data = planted
    manifest = build_artifact(model, tmp_path / "trt", BuildOptions(
        target="tensorrt", precision="int8", calibration_data=data, sensitivity_samples=8,
        calibration_options=CalibrationOptions(method="minmax", samples=32), trt=TrtOptions(int8_mode="qdq")),
        progress=False)
    assert [layer.name for layer in manifest.mixed_precision.kept] == ["planted"]
    plan = (tmp_path / "trt" / "model.plan").read_bytes()
    parsed = onnx.load_from_string(plan.split(b"\n", 2)[2])
    planted_node = next(n for n in parsed.graph.node if n.name == "planted")
    assert planted_node.input[0] == "t", "the kept layer reads the float tensor: no Q/DQ there"


def test_tensorrt_11_layers_take_no_precision():
    trt = make_fake_tensorrt("11.4.0")
    logger = trt.Logger()
    network = trt.Builder(logger).create_network(0)
    trt.OnnxParser(network, logger).parse_from_file(str(DIGITS))
    layer = network.get_layer(0)
    assert layer.name == _first_nodes(1)[0]
    assert not hasattr(layer, "precision") and not hasattr(layer, "set_output_type")
    assert not hasattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS")
