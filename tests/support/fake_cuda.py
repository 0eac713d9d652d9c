"""Strict fakes of cuda-python's runtime module and of ``pycuda.driver`` over one simulated GPU.

There is no GPU here, so the CUDA adapter is tested against these. They follow the documented
behaviour closely enough to catch the mistakes that matter:

* cuda-python calls return ``(cudaError_t, *values)`` tuples and take typed handles; errors can be
  injected per call (:meth:`FakeGpu.fail_next`).
* Device memory is a bytearray per allocation, filled with a garbage pattern (CUDA does not zero it);
  a copy outside a live allocation fails.
* Work queued on a stream runs only when the stream is synchronised, so forgetting to synchronise
  shows up as garbage output. Copies from pageable (not pinned) host memory are counted.
* Stream capture records work into a graph instead of running it; allocating or synchronising during
  capture invalidates it, as on a real device. Launching a graph replays the recorded work.
* pycuda's contexts live on a per-thread context stack (:meth:`FakeGpu.context_stack`), as the CUDA
  driver's do (CUDA driver API, "Context Management": cuCtxCreate makes the new context current by pushing
  it on the calling thread's stack; cuCtxPushCurrent/cuCtxPopCurrent are per thread). Calls that need a
  context fail without one, like pycuda's ("invalid device context"). pycuda keeps its stack in thread-specific
  storage whose destructor prints "PyCUDA ERROR: The context stack was not empty upon module cleanup" and calls
  ``abort()`` (pycuda ``src/cpp/cuda.hpp``, ``context_stack::~context_stack``): a thread that ends with a
  context still pushed is recorded in :attr:`FakeGpu.context_aborts`, which tests assert stays empty.
  Destroying (detaching) a context frees what was allocated in it (cuCtxDestroy frees the context's
  resources), and kernels launched by TensorRT must run in the context their engine was deserialized in
  (see the TensorRT fake).

The TensorRT fake (``tests/support/fake_tensorrt.py``) queues engine executions on the same
:class:`FakeGpu` streams, so a whole inference runs through this simulation.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import threading
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEVICE_GARBAGE = 0xA5
HOST_GARBAGE = 0x5A
_DEVICE_BASE = 0x7F00_0000_0000
_ALIGN = 512


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInitializationError = 3
    cudaErrorInvalidDevicePointer = 17
    cudaErrorInvalidMemcpyDirection = 21
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorIllegalState = 401
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalAddress = 700
    cudaErrorLaunchFailure = 719
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorStreamCaptureUnmatched = 903


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class _Handle:
    """Like cuda-python's opaque handle types: ``int()`` and ``getPtr()`` give the address."""

    def __init__(self, init_value: int = 0) -> None:
        if not isinstance(init_value, int):
            raise TypeError(f"{type(self).__name__}() takes an int, got {type(init_value).__name__}")
        self._value = init_value

    def __int__(self) -> int:
        return self._value

    def getPtr(self) -> int:
        return self._value

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._value == self._value  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._value))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._value:#x}>"


class cudaStream_t(_Handle):
    pass


class cudaGraph_t(_Handle):
    pass


class cudaGraphExec_t(_Handle):
    pass


@dataclass
class cudaDeviceProp:
    name: bytes
    major: int
    minor: int
    totalGlobalMem: int
    multiProcessorCount: int = 16


class DeviceFault(Exception):
    """Work on the simulated device touched memory it must not (a sticky error, like on a GPU)."""


@dataclass
class _Stream:
    pending: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    capture: list[tuple[str, Callable[[], None]]] | None = None
    capture_invalid: str | None = None
    context: Any = None
    """The pycuda context the stream was created in (None: the runtime API's primary context)."""


class _ThreadContextStack(list):
    """One thread's CUDA context stack; like pycuda's, it is destroyed when its thread ends."""

    def __init__(self, gpu: FakeGpu) -> None:
        super().__init__()
        self._gpu = weakref.ref(gpu)
        self._thread = threading.current_thread().name

    def __del__(self) -> None:
        gpu = self._gpu()
        if self and gpu is not None:
            gpu.context_aborts.append(f"thread {self._thread!r} ended with {len(self)} context(s) still pushed: "
                                      "PyCUDA ERROR: The context stack was not empty upon module cleanup (abort)")


