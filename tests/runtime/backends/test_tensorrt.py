"""The TensorRT backend, builder and version shim, against the strict TensorRT and CUDA fakes.

Plans are built by ``build_engine`` on the fake (which embeds the real ONNX model) and run by
``TensorRTBackend`` through the simulated GPU, so the outputs are real onnxruntime results that pass
through simulated device memory, streams and graphs. Tests marked ``gpu`` do the same on real
TensorRT and compare with onnxruntime; they skip where TensorRT or a GPU is missing.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from lepton_edge.config.pipeline import TensorRTBackendConfig
from lepton_edge.core.errors import BackendUnavailable, ConfigError, ModelError
from lepton_edge.engines.tensorrt_builder import build_engine
from lepton_edge.runtime.backends.cuda import CudaError
from lepton_edge.runtime.backends.tensorrt import TensorRTBackend, TrtApi
from lepton_edge.runtime.platform import accelerator_facts
from tests.runtime.backends.conftest import (
    DYNAMIC_PROFILE,
    TRT_VERSIONS,
    dynamic_model,
    fp16_model,
    qdq_model,
    static_expected,
    static_model,
    unsupported_model,
)
from tests.support.fake_cuda import (
    FakeGpu,
    block_cuda_python,
    block_pycuda,
    cudaError_t,
    install_cuda_python,
    install_pycuda,
)
from tests.support.fake_tensorrt import (
    block_tensorrt,
    calibration_cache_text,
    install_tensorrt,
    live_objects,
    make_fake_tensorrt,
)

ZERO = {"device": 0, "pinned": 0, "streams": 0, "graphs": 0}


@pytest.fixture(autouse=True)
def no_leaks_left_to_the_adapter(caplog: pytest.LogCaptureFixture):
    """The adapter frees what a backend forgot, with a warning: a backend test must never trigger it."""
    yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    leaks = [r.getMessage() for r in records if "closed with live resources" in r.getMessage()]
    assert not leaks, leaks


def _config(**kw) -> TensorRTBackendConfig:
    return TensorRTBackendConfig(type="tensorrt", **{"warmup_runs": 0, **kw})


def _engine(tmp_path: Path, model=static_model, name: str = "model", **build_kw) -> Path:
    plan, _ = build_engine(model(tmp_path / f"{name}.onnx"), precision=build_kw.pop("precision", "fp32"), **build_kw)
    path = tmp_path / f"{name}.plan"
    path.write_bytes(plan)
    return path


def _assert_released(gpu: FakeGpu, trt) -> None:
    assert gpu.live() == ZERO
    assert live_objects(trt) == {"runtime": 0, "engine": 0, "context": 0}
    assert trt._state["violations"] == []


# -- runtime backend --------------------------------------------------------------------------

def test_loads_and_describes_the_engine(trt, cuda_python, tmp_path):
    backend = TensorRTBackend(_engine(tmp_path), _config()).load()
    try:
        assert [(s.name, s.shape, s.dtype) for s in backend.inputs] == [("input", (1, 3, 4, 4), np.float32)]
        assert [(s.name, s.shape) for s in backend.outputs] == [("scaled", (1, 3, 4, 4)), ("mean", (1, 3))]
        info = backend.describe()
        assert info["tensorrt_version"] == "10.3.0" and info["cuda_package"] == "cuda-python"
        assert backend.metadata["tensorrt_version"] == "10.3.0"
    finally:
        backend.close()
    _assert_released(cuda_python, trt)


def test_infers_through_device_memory(trt, cuda_python, tmp_path):
    gpu = cuda_python
    rng = np.random.default_rng(1)
    with TensorRTBackend(_engine(tmp_path), _config(warmup_runs=2)) as backend:
        results = []
        for _ in range(3):
            x = rng.random((1, 3, 4, 4), dtype=np.float32)
            out = backend.infer({"input": x})
            for got, want in zip(out, static_expected(x), strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-6)
            results.append((x, out))
        # Outputs are the caller's own arrays: later inferences do not overwrite them.
        first_x, first_out = results[0]
        np.testing.assert_allclose(first_out[0], first_x * 2 + 1, rtol=1e-6)
    assert gpu.pageable_async_copies == 0, "copies must go through pinned staging buffers"
    one_run = gpu.executed[-4:]
    assert one_run == ["memcpy HtoD", "TensorRT enqueueV3", "memcpy DtoH", "memcpy DtoH"]
    _assert_released(gpu, trt)


def test_dynamic_shapes_follow_the_profile(trt, cuda_python, tmp_path):
    gpu = cuda_python
    engine = _engine(tmp_path, dynamic_model, profiles=[DYNAMIC_PROFILE])
    with TensorRTBackend(engine, _config(warmup_runs=1)) as backend:
        assert backend.inputs[0].shape == (None, 3, 8) and backend.outputs[0].shape == (None, 3, 8)
        assert ("IExecutionContext.set_input_shape", ("input", (2, 3, 8))) in trt.calls, "warm-up uses opt"
        for batch in (4, 1, 3, 2):
            x = np.random.default_rng(batch).random((batch, 3, 8), dtype=np.float32)
            (out,) = backend.infer({"input": x})
            assert out.shape == (batch, 3, 8)
            np.testing.assert_allclose(out, 3 * x, rtol=1e-6)
        mallocs = gpu.calls.count("cudaMalloc")
        backend.infer({"input": np.ones((4, 3, 8), np.float32)})
        assert gpu.calls.count("cudaMalloc") == mallocs, "buffers sized for batch 4 are reused"
        with pytest.raises(ModelError, match=r"input 'input' shape \(5, 3, 8\) is outside.*max \(4, 3, 8\)"):
            backend.infer({"input": np.ones((5, 3, 8), np.float32)})
        # The backend recovers after a refused shape.
        np.testing.assert_allclose(backend.infer({"input": np.ones((1, 3, 8), np.float32)})[0], 3.0)
    _assert_released(gpu, trt)


def test_feeds_are_checked_against_the_engine(trt, cuda_python, tmp_path):
    with TensorRTBackend(_engine(tmp_path), _config()) as backend:
        with pytest.raises(ModelError, match=r"expects dtype float32"):
            backend.infer({"input": np.ones((1, 3, 4, 4), np.float64)})
        with pytest.raises(ModelError, match=r"model inputs are"):
            backend.infer({"images": np.ones((1, 3, 4, 4), np.float32)})


def test_cuda_graph_is_captured_after_the_first_run_and_recaptured_on_new_shapes(trt, cuda_python, tmp_path):
    gpu = cuda_python
    engine = _engine(tmp_path, dynamic_model, profiles=[DYNAMIC_PROFILE])
    with TensorRTBackend(engine, _config(cuda_graph=True)) as backend:
        for step, batch in enumerate((2, 2, 2, 3, 3)):
            x = np.full((batch, 3, 8), step + 1, np.float32)
            np.testing.assert_allclose(backend.infer({"input": x})[0], 3 * x)
        # batch 2: plain, capture+launch, launch; batch 3: plain, capture+launch.
        assert gpu.graph_launches == 3
        assert backend.describe()["cuda_graph"] is True
        assert len(gpu.graph_execs) == 1, "the graph for the old shapes was destroyed"
    _assert_released(gpu, trt)


def test_cuda_graph_falls_back_with_a_warning_on_pycuda(monkeypatch, gpu, tmp_path, caplog):
    install_pycuda(monkeypatch, gpu)
    block_cuda_python(monkeypatch)
    trt = install_tensorrt(monkeypatch, "10.3.0", gpu)
    engine = _engine(tmp_path)
    with caplog.at_level(logging.WARNING), TensorRTBackend(engine, _config(cuda_graph=True)) as backend:
        for value in (1.0, 2.0, 3.0):
            x = np.full((1, 3, 4, 4), value, np.float32)
            np.testing.assert_allclose(backend.infer({"input": x})[0], 2 * x + 1)
        assert backend.describe()["cuda_package"] == "pycuda"
        assert backend.describe()["cuda_graph"] is False
    assert "CUDA graphs need cuda-python" in caplog.text
    assert gpu.graph_launches == 0
    _assert_released(gpu, trt)


@pytest.mark.parametrize("package", ["pycuda", "cuda-python"])
def test_cuda_package_chooses_the_adapter_when_both_are_installed(monkeypatch, gpu, tmp_path, package):
    install_pycuda(monkeypatch, gpu)
    install_cuda_python(monkeypatch, gpu)
    trt = install_tensorrt(monkeypatch, "10.3.0", gpu)
    with TensorRTBackend(_engine(tmp_path), _config(cuda_package=package)) as backend:
        x = np.full((1, 3, 4, 4), 2.0, np.float32)
        np.testing.assert_allclose(backend.infer({"input": x})[0], 2 * x + 1)
        assert backend.describe()["cuda_package"] == package
    _assert_released(gpu, trt)


def test_cuda_package_is_one_of_the_known_packages():
    with pytest.raises(ValidationError):
        _config(cuda_package="/usr/lib/libcuda.so")


def test_corrupt_engine_is_a_model_error(trt, cuda_python, tmp_path):
    engine = tmp_path / "broken.plan"
    engine.write_bytes(b"\x00not a plan" * 10)
    with pytest.raises(ModelError) as err:
        TensorRTBackend(engine, _config()).load()
    message = str(err.value)
    assert str(engine) in message and "corrupt" in message and "lepton-edge build" in message
    assert "Magic tag does not match" in message, "TensorRT's own logged error is included"
    _assert_released(cuda_python, trt)


def test_engine_from_another_tensorrt_version_is_refused(monkeypatch, cuda_python, tmp_path):
    install_tensorrt(monkeypatch, "8.6.1", cuda_python)
    old = _engine(tmp_path, name="old")
    trt = install_tensorrt(monkeypatch, "10.3.0", cuda_python)
    with pytest.raises(ModelError, match=r"another TensorRT version.*expecting library version 10.3.0 got 8.6.1"):
        TensorRTBackend(old, _config()).load()
    _assert_released(cuda_python, trt)


def test_engine_from_another_gpu_is_refused(monkeypatch, cuda_python, tmp_path):
    other = FakeGpu(name="Fake RTX", capability=(8, 9))
    install_tensorrt(monkeypatch, "10.3.0", other)
    engine = _engine(tmp_path)
    install_tensorrt(monkeypatch, "10.3.0", cuda_python)
    with pytest.raises(ModelError, match=r"another GPU.*incompatible device"):
        TensorRTBackend(engine, _config()).load()


def test_missing_engine_file(trt, tmp_path):
    with pytest.raises(ModelError, match=r"engine file not found"):
        TensorRTBackend(tmp_path / "nope.plan", _config()).load()


def test_cuda_error_names_the_call_and_leaks_nothing(trt, cuda_python, tmp_path):
    gpu = cuda_python
    engine = _engine(tmp_path)
    gpu.fail_next("cudaMallocHost", cudaError_t.cudaErrorMemoryAllocation)
    with pytest.raises(CudaError, match=r"cudaMallocHost failed: cudaErrorMemoryAllocation"):
        TensorRTBackend(engine, _config()).load()
    _assert_released(gpu, trt)
    with TensorRTBackend(engine, _config()) as backend:
        gpu.fail_next("cudaStreamSynchronize", cudaError_t.cudaErrorLaunchFailure)
        with pytest.raises(CudaError, match=r"cudaStreamSynchronize failed: cudaErrorLaunchFailure"):
            backend.infer({"input": np.ones((1, 3, 4, 4), np.float32)})
    _assert_released(gpu, trt)


def test_infer_with_pycuda(monkeypatch, gpu, tmp_path):
    install_pycuda(monkeypatch, gpu)
    block_cuda_python(monkeypatch)
    trt = install_tensorrt(monkeypatch, "8.6.1", gpu)
    with TensorRTBackend(_engine(tmp_path), _config(warmup_runs=1)) as backend:
        x = np.random.default_rng(3).random((1, 3, 4, 4), dtype=np.float32)
        for got, want in zip(backend.infer({"input": x}), static_expected(x), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6)
    assert gpu.pageable_async_copies == 0
    _assert_released(gpu, trt)


def test_missing_tensorrt(monkeypatch, cuda_python, tmp_path):
    block_tensorrt(monkeypatch)
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"x")
    with pytest.raises(BackendUnavailable) as err:
        TensorRTBackend(engine, _config()).load()
    assert "pip install tensorrt" in str(err.value) and "python3-libnvinfer" in str(err.value)
    with pytest.raises(BackendUnavailable, match=r"pip install tensorrt"):
        build_engine(static_model(tmp_path / "m.onnx"), precision="fp32")


def test_missing_cuda_package(monkeypatch, gpu, tmp_path):
    install_cuda_python(monkeypatch, gpu)
    install_tensorrt(monkeypatch, "10.3.0", gpu)
    engine = _engine(tmp_path)
    block_cuda_python(monkeypatch)
    block_pycuda(monkeypatch)
    with pytest.raises(BackendUnavailable, match=r"cuda-python.*pycuda"):
        TensorRTBackend(engine, _config()).load()


# -- version shim -----------------------------------------------------------------------------

def test_shim_on_each_version():
    v8 = TrtApi.from_module(make_fake_tensorrt("8.6.1"))
    assert v8.explicit_batch_bit == 1 and v8.strongly_typed_bit is None and not v8.always_strongly_typed
    assert v8.has_fp16_flag and v8.has_int8_flag and v8.has_implicit_int8 and v8.has_calibration_profile
    assert v8.network_flags(strongly_typed=True) == 1, "8.6 cannot opt into strong typing"
    v10 = TrtApi.from_module(make_fake_tensorrt("10.3.0"))
    assert v10.explicit_batch_bit == 0 and v10.strongly_typed_bit == 1 << 1
    assert v10.has_implicit_int8 and v10.has_fp16_flag
    assert v10.network_flags(strongly_typed=False) == 0 and v10.network_flags(strongly_typed=True) == 2
    v11 = TrtApi.from_module(make_fake_tensorrt("11.4.0"))
    assert v11.always_strongly_typed and v11.strongly_typed_bit is None and v11.network_flags(True) == 0
    assert not (v11.has_fp16_flag or v11.has_int8_flag or v11.has_implicit_int8 or v11.has_calibration_profile)


def test_shim_refuses_tensorrt_older_than_8_6():
    old = make_fake_tensorrt("8.6.1")
    old.__version__ = "8.5.3"
    with pytest.raises(BackendUnavailable, match=r"TensorRT 8.5.3 is too old: lepton-edge needs TensorRT 8.6"):
        TrtApi.from_module(old)


# -- builder ----------------------------------------------------------------------------------

@pytest.fixture(params=TRT_VERSIONS)
def any_trt(request, monkeypatch, cuda_python):
    return install_tensorrt(monkeypatch, request.param, cuda_python)


def _network_flags(trt) -> int:
    return next(args[0] for call, args in trt.calls if call == "Builder.create_network")


def _flags_set(trt) -> list[str]:
    return [args[0] for call, args in trt.calls if call == "IBuilderConfig.set_flag"]


def test_fp32_build_on_every_version_runs(any_trt, cuda_python, tmp_path):
    trt = any_trt
    stages: list[str] = []
    plan, facts = build_engine(static_model(tmp_path / "m.onnx"), precision="fp32", progress=stages.append,
                               workspace_mb=256)
    assert stages == ["parse", "configure", "build", "done"]
    assert facts["tensorrt_version"] == trt.__version__ and facts["builder_flags"] == []
    assert facts["device_name"] == "Fake Orin (simulated)" and facts["compute_capability"] == "8.7"
    assert facts["strongly_typed"] is trt.__version__.startswith("11")
    assert facts["int8_mode"] is None and facts["device_type"] == "GPU" and len(facts["onnx_sha256"]) == 64
    json.dumps(facts)  # the manifest is JSON
    assert ("IBuilderConfig.set_memory_pool_limit", ("WORKSPACE", 256 << 20)) in trt.calls
    assert _network_flags(trt) == (1 if trt.__version__.startswith("8.") else 0), "EXPLICIT_BATCH only on 8.6"
    engine = tmp_path / "m.plan"
    engine.write_bytes(plan)
    with TensorRTBackend(engine, _config()) as backend:
        x = np.random.default_rng(0).random((1, 3, 4, 4), dtype=np.float32)
        np.testing.assert_allclose(backend.infer({"input": x})[0], 2 * x + 1, rtol=1e-6)


def test_fp16_uses_the_builder_flag_up_to_10(any_trt, tmp_path):
    trt = any_trt
    model = static_model(tmp_path / "m.onnx")
    if trt.__version__.startswith("11"):
        with pytest.raises(ModelError, match=r"no FP16 builder flag.*modelopt.onnx.autocast"):
            build_engine(model, precision="fp16")
        _, facts = build_engine(fp16_model(tmp_path / "half.onnx"), precision="fp16")
        assert facts["builder_flags"] == [] and facts["strongly_typed"] is True
    else:
        _, facts = build_engine(model, precision="fp16")
        assert facts["builder_flags"] == ["FP16"] and _flags_set(trt) == ["FP16"]


def test_int8_from_qdq_model(any_trt, tmp_path):
    trt = any_trt
    _, facts = build_engine(qdq_model(tmp_path / "q.onnx"), precision="int8")
    assert facts["int8_mode"] == "explicit-qdq" and facts["calibration_cache"] is None
    major = int(trt.__version__.split(".")[0])
    if major == 8:
        assert facts["builder_flags"] == ["FP16", "INT8"] and not facts["strongly_typed"]
    else:
        assert facts["builder_flags"] == [] and facts["strongly_typed"]
    if major == 10:
        assert _network_flags(trt) == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert trt._state["builds"][-1]["int8"] == "explicit"


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_int8_legacy_from_a_calibration_cache(monkeypatch, cuda_python, tmp_path, version):
    trt = install_tensorrt(monkeypatch, version, cuda_python)
    cache = tmp_path / "calib.cache"
    cache.write_bytes(calibration_cache_text(version))
    engine = _engine(tmp_path, dynamic_model, precision="int8", calibration_cache=cache,
                     profiles=[DYNAMIC_PROFILE])
    _, facts = build_engine(tmp_path / "model.onnx", precision="int8", calibration_cache=cache,
                            profiles=[DYNAMIC_PROFILE])
    assert facts["int8_mode"] == "calibration-cache" and facts["builder_flags"] == ["FP16", "INT8"]
    assert facts["calibration_cache"]["header"].endswith("-EntropyCalibration2")
    assert len(facts["calibration_cache"]["sha256"]) == 64
    assert trt._state["builds"][-1]["int8"] == "calibrated-from-cache"
    assert ("IBuilderConfig.set_calibration_profile", ()) in trt.calls
    with TensorRTBackend(engine, _config()) as backend:
        np.testing.assert_allclose(backend.infer({"input": np.ones((2, 3, 8), np.float32)})[0], 3.0)


def test_int8_without_qdq_needs_a_cache(trt, tmp_path):
    with pytest.raises(ConfigError, match=r"needs a calibration cache.*lepton-edge calibrate"):
        build_engine(static_model(tmp_path / "m.onnx"), precision="int8")


def test_int8_without_qdq_is_refused_on_11(monkeypatch, cuda_python, tmp_path):
    install_tensorrt(monkeypatch, "11.4.0", cuda_python)
    cache = tmp_path / "calib.cache"
    cache.write_bytes(calibration_cache_text("10.3.0"))
    with pytest.raises(ModelError, match=r"removed implicit INT8 calibration. Build from the Q/DQ"):
        build_engine(static_model(tmp_path / "m.onnx"), precision="int8", calibration_cache=cache)


@pytest.mark.parametrize(("content", "expected"), [
    (b"TRT-100300-FancyCalibration9\ninput: 3c010a14\n",
     r"unknown calibrator algorithm 'FancyCalibration9' in header 'TRT-100300-FancyCalibration9'"),
    (b"\x89PNG\r\n\x1a\n", r"not a TensorRT calibration cache: first line is"),
])
def test_bad_calibration_cache_header_is_refused(trt, tmp_path, content, expected):
    cache = tmp_path / "calib.cache"
    cache.write_bytes(content)
    with pytest.raises(ModelError, match=expected):
        build_engine(static_model(tmp_path / "m.onnx"), precision="int8", calibration_cache=cache)


@pytest.mark.parametrize("algorithm", ["EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration",
                                       "LegacyCalibration"])
def test_a_cache_replays_through_the_calibrator_its_header_names(trt, tmp_path, algorithm):
    cache = tmp_path / "calib.cache"
    cache.write_bytes(calibration_cache_text("10.3.0", algorithm))
    _, facts = build_engine(static_model(tmp_path / "m.onnx"), precision="int8", calibration_cache=cache)
    assert facts["calibration_cache"]["header"] == f"TRT-100300-{algorithm}"
    assert trt._state["replayed_caches"] == [algorithm]
    assert trt._state["builds"][-1]["int8"] == "calibrated-from-cache"


def test_calibration_cache_from_another_version_warns(trt, tmp_path, caplog):
    cache = tmp_path / "calib.cache"
    cache.write_bytes(calibration_cache_text("8.6.1"))
    with caplog.at_level(logging.WARNING):
        _, facts = build_engine(static_model(tmp_path / "m.onnx"), precision="int8", calibration_cache=cache)
    assert "written by TensorRT 8601" in caplog.text
    assert facts["int8_mode"] == "calibration-cache"


def test_failed_build_reports_tensorrt_errors(trt, tmp_path):
    cache = tmp_path / "calib.cache"
    cache.write_bytes(b"TRT-100300-EntropyCalibration2\n")  # a header but no scales
    with pytest.raises(ModelError) as err:
        build_engine(static_model(tmp_path / "m.onnx"), precision="int8", calibration_cache=cache)
    assert "failed to build the engine: Calibration cache has no scales" in str(err.value)
    assert "re-run `lepton-edge calibrate`" in str(err.value)


def test_parser_errors_are_collected(any_trt, tmp_path):
    model = unsupported_model(tmp_path / "u.onnx")
    with pytest.raises(ModelError) as err:
        build_engine(model, precision="fp32")
    message = str(err.value)
    assert str(model) in message and "(2 error(s))" in message
    assert "node 1: No importer registered for op: FancyWarp" in message
    assert "node 2: No importer registered for op: FancyBlur" in message


def test_dynamic_input_without_profile_is_refused(trt, tmp_path):
    model = dynamic_model(tmp_path / "d.onnx")
    with pytest.raises(ConfigError, match=r"dynamic inputs need an optimization profile: input \[-1, 3, 8\]"):
        build_engine(model, precision="fp32")


@pytest.mark.parametrize(("profile", "expected"), [
    ({"images": ((1, 3, 8),) * 3}, r"\['images'\] are not inputs of the model \(inputs: \['input'\]\)"),
    ({"input": ((4, 3, 8), (2, 3, 8), (1, 3, 8))}, r"min <= opt <= max"),
    ({"input": ((1, 3, 8), (2, 3, 8), (4, 5, 8))}, r"max shape \(4, 5, 8\) does not fit the input \[-1, 3, 8\]"),
    ({"input": ((1, 3), (2, 3), (4, 3))}, r"has rank 2, the input has rank 3"),
])
def test_bad_profiles_are_refused(trt, tmp_path, profile, expected):
    with pytest.raises(ConfigError, match=expected):
        build_engine(dynamic_model(tmp_path / "d.onnx"), precision="fp32", profiles=[profile])


def test_profiles_are_passed_to_tensorrt(trt, tmp_path):
    _, facts = build_engine(dynamic_model(tmp_path / "d.onnx"), precision="fp32", profiles=[DYNAMIC_PROFILE])
    assert ("IOptimizationProfile.set_shape", ("input", (1, 3, 8), (2, 3, 8), (4, 3, 8))) in trt.calls
    assert facts["profiles"] == [{"input": [[1, 3, 8], [2, 3, 8], [4, 3, 8]]}]


def test_timing_cache_is_read_and_written_back(trt, tmp_path, caplog):
    model = static_model(tmp_path / "m.onnx")
    cache = tmp_path / "caches" / "timing.cache"
    build_engine(model, precision="fp32", timing_cache=cache)
    assert cache.is_file() and trt._state["timing_cache_hits"] == 0
    first = cache.read_bytes()
    build_engine(model, precision="fp32", timing_cache=cache)
    assert trt._state["timing_cache_hits"] == 1, "the second build reused the first build's timings"
    assert ("IBuilderConfig.create_timing_cache", (len(first),)) in trt.calls
    build_engine(model, precision="fp16", timing_cache=cache)
    assert len(json.loads(cache.read_bytes().split(b"\n", 1)[1])["entries"]) == 2
    cache.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        build_engine(model, precision="fp32", timing_cache=cache)
    assert "timing cache is corrupt" in caplog.text
    assert cache.read_bytes().startswith(b"FAKE-TRT-TIMING-CACHE"), "a fresh cache replaced the corrupt one"


def test_timing_cache_from_another_gpu_is_replaced(monkeypatch, cuda_python, tmp_path, caplog):
    cache = tmp_path / "timing.cache"
    model = static_model(tmp_path / "m.onnx")
    install_tensorrt(monkeypatch, "10.3.0", FakeGpu(name="Other GPU"))
    build_engine(model, precision="fp32", timing_cache=cache)
    install_tensorrt(monkeypatch, "10.3.0", cuda_python)
    with caplog.at_level(logging.WARNING):
        build_engine(model, precision="fp32", timing_cache=cache)
    assert "timing cache comes from another GPU or TensorRT version" in caplog.text
    assert b"Fake Orin" in cache.read_bytes()


def test_dla_settings(monkeypatch, cuda_python, tmp_path):
    trt = install_tensorrt(monkeypatch, "10.3.0", cuda_python, dla_cores=2)
    model = static_model(tmp_path / "m.onnx")
    _, facts = build_engine(model, precision="fp16", dla_core=1)
    assert ("IBuilderConfig.default_device_type", ("DLA",)) in trt.calls
    assert ("IBuilderConfig.DLA_core", (1,)) in trt.calls
    assert set(_flags_set(trt)) == {"FP16", "GPU_FALLBACK"}
    assert facts["device_type"] == "DLA" and facts["dla_core"] == 1
    assert trt._state["builds"][-1]["device_type"] == "DLA"
    with pytest.raises(ConfigError, match=r"dla_core=2 is not available: this device has cores 0..1"):
        build_engine(model, precision="fp16", dla_core=2)
    with pytest.raises(ConfigError, match=r"DLA runs FP16 and INT8 layers only"):
        build_engine(model, precision="fp32", dla_core=0)


def test_dla_on_a_device_without_dla(trt, tmp_path):
    with pytest.raises(ConfigError, match=r"this device has no DLA"):
        build_engine(static_model(tmp_path / "m.onnx"), precision="fp16", dla_core=0)


def test_bad_builder_arguments(trt, tmp_path):
    model = static_model(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match=r"precision must be fp32, fp16 or int8, got 'int4'"):
        build_engine(model, precision="int4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"workspace_mb must be positive"):
        build_engine(model, precision="fp32", workspace_mb=0)
    with pytest.raises(ModelError, match=r"ONNX model not found"):
        build_engine(tmp_path / "missing.onnx", precision="fp32")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe not protobuf at all")
    with pytest.raises(ModelError, match=r"not a readable ONNX model"):
        build_engine(junk, precision="fp32")


def test_tensorrt_messages_reach_python_logging(trt, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lepton_edge.runtime.backends.tensorrt"):
        build_engine(dynamic_model(tmp_path / "d.onnx"), precision="fp32", profiles=[DYNAMIC_PROFILE] * 2)
        engine = tmp_path / "bad.plan"
        engine.write_bytes(b"junk")
        with pytest.raises(ModelError):
            TensorRTBackend(engine, _config()).load()
    assert any(r.levelno == logging.ERROR and r.getMessage().startswith("TensorRT: ") for r in caplog.records)


# -- environment report (runtime.platform, through the TensorRT and CUDA wrappers) ---------------------------

def test_environment_with_everything(trt, tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n")
    header = tmp_path / "cudnn_version.h"
    header.write_text("#define CUDNN_MAJOR 9\n#define CUDNN_MINOR 3\n#define CUDNN_PATCHLEVEL 0\n")
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\0")
    toolkit = tmp_path / "cuda"
    toolkit.mkdir()
    (toolkit / "version.json").write_text('{"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}')
    env = accelerator_facts(tegra_release=release, cudnn_headers=(tmp_path / "none.h", header),
                            model_files=(tmp_path / "absent", model), maps=tmp_path / "no-maps", cuda_root=toolkit)
    assert env == {
        "tensorrt": "10.3.0", "cuda_package": "cuda-python", "cuda_runtime": "12.6", "cuda_driver": "12.6",
        "gpu": "Fake Orin (simulated)", "compute_capability": "8.7", "multiprocessors": 16, "device_index": 0,
        "cudnn": "9.3.0", "l4t": "36.4.0", "module": "NVIDIA Jetson AGX Orin Developer Kit", "cuda": "12.6",
        "dla_cores": 0,
    }


def test_environment_without_tensorrt_or_cuda(monkeypatch, tmp_path):
    block_tensorrt(monkeypatch)
    block_cuda_python(monkeypatch)
    block_pycuda(monkeypatch)
    assert accelerator_facts(tegra_release=tmp_path / "absent", cudnn_headers=(),
                             model_files=(tmp_path / "absent",)) == {}


def test_modules_import_without_tensorrt_or_cuda():
    code = """
