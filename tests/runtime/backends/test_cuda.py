"""The CUDA memory adapter over cuda-python (current and legacy import paths) and pycuda.

There is no GPU here: these run against the strict fakes in tests/support/fake_cuda.py. The tests
marked ``gpu`` run the same round trip on the real packages where they are installed.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from lepton_edge.core.errors import BackendUnavailable, ConfigError
from lepton_edge.runtime.backends.cuda import (
    CudaError,
    CudaGraphUnsupported,
    CudaPythonAdapter,
    PyCudaAdapter,
    available_packages,
    cuda_adapter,
)
from tests.support.fake_cuda import (
    FakeGpu,
    block_cuda_python,
    block_pycuda,
    cudaError_t,
    install_cuda_python,
    install_pycuda,
)

PACKAGES = ("cuda-python", "cuda-python-legacy", "pycuda")


@pytest.fixture(params=PACKAGES)
def adapter_on(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, gpu: FakeGpu):
    """(adapter, gpu) with only one CUDA package installed."""
    if request.param == "pycuda":
        install_pycuda(monkeypatch, gpu)
        block_cuda_python(monkeypatch)
    else:
        install_cuda_python(monkeypatch, gpu, legacy=request.param.endswith("legacy"))
        block_pycuda(monkeypatch)
    adapter = cuda_adapter(0)
    yield adapter, gpu
    adapter.close()


def test_round_trip_through_device_memory(adapter_on):
    cuda, gpu = adapter_on
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    ptr = cuda.malloc(data.nbytes)
    stream = cuda.create_stream()
    src = cuda.pinned_empty(data.shape, data.dtype)
    dst = cuda.pinned_empty(data.shape, data.dtype)
    src[...] = data
    cuda.memcpy_htod_async(ptr, src, stream)
    cuda.memcpy_dtoh_async(dst, ptr, stream)
    cuda.synchronize(stream)
    np.testing.assert_array_equal(dst, data)
    assert gpu.pageable_async_copies == 0, "pinned buffers must give truly asynchronous copies"
    cuda.free_pinned(src)
    cuda.free_pinned(dst)
    cuda.free(ptr)
    cuda.destroy_stream(stream)
    assert cuda.live_allocations() == {"device": 0, "pinned": 0, "streams": 0, "graphs": 0}
    assert gpu.live()["device"] == 0 and gpu.live()["pinned"] == 0


def test_pinned_arrays_have_the_requested_shape_and_dtype(adapter_on):
    cuda, _ = adapter_on
    array = cuda.pinned_empty((2, 5), np.float16)
    assert array.shape == (2, 5) and array.dtype == np.float16 and array.flags.c_contiguous
    with pytest.raises(CudaError, match="not a view"):
        cuda.free_pinned(array[:1])
    cuda.free_pinned(array)


def test_device_facts(adapter_on):
    cuda, gpu = adapter_on
    assert cuda.device_name() == gpu.name
    assert cuda.compute_capability() == (8, 7)
    assert cuda.runtime_version() == "12.6"
    assert cuda.driver_version() == "12.6"


def test_close_frees_leftovers_and_reports_the_leak(adapter_on, caplog: pytest.LogCaptureFixture):
    cuda, gpu = adapter_on
    cuda.malloc(1000)
    cuda.pinned_empty(16, np.uint8)
    cuda.create_stream()
    with caplog.at_level(logging.WARNING, logger="lepton_edge.runtime.backends.cuda"):
        cuda.close()
    assert "live resources" in caplog.text and "device=1" in caplog.text and "1000 device bytes" in caplog.text
    assert gpu.live() == {"device": 0, "pinned": 0, "streams": 0, "graphs": 0}
    cuda.close()  # twice is fine
    with pytest.raises(CudaError, match="closed"):
        cuda.malloc(8)


def test_freeing_an_unknown_pointer_is_an_error(adapter_on):
    cuda, _ = adapter_on
    with pytest.raises(CudaError, match="not a live allocation"):
        cuda.free(0x1234)
    with pytest.raises(CudaError, match="not a stream"):
        cuda.synchronize(0x999)


@pytest.mark.parametrize("legacy", [False, True])
def test_cuda_python_errors_name_the_call_and_the_error(monkeypatch, gpu, legacy):
    install_cuda_python(monkeypatch, gpu, legacy=legacy)
    block_pycuda(monkeypatch)
    with cuda_adapter() as cuda:
        gpu.fail_next("cudaMalloc", cudaError_t.cudaErrorMemoryAllocation)
        with pytest.raises(CudaError, match=r"cudaMalloc failed: cudaErrorMemoryAllocation"):
            cuda.malloc(64)
        stream = cuda.create_stream()
        gpu.fail_next("cudaStreamSynchronize", cudaError_t.cudaErrorIllegalAddress)
        with pytest.raises(CudaError, match=r"cudaStreamSynchronize failed: cudaErrorIllegalAddress"):
            cuda.synchronize(stream)
        assert cuda.live_allocations()["device"] == 0, "a failed malloc must not be tracked"


def test_an_out_of_bounds_copy_is_reported(adapter_on):
    cuda, _ = adapter_on
    ptr = cuda.malloc(16)
    stream = cuda.create_stream()
    host = cuda.pinned_empty(64, np.uint8)
    with pytest.raises(CudaError):
        cuda.memcpy_htod_async(ptr, host, stream)


def test_pycuda_errors_name_the_call(monkeypatch, gpu):
    install_pycuda(monkeypatch, gpu)
    block_cuda_python(monkeypatch)
    with cuda_adapter() as cuda:
        gpu.fail_next("cuMemAlloc", cudaError_t.cudaErrorMemoryAllocation)
        with pytest.raises(CudaError, match=r"pycuda mem_alloc failed: MemoryError"):
            cuda.malloc(64)


def _pycuda(monkeypatch, gpu):
    install_pycuda(monkeypatch, gpu)
    block_cuda_python(monkeypatch)
    import pycuda.driver as drv

    return drv


def test_pycuda_context_is_current_only_inside_the_activation(monkeypatch, gpu):
    drv = _pycuda(monkeypatch, gpu)
    cuda = cuda_adapter()
    assert isinstance(cuda, PyCudaAdapter)
    assert drv.Context.get_current() is None, "the constructor pops the context make_context pushed"
    with cuda.activate():
        own = drv.Context.get_current()
        assert own is not None
        with cuda.activate():  # nested: nothing more pushed
            assert len(gpu.context_stack()) == 1
        assert drv.Context.get_current() is own
    assert drv.Context.get_current() is None
    cuda.close()
    assert own.detached and drv.Context.get_current() is None


def test_two_pycuda_adapters_each_run_in_their_own_context(monkeypatch, gpu):
    """The engine cache opens candidates together and the controller loads a model before closing the old."""
    drv = _pycuda(monkeypatch, gpu)
    older, newer = cuda_adapter(), cuda_adapter()
    with older.activate():
        older_ctx = drv.Context.get_current()
        with newer.activate():  # another adapter's activation inside: LIFO
            newer_ctx = drv.Context.get_current()
            ptr = older.malloc(64)  # runs in the older context although the newer is on top
            assert drv.Context.get_current() is newer_ctx
        assert drv.Context.get_current() is older_ctx
    assert older_ctx is not newer_ctx
    assert ptr in older_ctx.allocations and ptr not in newer_ctx.allocations
    stream = newer.create_stream()
    older.close()  # closing the older one destroys its context, not the newer's
    host = newer.pinned_empty(16, np.uint8)
    host[:] = 7
    dev = newer.malloc(16)
    newer.memcpy_htod_async(dev, host, stream)
    newer.synchronize(stream)
    newer.free(dev)
    newer.free_pinned(host)
    newer.destroy_stream(stream)
    newer.close()
    assert gpu.context_stack() == [] and gpu.live() == {"device": 0, "pinned": 0, "streams": 0, "graphs": 0}


def test_pycuda_worker_threads_leave_no_context_pushed(monkeypatch, gpu):
    """The pipeline infers on its own thread, and stop / model swap close from another: pycuda aborts the
    process when a thread ends with a context on its stack."""
    _pycuda(monkeypatch, gpu)
    cuda = cuda_adapter()
    results: list[object] = []

    def worker() -> None:
        try:
            ptr = cuda.malloc(32)
            stream = cuda.create_stream()
            cuda.synchronize(stream)
            cuda.destroy_stream(stream)
            cuda.free(ptr)
            results.append("ok")
        except Exception as e:  # reported below
            results.append(e)

    for _ in range(3):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(10)
    closer = threading.Thread(target=cuda.close)
    closer.start()
    closer.join(10)
    assert results == ["ok"] * 3
    assert gpu.context_aborts == []


def test_a_foreign_context_left_on_top_is_not_popped_for_its_owner(monkeypatch, gpu):
    drv = _pycuda(monkeypatch, gpu)
    cuda = cuda_adapter()
    stray = drv.Device(0).make_context()  # pushed and never popped by its owner
    drv.Context.pop()
    with pytest.raises(CudaError, match="out of order"), cuda.activate():
        stray.push()
    assert drv.Context.get_current() is stray
    drv.Context.pop()
    drv.Context.pop()  # the adapter's own, left under the stray one
    stray.detach()
    cuda.close()


def test_cuda_python_sets_each_adapters_device_on_each_thread(monkeypatch):
    gpu = FakeGpu(device_count=2)
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    first, second = cuda_adapter(0), cuda_adapter(1)
    gpu.calls.clear()
    first.malloc(8)
    second.malloc(8)
    first.malloc(8)
    assert [c for c in gpu.calls if c == "cudaSetDevice"] == ["cudaSetDevice"] * 3
    first.close()
    second.close()


def test_graph_capture_replays_the_recorded_copies(cuda_python):
    gpu = cuda_python
    with cuda_adapter() as cuda:
        assert cuda.supports_graphs
        stream = cuda.create_stream()
        ptr = cuda.malloc(32)
        src = cuda.pinned_empty(8, np.float32)
        dst = cuda.pinned_empty(8, np.float32)
        cuda.begin_capture(stream)
        cuda.memcpy_htod_async(ptr, src, stream)
        cuda.memcpy_dtoh_async(dst, ptr, stream)
        graph = cuda.end_capture(stream)
        for value in (1.0, 7.0):
            src[...] = value
            cuda.launch_graph(graph, stream)
            cuda.synchronize(stream)
            np.testing.assert_array_equal(dst, np.full(8, value, np.float32))
        assert gpu.graph_launches == 2
        cuda.destroy_graph(graph)
        cuda.free_pinned(src)
        cuda.free_pinned(dst)
        cuda.free(ptr)
        cuda.destroy_stream(stream)
    assert gpu.live() == {"device": 0, "pinned": 0, "streams": 0, "graphs": 0}


def test_allocating_during_capture_fails_the_capture(cuda_python):
    with cuda_adapter() as cuda:
        stream = cuda.create_stream()
        cuda.begin_capture(stream)
        with pytest.raises(CudaError, match="cudaMalloc failed: cudaErrorStreamCaptureUnsupported"):
            cuda.malloc(8)
        with pytest.raises(CudaError, match="cudaStreamEndCapture failed: cudaErrorStreamCaptureInvalidated"):
            cuda.end_capture(stream)


def test_pycuda_has_no_graphs(monkeypatch, gpu):
    install_pycuda(monkeypatch, gpu)
    block_cuda_python(monkeypatch)
    with cuda_adapter() as cuda:
        assert not cuda.supports_graphs
        stream = cuda.create_stream()
        with pytest.raises(CudaGraphUnsupported, match="CUDA graphs need cuda-python"):
            cuda.begin_capture(stream)


def test_choice_of_package(monkeypatch, gpu):
    install_cuda_python(monkeypatch, gpu)
    install_pycuda(monkeypatch, gpu)
    assert available_packages() == ["cuda-python", "pycuda"]
    with cuda_adapter() as cuda:
        assert isinstance(cuda, CudaPythonAdapter), "cuda-python is preferred (it has graphs)"
    with cuda_adapter(prefer="pycuda") as cuda:
        assert isinstance(cuda, PyCudaAdapter)
    with pytest.raises(ConfigError, match="unknown CUDA package 'cupy'"):
        cuda_adapter(prefer="cupy")


def test_neither_package_installed(monkeypatch):
    block_cuda_python(monkeypatch)
    block_pycuda(monkeypatch)
    with pytest.raises(BackendUnavailable) as err:
        cuda_adapter()
    assert "cuda-python" in str(err.value) and "pycuda" in str(err.value) and "pip install" in str(err.value)
    with pytest.raises(BackendUnavailable, match="pip install pycuda"):
        cuda_adapter(prefer="pycuda")
    with pytest.raises(BackendUnavailable, match="pip install cuda-python"):
        cuda_adapter(prefer="cuda-python")


@pytest.mark.parametrize("package", ["cuda-python", "pycuda"])
def test_device_out_of_range_is_a_config_error(monkeypatch, gpu, package):
    if package == "pycuda":
        install_pycuda(monkeypatch, gpu)
        block_cuda_python(monkeypatch)
    else:
        install_cuda_python(monkeypatch, gpu)
        block_pycuda(monkeypatch)
    with pytest.raises(ConfigError, match=r"CUDA device 3 requested but 1 device\(s\) found.*backend.device"):
        cuda_adapter(3)


# -- real hardware ----------------------------------------------------------------------------

def _real_packages() -> list[str]:
    return available_packages()


@pytest.mark.gpu
@pytest.mark.parametrize("package", ["cuda-python", "pycuda"])
def test_real_round_trip(package: str):
    if package not in _real_packages():
        pytest.skip(f"{package} is not installed")
    try:
        cuda = cuda_adapter(0, prefer=package)
    except (CudaError, ConfigError) as e:
        pytest.skip(f"no usable CUDA device: {e}")
    with cuda:
        data = np.random.default_rng(0).random((64, 64), dtype=np.float32)
        ptr = cuda.malloc(data.nbytes)
        stream = cuda.create_stream()
        src, dst = cuda.pinned_empty(data.shape, data.dtype), cuda.pinned_empty(data.shape, data.dtype)
        src[...] = data
        cuda.memcpy_htod_async(ptr, src, stream)
        cuda.memcpy_dtoh_async(dst, ptr, stream)
        cuda.synchronize(stream)
        np.testing.assert_array_equal(dst, data)
        assert cuda.device_name()
        cuda.free_pinned(src)
        cuda.free_pinned(dst)
        cuda.free(ptr)
        cuda.destroy_stream(stream)
        assert not any(cuda.live_allocations().values())