class FakeGpu:
    """One simulated CUDA device shared by the cudart, pycuda and TensorRT fakes."""

    def __init__(self, *, name: str = "Fake Orin (simulated)", capability: tuple[int, int] = (8, 7),
                 device_count: int = 1, runtime_version: int = 12060, driver_version: int = 12060,
                 total_memory: int = 8 << 30, multiprocessors: int = 16) -> None:
        self.name = name
        self.capability = capability
        self.device_count = device_count
        self.runtime_version = runtime_version
        self.driver_version = driver_version
        self.total_memory = total_memory
        self.multiprocessors = multiprocessors
        """SMs: 16 on a Jetson AGX Orin 64GB, 8 on an Orin NX 16GB or Orin Nano 8GB, 4 on an Orin Nano 4GB."""
        self.allocations: dict[int, bytearray] = {}
        self.pinned: dict[int, Any] = {}
        self.streams: dict[int, _Stream] = {}
        self.graphs: dict[int, list[tuple[str, Callable[[], None]]]] = {}
        self.graph_execs: dict[int, list[tuple[str, Callable[[], None]]]] = {}
        self.calls: list[str] = []
        self.executed: list[str] = []
        """Labels of the work that actually ran on the device, in order."""
        self.pageable_async_copies = 0
        self.graph_launches = 0
        self.sticky_error: str | None = None
        self.context_aborts: list[str] = []
        """Threads that ended with a pycuda context still pushed: the real pycuda aborts the process."""
        self._context_stacks = threading.local()
        self._failures: dict[str, list[cudaError_t]] = {}
        self._next_device = _DEVICE_BASE
        self._next_handle = 0x1000
        self._lock = threading.RLock()

    # -- test controls ----------------------------------------------------------------------
    def fail_next(self, call: str, error: cudaError_t = cudaError_t.cudaErrorMemoryAllocation,
                  times: int = 1) -> None:
        """Make the next ``times`` calls of ``call`` (e.g. ``"cudaMalloc"``) return ``error``."""
        self._failures.setdefault(call, []).extend([error] * times)

    def live(self) -> dict[str, int]:
        """Live device allocations, pinned host buffers, streams and graphs (all 0 after a clean close)."""
        return {
            "device": len(self.allocations),
            "pinned": len(self.pinned),
            "streams": len(self.streams),
            "graphs": len(self.graphs) + len(self.graph_execs),
        }

    def context_stack(self) -> list:
        """The calling thread's CUDA context stack (pycuda contexts; the runtime API pushes none)."""
        stack = getattr(self._context_stacks, "stack", None)
        if stack is None:
            stack = self._context_stacks.stack = _ThreadContextStack(self)
        return stack

    def current_context(self) -> Any:
        """The context current in the calling thread (the top of its stack), or None."""
        stack = self.context_stack()
        return stack[-1] if stack else None

    # -- used by the fakes -------------------------------------------------------------------
    def injected(self, call: str) -> cudaError_t | None:
        with self._lock:
            self.calls.append(call)
            queue = self._failures.get(call)
            if queue:
                return queue.pop(0)
            return None

    def new_handle(self) -> int:
        with self._lock:
            self._next_handle += 0x10
            return self._next_handle

    def device_malloc(self, nbytes: int) -> int:
        with self._lock:
            ptr = self._next_device
            self._next_device += (max(nbytes, 1) + _ALIGN - 1) // _ALIGN * _ALIGN + _ALIGN  # gap: catch overruns
            self.allocations[ptr] = bytearray([DEVICE_GARBAGE]) * nbytes
            return ptr

    def host_malloc(self, nbytes: int) -> int:
        buffer = (ctypes.c_ubyte * max(nbytes, 1))()
        ctypes.memset(buffer, HOST_GARBAGE, max(nbytes, 1))
        ptr = ctypes.addressof(buffer)
        with self._lock:
            self.pinned[ptr] = buffer
        return ptr

    def _device_range(self, ptr: int, nbytes: int) -> tuple[bytearray, int] | None:
        for base, memory in self.allocations.items():
            if base <= ptr and ptr + nbytes <= base + len(memory):
                return memory, ptr - base
        return None

    def is_device_range(self, ptr: int, nbytes: int) -> bool:
        with self._lock:
            return self._device_range(ptr, nbytes) is not None

    def is_pinned_range(self, ptr: int, nbytes: int) -> bool:
        with self._lock:
            for base, buffer in self.pinned.items():
                if base <= ptr and ptr + nbytes <= base + ctypes.sizeof(buffer):
                    return True
            return False

    def read(self, ptr: int, nbytes: int) -> bytes:
        with self._lock:
            found = self._device_range(ptr, nbytes)
            if found is None:
                raise DeviceFault(f"read of {nbytes} bytes at {ptr:#x} outside any live allocation")
            memory, offset = found
            return bytes(memory[offset:offset + nbytes])

    def write(self, ptr: int, data: bytes) -> None:
        with self._lock:
            found = self._device_range(ptr, len(data))
            if found is None:
                raise DeviceFault(f"write of {len(data)} bytes at {ptr:#x} outside any live allocation")
            memory, offset = found
            memory[offset:offset + len(data)] = data

    def read_host(self, ptr: int, nbytes: int) -> bytes:
        if not self.is_pinned_range(ptr, nbytes):
            raise DeviceFault(f"host read at {ptr:#x}: pinned buffer was freed before the copy ran")
        return ctypes.string_at(ptr, nbytes)

    def write_host(self, ptr: int, data: bytes) -> None:
        if not self.is_pinned_range(ptr, len(data)):
            raise DeviceFault(f"host write at {ptr:#x}: pinned buffer was freed before the copy ran")
        ctypes.memmove(ptr, data, len(data))

    def any_capturing(self) -> bool:
        return any(s.capture is not None for s in self.streams.values())

    def invalidate_captures(self, reason: str) -> None:
        for stream in self.streams.values():
            if stream.capture is not None and stream.capture_invalid is None:
                stream.capture_invalid = reason

    def enqueue(self, stream: int, label: str, work: Callable[[], None]) -> bool:
        """Queue ``work`` on ``stream`` (or record it, while capturing). False if no such stream."""
        with self._lock:
            state = self.streams.get(stream)
            if state is None:
                return False
            if state.capture is not None:
                state.capture.append((label, work))
            else:
                state.pending.append((label, work))
            return True

    def run_pending(self, stream: int) -> None:
        with self._lock:
            state = self.streams[stream]
            work, state.pending = state.pending, []
        for label, fn in work:
            if self.sticky_error:
                return
            try:
                fn()
            except DeviceFault as e:
                self.sticky_error = f"{label}: {e}"
                return
            self.executed.append(label)