import sys
for name in ("tensorrt", "pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.cudart"):
    sys.modules[name] = None
import lepton_edge
import lepton_edge.runtime.backends.cuda
import lepton_edge.runtime.backends.tensorrt as t
from lepton_edge.config.pipeline import TensorRTBackendConfig
backend = t.TensorRTBackend("model.plan", TensorRTBackendConfig(type="tensorrt"))
import lepton_edge.runtime.platform as platform
assert "tensorrt" not in platform.accelerator_facts()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorrt", "pycuda", "cuda")
                and sys.modules[m] is not None)
print(loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- real hardware ----------------------------------------------------------------------------

def _real_trt():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    from lepton_edge.runtime.backends.cuda import available_packages

    if not available_packages():
        pytest.skip("neither cuda-python nor pycuda is installed")
    return trt


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_engine_matches_onnxruntime(tmp_path, precision):
    trt = _real_trt()
    import onnxruntime as ort

    if precision == "fp16" and int(trt.__version__.split(".")[0]) >= 11:
        model, dtype = fp16_model(tmp_path / "m.onnx"), np.float16  # 11.x: FP16 comes from the model
    else:
        model, dtype = static_model(tmp_path / "m.onnx"), np.float32
    plan, facts = build_engine(model, precision=precision, timing_cache=tmp_path / "timing.cache")
    assert facts["device_name"]
    engine = tmp_path / "m.plan"
    engine.write_bytes(plan)
    x = np.random.default_rng(0).random((1, 3, 4, 4)).astype(dtype)
    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    for cuda_graph in (False, True):
        with TensorRTBackend(engine, _config(cuda_graph=cuda_graph, warmup_runs=2)) as backend:
            for _ in range(3):
                got = backend.infer({"input": x})
                tolerance = 1e-5 if precision == "fp32" else 1e-2
                for g, e in zip(got, expected, strict=True):
                    np.testing.assert_allclose(g, e, rtol=tolerance, atol=tolerance)


@pytest.mark.gpu
def test_real_dynamic_engine(tmp_path):
    _real_trt()
    plan, _ = build_engine(dynamic_model(tmp_path / "d.onnx"), precision="fp32", profiles=[DYNAMIC_PROFILE])
    engine = tmp_path / "d.plan"
    engine.write_bytes(plan)
    with TensorRTBackend(engine, _config()) as backend:
        for batch in (1, 4, 2):
            x = np.random.default_rng(batch).random((batch, 3, 8), dtype=np.float32)
            np.testing.assert_allclose(backend.infer({"input": x})[0], 3 * x, rtol=1e-5)
