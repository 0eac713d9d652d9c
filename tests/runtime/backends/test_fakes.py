"""The strict fakes behave like the documented APIs they stand in for; the backend tests rely on it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.fake_cuda import FakeGpu, cudaError_t, cudaMemcpyKind, make_cudart
from tests.support.fake_tensorrt import make_fake_tensorrt


class _Logger:
    """Builds ILogger subclasses for a fake module, with or without calling the base __init__."""

    @staticmethod
    def make(trt, call_base: bool = True):
        class Logger(trt.ILogger):
            def __init__(self) -> None:
                if call_base:
                    trt.ILogger.__init__(self)

            def log(self, severity, msg) -> None:
                pass

        return Logger()


def test_removed_members_are_absent_in_11():
    trt = make_fake_tensorrt("11.4.0")
    assert not hasattr(trt, "IInt8EntropyCalibrator2")
    assert not hasattr(trt.IBuilderConfig, "int8_calibrator")
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "INT8")
    assert not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    builder = trt.Builder(_Logger.make(trt))
    config = builder.create_builder_config()
    with pytest.raises(AttributeError, match=r"int8_calibrator is not in the TensorRT 11.4.0 API"):
        config.int8_calibrator = None
    with pytest.raises(AttributeError, match=r"platform_has_fast_fp16 is not in the TensorRT 11.4.0 API"):
        _ = builder.platform_has_fast_fp16


def test_version_specific_members():
    v8, v10 = make_fake_tensorrt("8.6.1"), make_fake_tensorrt("10.3.0")
    assert not hasattr(v8.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    assert hasattr(v10.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    assert hasattr(v10.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert hasattr(v8.Builder, "build_engine") and not hasattr(v10.Builder, "build_engine")
    assert not hasattr(v8.DataType, "INT64") and hasattr(v10.DataType, "INT64")


def test_unknown_members_and_wrong_arguments_fail():
    trt = make_fake_tensorrt("10.3.0")
    builder = trt.Builder(_Logger.make(trt))
    config = builder.create_builder_config()
    with pytest.raises(AttributeError, match=r"IBuilderConfig.max_workspace_size is not in the TensorRT 10.3.0 API"):
        _ = config.max_workspace_size
    with pytest.raises(AttributeError, match=r"IBuilderConfig.fp16_mode is not in the TensorRT 10.3.0 API"):
        _ = config.fp16_mode
    with pytest.raises(AttributeError, match=r"not a settable attribute"):
        config.workspace = 5
    with pytest.raises(AttributeError, match=r"module 'tensorrt' has no attribute 'Refitter'"):
        _ = trt.Refitter
    with pytest.raises(TypeError):
        config.set_flag("FP16")
    with pytest.raises(TypeError):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1.5)
    with pytest.raises(TypeError):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)
    with pytest.raises(TypeError):
        builder.create_network(1 << 7)


def test_subclasses_must_call_the_base_init():
    trt = make_fake_tensorrt("10.3.0")
    with pytest.raises(TypeError, match=r"ILogger.__init__\(\) must be called"):
        trt.Builder(_Logger.make(trt, call_base=False))

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            pass

    config = trt.Builder(_Logger.make(trt)).create_builder_config()
    with pytest.raises(TypeError, match=r"IInt8Calibrator.__init__\(\) must be called"):
        config.int8_calibrator = Calibrator()


def test_parser_needs_explicit_batch_on_8_6(tmp_path):
    from tests.runtime.backends.conftest import static_model

    trt = make_fake_tensorrt("8.6.1")
    logger = _Logger.make(trt)
    builder = trt.Builder(logger)
    parser = trt.OnnxParser(builder.create_network(0), logger)
    assert not parser.parse_from_file(str(static_model(tmp_path / "m.onnx")))
    assert "explicit batch" in parser.get_error(0).desc()


def test_strongly_typed_networks_refuse_precision_flags(tmp_path):
    from tests.runtime.backends.conftest import static_model

    trt = make_fake_tensorrt("10.3.0")
    messages: list[str] = []

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg) -> None:
            messages.append(msg)

    builder = trt.Builder(Logger())
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, Logger()).parse_from_file(str(static_model(tmp_path / "m.onnx")))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(network, config) is None
    assert any("not allowed with a strongly typed network" in m for m in messages)


def test_host_memory_is_a_buffer_only():
    trt = make_fake_tensorrt("10.3.0")
    memory = trt.IHostMemory(b"plan")
    assert bytes(memory) == b"plan" and memory.nbytes == 4
    with pytest.raises(AttributeError):
        memory.startswith(b"p")


def test_cudart_returns_status_tuples_and_checks_types():
    gpu = FakeGpu()
    rt = make_cudart(gpu)
    err, ptr = rt.cudaMalloc(16)
    assert err == cudaError_t.cudaSuccess and isinstance(ptr, int)
    assert rt.cudaFree(ptr) == (cudaError_t.cudaSuccess,)
    assert rt.cudaFree(ptr) == (cudaError_t.cudaErrorInvalidValue,), "double free is an error"
    with pytest.raises(TypeError):
        rt.cudaMalloc(16.0)
    _, stream = rt.cudaStreamCreate()
    with pytest.raises(TypeError):
        rt.cudaMemcpyAsync(0, 0, 4, 1, stream)  # kind must be cudaMemcpyKind
    gpu.fail_next("cudaStreamCreate", cudaError_t.cudaErrorInvalidValue)
    assert rt.cudaStreamCreate() == (cudaError_t.cudaErrorInvalidValue, None)


def test_queued_work_runs_only_on_synchronize():
    gpu = FakeGpu()
    rt = make_cudart(gpu)
    _, ptr = rt.cudaMalloc(4)
    _, stream = rt.cudaStreamCreate()
    _, pinned = rt.cudaMallocHost(4)
    host = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_ubyte * 4).from_address(pinned))
    host[:] = [1, 2, 3, 4]
    rt.cudaMemcpyAsync(ptr, pinned, 4, cudaMemcpyKind.cudaMemcpyHostToDevice, stream)
    assert gpu.read(ptr, 4) == bytes([0xA5] * 4), "device memory starts as garbage and nothing ran yet"
    rt.cudaStreamSynchronize(stream)
    assert gpu.read(ptr, 4) == bytes([1, 2, 3, 4])
    assert gpu.pageable_async_copies == 0


def test_fake_cudart_signatures_match_the_real_package():
    """Where cuda-python is installed, every faked function takes the real parameters, in order."""
    try:
        from cuda.bindings import runtime as real
    except ImportError:
        pytest.skip("cuda-python is not installed")
    import inspect
    import re

    fake = make_cudart(FakeGpu())
    checked = 0
    for name in dir(fake):
        if not name.startswith("cuda") or not inspect.isfunction(getattr(fake, name)):
            continue
        documented = (getattr(real, name).__doc__ or "").strip().splitlines()[0]
        match = re.fullmatch(rf"{name}\((.*)\)", documented)
        assert match, f"cuda-python has no documented {name}"
        # "size_t size", "kind: cudaMemcpyKind", "dst": the parameter name is the last word before ":".
        real_params = [p.split(":")[0].split()[-1] for p in match.group(1).split(",") if p.strip()]
        assert list(inspect.signature(getattr(fake, name)).parameters) == real_params, name
        checked += 1
    assert checked >= 20


def test_pycuda_fake_records_a_thread_that_ends_with_a_context_pushed():
    """pycuda aborts the process there (context_stack::~context_stack); the fake records it for the tests."""
    import threading

    from tests.support.fake_cuda import make_pycuda_driver

    gpu = FakeGpu()
    drv = make_pycuda_driver(gpu)
    drv.init()

    def leaves_it_pushed() -> None:
        drv.Device(0).make_context()

    def pops_it() -> None:
        context = drv.Device(0).make_context()
        drv.Context.pop()
        context.detach()

    for target in (leaves_it_pushed, pops_it):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join(10)
    assert len(gpu.context_aborts) == 1 and "context stack was not empty" in gpu.context_aborts[0]


def test_pycuda_fake_needs_a_live_current_context_and_destroys_its_memory():
    from tests.support.fake_cuda import make_pycuda_driver

    gpu = FakeGpu()
    drv = make_pycuda_driver(gpu)
    drv.init()
    with pytest.raises(drv.LogicError, match="invalid device context"):
        drv.mem_alloc(16)
    context = drv.Device(0).make_context()
    allocation = drv.mem_alloc(16)
    stream = drv.Stream()
    drv.Context.pop()
    context.detach()
    assert int(allocation) not in gpu.allocations and stream.handle not in gpu.streams
    assert gpu.context_stack() == []


def test_tensorrt_fake_runs_an_engine_only_in_its_own_context(tmp_path):
    from tests.runtime.backends.conftest import static_model
    from tests.support.fake_cuda import make_pycuda_driver

    gpu = FakeGpu()
    drv = make_pycuda_driver(gpu)
    drv.init()
    trt = make_fake_tensorrt("10.3.0", gpu)
    logger = _Logger.make(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(static_model(tmp_path / "m.onnx")))
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    del network, builder
    own = drv.Device(0).make_context()
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(plan))
    other = drv.Device(0).make_context()  # pushed on top of the engine's
    assert engine.create_execution_context() is None
    drv.Context.pop()
    assert engine.create_execution_context() is not None
    drv.Context.pop()
    other.detach()
    own.detach()