# ---------------------------------------------------------------------------------------------
# cuda-python: cuda.bindings.runtime (also importable as the older cuda.cudart)
# ---------------------------------------------------------------------------------------------

class _StrictModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r} (not in the faked API)")


def _require_int(call: str, **values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{call}(): argument {name!r} must be an int, got {type(value).__name__}")


def _stream_key(call: str, stream: Any) -> int:
    if isinstance(stream, cudaStream_t):
        return int(stream)
    if isinstance(stream, int) and not isinstance(stream, bool):
        return stream
    raise TypeError(f"{call}(): argument 'stream' must be cudaStream_t or int, got {type(stream).__name__}")


def make_cudart(gpu: FakeGpu, module_name: str = "cuda.bindings.runtime") -> types.ModuleType:
    """A fake of cuda-python's runtime module bound to ``gpu``."""
    rt = _StrictModule(module_name)
    current = threading.local()

    def failed(call: str, values: int = 0) -> tuple | None:
        err = gpu.injected(call)
        if err is None:
            return None
        return (err, *([None] * values))

    def capture_guard(call: str) -> tuple | None:
        # Allocation is a "potentially unsafe" call: forbidden while a stream captures.
        if gpu.any_capturing():
            gpu.invalidate_captures(f"{call} during capture")
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        return None

    def cudaGetDeviceCount():
        return failed("cudaGetDeviceCount", 1) or (cudaError_t.cudaSuccess, gpu.device_count)

    def cudaSetDevice(device):
        _require_int("cudaSetDevice", device=device)
        if (err := failed("cudaSetDevice")) is not None:
            return err
        if not 0 <= device < gpu.device_count:
            return (cudaError_t.cudaErrorInvalidDevice,)
        current.device = device
        return (cudaError_t.cudaSuccess,)

    def cudaGetDeviceProperties(device):
        _require_int("cudaGetDeviceProperties", device=device)
        if (err := failed("cudaGetDeviceProperties", 1)) is not None:
            return err
        if not 0 <= device < gpu.device_count:
            return (cudaError_t.cudaErrorInvalidDevice, None)
        name = gpu.name.encode().ljust(256, b"\0")
        return (cudaError_t.cudaSuccess, cudaDeviceProp(name, *gpu.capability, gpu.total_memory,
                                                          gpu.multiprocessors))

    def cudaRuntimeGetVersion():
        return failed("cudaRuntimeGetVersion", 1) or (cudaError_t.cudaSuccess, gpu.runtime_version)

    def cudaDriverGetVersion():
        return failed("cudaDriverGetVersion", 1) or (cudaError_t.cudaSuccess, gpu.driver_version)

    def cudaGetErrorName(error):
        if not isinstance(error, cudaError_t):
            raise TypeError(f"cudaGetErrorName(): argument 'error' must be cudaError_t, got {type(error).__name__}")
        return (cudaError_t.cudaSuccess, error.name.encode())

    def cudaMalloc(size):
        _require_int("cudaMalloc", size=size)
        if (err := failed("cudaMalloc", 1)) is not None:
            return err
        if (err := capture_guard("cudaMalloc")) is not None:
            return (*err, None)
        if size < 0:
            return (cudaError_t.cudaErrorInvalidValue, None)
        return (cudaError_t.cudaSuccess, gpu.device_malloc(size))

    def cudaFree(devPtr):
        _require_int("cudaFree", devPtr=devPtr)
        if (err := failed("cudaFree")) is not None:
            return err
        if (err := capture_guard("cudaFree")) is not None:
            return err
        if devPtr == 0:
            return (cudaError_t.cudaSuccess,)
        if devPtr not in gpu.allocations:
            return (cudaError_t.cudaErrorInvalidValue,)
        del gpu.allocations[devPtr]
        return (cudaError_t.cudaSuccess,)

    def cudaMallocHost(size):
        _require_int("cudaMallocHost", size=size)
        if (err := failed("cudaMallocHost", 1)) is not None:
            return err
        if (err := capture_guard("cudaMallocHost")) is not None:
            return (*err, None)
        return (cudaError_t.cudaSuccess, gpu.host_malloc(size))

    def cudaFreeHost(ptr):
        _require_int("cudaFreeHost", ptr=ptr)
        if (err := failed("cudaFreeHost")) is not None:
            return err
        if ptr not in gpu.pinned:
            return (cudaError_t.cudaErrorInvalidValue,)
        del gpu.pinned[ptr]
        return (cudaError_t.cudaSuccess,)

    def cudaStreamCreate():
        if (err := failed("cudaStreamCreate", 1)) is not None:
            return err
        handle = gpu.new_handle()
        gpu.streams[handle] = _Stream()
        return (cudaError_t.cudaSuccess, cudaStream_t(handle))

    def cudaStreamDestroy(stream):
        key = _stream_key("cudaStreamDestroy", stream)
        if (err := failed("cudaStreamDestroy")) is not None:
            return err
        if key not in gpu.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        gpu.run_pending(key)  # queued work completes before the stream goes
        del gpu.streams[key]
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(dst, src, count, kind, stream):
        _require_int("cudaMemcpyAsync", dst=dst, src=src, count=count)
        if not isinstance(kind, cudaMemcpyKind):
            raise TypeError(f"cudaMemcpyAsync(): argument 'kind' must be cudaMemcpyKind, got {type(kind).__name__}")
        key = _stream_key("cudaMemcpyAsync", stream)
        if (err := failed("cudaMemcpyAsync")) is not None:
            return err
        if key not in gpu.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        capturing = gpu.streams[key].capture is not None
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            if not gpu.is_device_range(dst, count):
                return (cudaError_t.cudaErrorInvalidValue,)
            if gpu.is_pinned_range(src, count):
                gpu.enqueue(key, "memcpy HtoD", lambda: gpu.write(dst, gpu.read_host(src, count)))
                return (cudaError_t.cudaSuccess,)
            if capturing:
                gpu.invalidate_captures("pageable memcpy during capture")
                return (cudaError_t.cudaErrorStreamCaptureInvalidated,)
            gpu.pageable_async_copies += 1
            snapshot = ctypes.string_at(src, count)  # pageable: staged before the call returns
            gpu.enqueue(key, "memcpy HtoD", lambda: gpu.write(dst, snapshot))
            return (cudaError_t.cudaSuccess,)
        if kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            if not gpu.is_device_range(src, count):
                return (cudaError_t.cudaErrorInvalidValue,)
            if gpu.is_pinned_range(dst, count):
                gpu.enqueue(key, "memcpy DtoH", lambda: gpu.write_host(dst, gpu.read(src, count)))
                return (cudaError_t.cudaSuccess,)
            if capturing:
                gpu.invalidate_captures("pageable memcpy during capture")
                return (cudaError_t.cudaErrorStreamCaptureInvalidated,)
            gpu.pageable_async_copies += 1
            gpu.run_pending(key)  # pageable: the copy is synchronous with the host
            ctypes.memmove(dst, gpu.read(src, count), count)
            return (cudaError_t.cudaSuccess,)
        return (cudaError_t.cudaErrorInvalidMemcpyDirection,)

    def cudaStreamSynchronize(stream):
        key = _stream_key("cudaStreamSynchronize", stream)
        if (err := failed("cudaStreamSynchronize")) is not None:
            return err
        state = gpu.streams.get(key)
        if state is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if state.capture is not None:
            state.capture_invalid = "synchronize during capture"
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        gpu.run_pending(key)
        if gpu.sticky_error:
            return (cudaError_t.cudaErrorIllegalAddress,)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamBeginCapture(stream, mode):
        key = _stream_key("cudaStreamBeginCapture", stream)
        if not isinstance(mode, cudaStreamCaptureMode):
            raise TypeError("cudaStreamBeginCapture(): argument 'mode' must be cudaStreamCaptureMode")
        if (err := failed("cudaStreamBeginCapture")) is not None:
            return err
        state = gpu.streams.get(key)
        if state is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if state.capture is not None:
            return (cudaError_t.cudaErrorIllegalState,)
        gpu.run_pending(key)
        state.capture, state.capture_invalid = [], None
        return (cudaError_t.cudaSuccess,)

    def cudaStreamEndCapture(stream):
        key = _stream_key("cudaStreamEndCapture", stream)
        if (err := failed("cudaStreamEndCapture", 1)) is not None:
            state = gpu.streams.get(key)
            if state is not None:
                state.capture = None
            return err
        state = gpu.streams.get(key)
        if state is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle, None)
        if state.capture is None:
            return (cudaError_t.cudaErrorStreamCaptureUnmatched, None)
        work, invalid = state.capture, state.capture_invalid
        state.capture, state.capture_invalid = None, None
        if invalid:
            return (cudaError_t.cudaErrorStreamCaptureInvalidated, None)
        handle = gpu.new_handle()
        gpu.graphs[handle] = work
        return (cudaError_t.cudaSuccess, cudaGraph_t(handle))

    def cudaGraphInstantiateWithFlags(graph, flags):
        if not isinstance(graph, cudaGraph_t):
            raise TypeError("cudaGraphInstantiateWithFlags(): argument 'graph' must be cudaGraph_t")
        _require_int("cudaGraphInstantiateWithFlags", flags=flags)
        if (err := failed("cudaGraphInstantiateWithFlags", 1)) is not None:
            return err
        work = gpu.graphs.get(int(graph))
        if work is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle, None)
        handle = gpu.new_handle()
        gpu.graph_execs[handle] = list(work)
        return (cudaError_t.cudaSuccess, cudaGraphExec_t(handle))

    def cudaGraphLaunch(graphExec, stream):
        if not isinstance(graphExec, cudaGraphExec_t):
            raise TypeError("cudaGraphLaunch(): argument 'graphExec' must be cudaGraphExec_t")
        key = _stream_key("cudaGraphLaunch", stream)
        if (err := failed("cudaGraphLaunch")) is not None:
            return err
        work = gpu.graph_execs.get(int(graphExec))
        if work is None or key not in gpu.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        gpu.graph_launches += 1
        for label, fn in work:
            gpu.enqueue(key, f"graph: {label}", fn)
        return (cudaError_t.cudaSuccess,)

    def cudaGraphExecDestroy(graphExec):
        if not isinstance(graphExec, cudaGraphExec_t):
            raise TypeError("cudaGraphExecDestroy(): argument 'graphExec' must be cudaGraphExec_t")
        if (err := failed("cudaGraphExecDestroy")) is not None:
            return err
        if gpu.graph_execs.pop(int(graphExec), None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (cudaError_t.cudaSuccess,)

    def cudaGraphDestroy(graph):
        if not isinstance(graph, cudaGraph_t):
            raise TypeError("cudaGraphDestroy(): argument 'graph' must be cudaGraph_t")
        if (err := failed("cudaGraphDestroy")) is not None:
            return err
        if gpu.graphs.pop(int(graph), None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (cudaError_t.cudaSuccess,)

    for value in (cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode, cudaStream_t, cudaGraph_t,
                  cudaGraphExec_t, cudaDeviceProp):
        setattr(rt, value.__name__, value)
    for fn in (cudaGetDeviceCount, cudaSetDevice, cudaGetDeviceProperties, cudaRuntimeGetVersion,
               cudaDriverGetVersion, cudaGetErrorName, cudaMalloc, cudaFree, cudaMallocHost, cudaFreeHost,
               cudaStreamCreate, cudaStreamDestroy, cudaMemcpyAsync, cudaStreamSynchronize,
               cudaStreamBeginCapture, cudaStreamEndCapture, cudaGraphInstantiateWithFlags, cudaGraphLaunch,
               cudaGraphExecDestroy, cudaGraphDestroy):
        setattr(rt, fn.__name__, fn)
    return rt


# ---------------------------------------------------------------------------------------------
# pycuda.driver
# ---------------------------------------------------------------------------------------------

def make_pycuda_driver(gpu: FakeGpu) -> types.ModuleType:
    """A fake of ``pycuda.driver`` bound to ``gpu``: explicit contexts, allocations freed by ``free()``."""
    drv = _StrictModule("pycuda.driver")
    state = {"initialized": False}

    class Error(Exception):
        pass

    class LogicError(Error):
        pass

    class MemoryError(Error):
        pass

    class RuntimeError(Error):
        pass

    def stack() -> list:
        return gpu.context_stack()

    def check(call: str) -> None:
        if not state["initialized"]:
            raise LogicError(f"{call} failed: cuInit has not been called")
        err = gpu.injected(call)
        if err is not None:
            raise (MemoryError if err == cudaError_t.cudaErrorMemoryAllocation else LogicError)(
                f"{call} failed: {err.name}"
            )

    def need_context(call: str) -> None:
        check(call)
        if not stack():
            raise LogicError(f"{call} failed: invalid device context (no context is current in this thread)")

    def init(flags: int = 0) -> None:
        _require_int("init", flags=flags)
        state["initialized"] = True

    class Context:
        def __init__(self, device: Device) -> None:
            self.device = device
            self.detached = False
            self.allocations: set[int] = set()
            self.streams: set[int] = set()

        def push(self) -> None:
            check("cuCtxPushCurrent")
            if self.detached:
                raise LogicError("cuCtxPushCurrent failed: context was detached")
            stack().append(self)

        @staticmethod
        def pop() -> None:
            check("cuCtxPopCurrent")
            if not stack():
                raise LogicError("cuCtxPopCurrent failed: context stack is empty")
            stack().pop()

        @staticmethod
        def get_current() -> Context | None:
            return stack()[-1] if stack() else None

        def detach(self) -> None:
            check("cuCtxDetach")
            if self in stack():
                raise LogicError("cuCtxDetach failed: context is still current; pop it first")
            self.detached = True
            for ptr in self.allocations:  # cuCtxDestroy frees everything the context owned
                gpu.allocations.pop(ptr, None)
            for handle in self.streams:
                gpu.streams.pop(handle, None)

    class device_attribute(enum.IntEnum):  # pycuda spells it in lower case
        MULTIPROCESSOR_COUNT = 16  # CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT

    class Device:
        def __init__(self, number: int) -> None:
            _require_int("Device", number=number)
            check("cuDeviceGet")
            if not 0 <= number < gpu.device_count:
                raise LogicError("cuDeviceGet failed: invalid device ordinal")
            self.number = number

        @staticmethod
        def count() -> int:
            check("cuDeviceGetCount")
            return gpu.device_count

        def name(self) -> str:
            return gpu.name

        def compute_capability(self) -> tuple[int, int]:
            return gpu.capability

        def get_attribute(self, attr: Any) -> int:
            if not isinstance(attr, device_attribute):
                raise TypeError("get_attribute(): attr must be a pycuda.driver.device_attribute")
            return {device_attribute.MULTIPROCESSOR_COUNT: gpu.multiprocessors}[attr]

        def total_memory(self) -> int:
            return gpu.total_memory

        def make_context(self, flags: int = 0) -> Context:
            _require_int("make_context", flags=flags)
            check("cuCtxCreate")
            context = Context(self)
            stack().append(context)
            return context

    class DeviceAllocation:
        def __init__(self, ptr: int) -> None:
            self._ptr = ptr
            self._freed = False
            weakref.finalize(self, DeviceAllocation._release, ptr)

        @staticmethod
        def _release(ptr: int) -> None:
            gpu.allocations.pop(ptr, None)

        def __int__(self) -> int:
            return self._ptr

        __index__ = __int__

        def free(self) -> None:
            need_context("cuMemFree")
            if not self._freed:
                self._freed = True
                gpu.allocations.pop(self._ptr, None)

    class HostAllocation:
        def __init__(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
            self._ptr = ptr
            self.__array_interface__ = {
                "data": (ptr, False), "shape": shape, "typestr": dtype.str, "version": 3,
            }

        def free(self) -> None:
            need_context("cuMemFreeHost")
            gpu.pinned.pop(self._ptr, None)

    def live_context(call: str) -> Any:
        need_context(call)
        context = stack()[-1]
        if context.detached:
            raise LogicError(f"{call} failed: invalid device context (the current context was destroyed)")
        return context

    def mem_alloc(bytes: int) -> DeviceAllocation:
        _require_int("mem_alloc", bytes=bytes)
        context = live_context("cuMemAlloc")
        ptr = gpu.device_malloc(bytes)
        context.allocations.add(ptr)
        return DeviceAllocation(ptr)

    def pagelocked_empty(shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
        live_context("cuMemHostAlloc")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        allocation = HostAllocation(gpu.host_malloc(nbytes), shape, dtype)
        array = np.asarray(allocation)
        assert array.base is allocation
        return array

    class Stream:
        def __init__(self, flags: int = 0) -> None:
            _require_int("Stream", flags=flags)
            context = live_context("cuStreamCreate")
            self.handle = gpu.new_handle()
            gpu.streams[self.handle] = _Stream(context=context)
            context.streams.add(self.handle)
            weakref.finalize(self, gpu.streams.pop, self.handle, None)

        def synchronize(self) -> None:
            live_context("cuStreamSynchronize")
            if self.handle not in gpu.streams:
                raise LogicError("cuStreamSynchronize failed: invalid resource handle (its context was destroyed)")
            gpu.run_pending(self.handle)
            if gpu.sticky_error:
                raise LogicError(f"cuStreamSynchronize failed: an illegal memory access ({gpu.sticky_error})")

    def _device_ptr(value: Any) -> int:
        if isinstance(value, DeviceAllocation | int) and not isinstance(value, bool):
            return int(value)
        raise TypeError(f"expected a device pointer (int or DeviceAllocation), got {type(value).__name__}")

    def _host(value: Any, call: str) -> np.ndarray:
        if not isinstance(value, np.ndarray) or not value.flags.c_contiguous:
            raise TypeError(f"{call}: the host side must be a contiguous numpy array")
        return value

    def memcpy_htod_async(dest: Any, src: Any, stream: Stream | None = None) -> None:
        live_context("cuMemcpyHtoDAsync")
        if stream is not None and stream.handle not in gpu.streams:
            raise LogicError("cuMemcpyHtoDAsync failed: invalid resource handle (its context was destroyed)")
        ptr, host = _device_ptr(dest), _host(src, "memcpy_htod_async")
        if not gpu.is_device_range(ptr, host.nbytes):
            raise LogicError("cuMemcpyHtoDAsync failed: invalid argument")
        address, nbytes = host.ctypes.data, host.nbytes
        if stream is None:
            gpu.write(ptr, host.tobytes())  # synchronous
        elif gpu.is_pinned_range(address, nbytes):
            gpu.enqueue(stream.handle, "memcpy HtoD", lambda: gpu.write(ptr, gpu.read_host(address, nbytes)))
        else:
            gpu.pageable_async_copies += 1
            snapshot = host.tobytes()  # pageable: staged before the call returns
            gpu.enqueue(stream.handle, "memcpy HtoD", lambda: gpu.write(ptr, snapshot))

    def memcpy_dtoh_async(dest: Any, src: Any, stream: Stream | None = None) -> None:
        live_context("cuMemcpyDtoHAsync")
        if stream is not None and stream.handle not in gpu.streams:
            raise LogicError("cuMemcpyDtoHAsync failed: invalid resource handle (its context was destroyed)")
        host, ptr = _host(dest, "memcpy_dtoh_async"), _device_ptr(src)
        if not gpu.is_device_range(ptr, host.nbytes):
            raise LogicError("cuMemcpyDtoHAsync failed: invalid argument")
        address, nbytes = host.ctypes.data, host.nbytes
        if gpu.is_pinned_range(address, nbytes) and stream is not None:
            gpu.enqueue(stream.handle, "memcpy DtoH", lambda: gpu.write_host(address, gpu.read(ptr, nbytes)))
        else:
            gpu.pageable_async_copies += 1
            if stream is not None:
                gpu.run_pending(stream.handle)
            ctypes.memmove(address, gpu.read(ptr, nbytes), nbytes)

    def get_version() -> tuple[int, int, int]:
        return (gpu.runtime_version // 1000, (gpu.runtime_version % 1000) // 10, 0)

    def get_driver_version() -> int:
        return gpu.driver_version

    for value in (Error, LogicError, MemoryError, RuntimeError, Context, Device, device_attribute, DeviceAllocation,
                  HostAllocation,
                  Stream, init, mem_alloc, pagelocked_empty, memcpy_htod_async, memcpy_dtoh_async, get_version,
                  get_driver_version):
        setattr(drv, value.__name__, value)
    return drv


# ---------------------------------------------------------------------------------------------
# Installing the fakes in place of the real packages
# ---------------------------------------------------------------------------------------------

_CUDA_PYTHON_MODULES = ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart")
_PYCUDA_MODULES = ("pycuda", "pycuda.driver", "pycuda.autoinit")


def block_cuda_python(monkeypatch: Any) -> None:
    """Make ``cuda-python`` unimportable for the test (whether or not it is installed)."""
    for name in _CUDA_PYTHON_MODULES:
        monkeypatch.setitem(sys.modules, name, None)


def block_pycuda(monkeypatch: Any) -> None:
    for name in _PYCUDA_MODULES:
        monkeypatch.setitem(sys.modules, name, None)


def install_cuda_python(monkeypatch: Any, gpu: FakeGpu | None = None, *, legacy: bool = False) -> FakeGpu:
    """Install the cudart fake as ``cuda.bindings.runtime`` (or, ``legacy``, only as ``cuda.cudart``)."""
    gpu = gpu or FakeGpu()
    block_cuda_python(monkeypatch)
    package = _StrictModule("cuda")
    package.__path__ = []  # a package, so submodule imports resolve through sys.modules
    if legacy:
        runtime = make_cudart(gpu, "cuda.cudart")
        package.cudart = runtime
        monkeypatch.setitem(sys.modules, "cuda.cudart", runtime)
    else:
        runtime = make_cudart(gpu)
        bindings = _StrictModule("cuda.bindings")
        bindings.__path__ = []
        bindings.runtime = runtime
        package.bindings = bindings
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    monkeypatch.setitem(sys.modules, "cuda", package)
    return gpu


def install_pycuda(monkeypatch: Any, gpu: FakeGpu | None = None) -> FakeGpu:
    """Install the ``pycuda.driver`` fake (``pycuda.autoinit`` stays unimportable)."""
    gpu = gpu or FakeGpu()
    block_pycuda(monkeypatch)
    package = _StrictModule("pycuda")
    package.__path__ = []
    driver = make_pycuda_driver(gpu)
    package.driver = driver
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    return gpu
