"""What TensorRT and CUDA keep per process or per thread, against the strict fakes: one logger, the plugin
registry, the DLA core of the runtime, and pycuda contexts across engines and threads (issue 11, items 2-5)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lepton_edge.config.device import parse_config
from lepton_edge.config.pipeline import TensorRTBackendConfig
from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.engines.tensorrt_builder import build_engine
from lepton_edge.runtime.assembly import build_pipeline
from lepton_edge.runtime.backends.tensorrt import TensorRTBackend, logged_errors, make_logger
from lepton_edge.runtime.pipeline import ModelBundle
from tests.runtime.backends.conftest import fp16_model, static_expected, static_model
from tests.support.fake_cuda import FakeGpu, block_cuda_python, install_pycuda
from tests.support.fake_tensorrt import install_tensorrt, live_objects

ZERO = {"device": 0, "pinned": 0, "streams": 0, "graphs": 0}


def _config(**kw) -> TensorRTBackendConfig:
    return TensorRTBackendConfig(type="tensorrt", **{"warmup_runs": 0, **kw})


def _engine(tmp_path: Path, name: str = "model", model=static_model, **build_kw) -> Path:
    plan, _ = build_engine(model(tmp_path / f"{name}.onnx"), precision=build_kw.pop("precision", "fp32"), **build_kw)
    path = tmp_path / f"{name}.plan"
    path.write_bytes(plan)
    return path


def _check(backend: TensorRTBackend, value: float) -> None:
    x = np.full((1, 3, 4, 4), value, np.float32)
    for got, want in zip(backend.infer({"input": x}), static_expected(x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def _nms_model(path: Path) -> Path:
    """A detector tail exported with TensorRT's EfficientNMS_TRT plugin node."""
    node = helper.make_node("EfficientNMS_TRT", ["boxes", "scores"], ["num", "det_boxes", "det_scores", "det_classes"],
                            plugin_version="1", score_threshold=0.25, iou_threshold=0.45, max_output_boxes=10)
    graph = helper.make_graph(
        [node], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 100, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 100, 2])],
        [helper.make_tensor_value_info("num", TensorProto.INT32, [1, 1]),
         helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, [1, 10, 4]),
         helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, [1, 10]),
         helper.make_tensor_value_info("det_classes", TensorProto.INT32, [1, 10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _instance_norm_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("InstanceNormalization", ["input", "scale", "bias"], ["output"])], "inorm",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])],
        [numpy_helper.from_array(np.ones(3, np.float32), "scale"),
         numpy_helper.from_array(np.zeros(3, np.float32), "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# -- item 3: one logger ---------------------------------------------------------------------------------------

def test_builders_and_runtimes_share_one_logger(trt, tmp_path):
    """TensorRT keeps one logger pointer per process: a second builder or runtime with another logger while the
    first is alive would log to the first (NVIDIA/TensorRT#1475); the strict fake refuses it."""
    engine = _engine(tmp_path)
    with TensorRTBackend(engine, _config()) as first, TensorRTBackend(engine, _config()) as second:
        assert first._logger is second._logger is make_logger(trt)
        build_engine(static_model(tmp_path / "again.onnx"), precision="fp32")  # while both runtimes live
        _check(second, 2.0)


def test_a_second_logger_is_refused_by_the_fake(trt):
    class Other(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg) -> None:
            pass

    runtime = trt.Runtime(make_logger(trt))
    with pytest.raises(RuntimeError, match="one logger pointer per process"):
        trt.Builder(Other())
    del runtime
    trt.Builder(Other())  # once no builder or runtime holds the first, another may be used


def test_errors_reported_are_those_of_the_operation(trt, tmp_path):
    """A failed load must not report the errors of an earlier, unrelated failure."""
    corrupt = tmp_path / "bad.plan"
    corrupt.write_bytes(b"junk")
    with pytest.raises(ModelError, match="Magic tag does not match"):
        TensorRTBackend(corrupt, _config()).load()
    cache = tmp_path / "calib.cache"
    cache.write_bytes(b"TRT-100300-EntropyCalibration2\n")  # a header but no scales
    with pytest.raises(ModelError) as err:
        build_engine(static_model(tmp_path / "m.onnx"), precision="int8", calibration_cache=cache)
    assert "Calibration cache has no scales" in str(err.value)
    assert "Magic tag" not in str(err.value), "errors of an earlier operation leaked into this one"
    logger = make_logger(trt)
    assert logged_errors(logger) == "(TensorRT logged no error)"
    assert "Magic tag" in logged_errors(logger, since=0)


# -- item 5: plugins --------------------------------------------------------------------------------------------

def test_plugins_are_registered_once_before_parsing(trt, tmp_path):
    build_engine(_nms_model(tmp_path / "nms.onnx"), precision="fp32")
    assert trt._state["builds"][-1]["plugins"] == ["EfficientNMS_TRT"]
    build_engine(static_model(tmp_path / "m.onnx"), precision="fp32")
    assert trt._state["plugin_inits"] == 1
    assert [c for c, _ in trt.calls].index("init_libnvinfer_plugins") < [c for c, _ in trt.calls].index("OnnxParser")


def test_the_fake_refuses_plugin_ops_and_engines_without_the_registry(trt, tmp_path):
    class Quiet(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg) -> None:
            self.messages.append(msg)

    logger = Quiet()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert not parser.parse_from_file(str(_nms_model(tmp_path / "nms.onnx")))
    assert "Plugin not found" in parser.get_error(0).desc()
    del parser, network, builder
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(_nms_model(tmp_path / "nms.onnx")))


def test_a_plugin_engine_loads_after_registration(monkeypatch, cuda_python, tmp_path):
    """InstanceNormalization goes through the InstanceNormalization_TRT plugin on TensorRT 8.6."""
    trt = install_tensorrt(monkeypatch, "8.6.1", cuda_python)
    engine = _engine(tmp_path, "inorm", _instance_norm_model)
    assert trt._state["builds"][-1]["plugins"] == ["InstanceNormalization_TRT"]
    fresh = install_tensorrt(monkeypatch, "8.6.1", cuda_python)  # a process that only deserializes
    assert not fresh._state["plugins_registered"]
    with TensorRTBackend(engine, _config()) as backend:
        x = np.random.default_rng(0).random((1, 3, 4, 4), dtype=np.float32)
        out = backend.infer({"input": x})[0]
        want = (x - x.mean(axis=(2, 3), keepdims=True)) / np.sqrt(x.var(axis=(2, 3), keepdims=True) + 1e-5)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    assert fresh._state["plugin_inits"] == 1


# -- item 4: DLA -----------------------------------------------------------------------------------------------

def test_a_dla_engine_is_deserialized_on_its_core(monkeypatch, cuda_python, tmp_path):
    trt = install_tensorrt(monkeypatch, "10.3.0", cuda_python, dla_cores=2)
    engine = _engine(tmp_path, precision="fp16", dla_core=1)
    with pytest.raises(ModelError, match="built for DLA core 1 but the runtime's DLA core is -1"):
        TensorRTBackend(engine, _config()).load()
    with TensorRTBackend(engine, _config(dla_core=1)) as backend:
        _check(backend, 1.5)
        assert backend.describe()["dla_core"] == 1
    assert ("Runtime.DLA_core", (1,)) in trt.calls
    with pytest.raises(ConfigError, match=r"DLA core 2, but this device has cores 0..1"):
        TensorRTBackend(engine, _config(dla_core=2)).load()
    assert cuda_python.live() == ZERO


def test_no_dla_in_tensorrt_11_before_11_4(monkeypatch, cuda_python, tmp_path):
    install_tensorrt(monkeypatch, "11.3.0", cuda_python, dla_cores=2)
    with pytest.raises(ConfigError, match="no DLA"):
        build_engine(fp16_model(tmp_path / "m.onnx"), precision="fp16", dla_core=0)


# -- item 2: pycuda contexts across engines and threads ------------------------------------------------------------

@pytest.fixture
def pycuda_trt(monkeypatch, gpu: FakeGpu):
    install_pycuda(monkeypatch, gpu)
    block_cuda_python(monkeypatch)
    return install_tensorrt(monkeypatch, "10.3.0", gpu)


def test_two_engines_open_at_once_each_run_in_their_own_context(pycuda_trt, gpu, tmp_path):
    """The controller loads the new model before closing the old; the engine cache opens candidates together."""
    engine = _engine(tmp_path)
    old = TensorRTBackend(engine, _config(warmup_runs=1)).load()
    new = TensorRTBackend(engine, _config(warmup_runs=1)).load()
    _check(old, 1.0)  # the older engine, with the newer one loaded after it
    _check(new, 2.0)
    old.close()  # closing the old one leaves the new one working
    _check(new, 3.0)
    new.close()
    assert gpu.live() == ZERO
    assert live_objects(pycuda_trt) == {"runtime": 0, "engine": 0, "context": 0}
    assert pycuda_trt._state["violations"] == []


def test_pipeline_thread_infers_and_another_thread_stops_it(pycuda_trt, gpu, tmp_path):
    """The pipeline infers on its own thread, and stop or a model swap close the backend from another."""
    engine = _engine(tmp_path)
    backend = TensorRTBackend(engine, _config()).load()
    errors: list[BaseException] = []

    def run(target: TensorRTBackend, value: float) -> None:
        try:
            _check(target, value)
        except BaseException as e:  # reported below
            errors.append(e)

    for value in (1.0, 2.0):  # a pipeline thread per source session: each ends after inferring
        worker = threading.Thread(target=run, args=(backend, value))
        worker.start()
        worker.join(10)
    swapped = TensorRTBackend(engine, _config()).load()  # the swap loads the new model on the caller's thread
    closer = threading.Thread(target=backend.close)  # and the old one is closed from the controller's
    closer.start()
    closer.join(10)
    worker = threading.Thread(target=run, args=(swapped, 4.0))
    worker.start()
    worker.join(10)
    _check(swapped, 5.0)
    swapped.close()
    assert errors == []
    assert gpu.context_aborts == []
    assert gpu.live() == ZERO


def test_a_missing_plugin_library_warns_and_leaves_the_logger_usable(trt, tmp_path, caplog):
    def broken(logger, namespace):
        raise OSError("libnvinfer_plugin.so.10: cannot open shared object file")

    trt.init_libnvinfer_plugins = broken
    with caplog.at_level("WARNING", logger="lepton_edge.runtime.backends.tensorrt"):
        build_engine(static_model(tmp_path / "m.onnx"), precision="fp32")
    assert "could not register its plugins" in caplog.text and "libnvinfer_plugin.so.10" in caplog.text


def test_a_tensorrt_pipeline_swapped_and_stopped_from_another_thread(pycuda_trt, gpu, tmp_path):
    """The pipeline infers on its stage thread; the model swap (the retired engine is closed by the thread that
    finishes its last frame) and stop come from the controller's thread. pycuda must see no context left behind."""
    engine = _engine(tmp_path)
    config = parse_config({"model": {"path": str(engine)}, "backend": {"type": "tensorrt", "warmup_runs": 0},
                           "source": {"uri": "synthetic://shapes?fps=200&width=64&height=48"},
                           "postprocess": {"type": "raw"}}, "test")
    pipeline = build_pipeline(config, TensorRTBackend(engine, _config()).load()).start()

    def frames_done() -> int:
        return pipeline.stats.results

    def wait_for(n: int) -> None:
        deadline = threading.Event()
        for _ in range(1000):
            if frames_done() >= n:
                return
            deadline.wait(0.01)
        raise AssertionError(f"only {frames_done()} frames")

    wait_for(5)
    swapped = TensorRTBackend(engine, _config()).load()
    pipeline.swap_model(ModelBundle(swapped, pipeline.preprocessor, pipeline.postprocessor))
    wait_for(frames_done() + 5)
    stopper = threading.Thread(target=pipeline.stop)
    stopper.start()
    stopper.join(10)
    pipeline.backend.close()
    assert gpu.context_aborts == []
    assert gpu.live() == ZERO
