"""One small CUDA memory interface over cuda-python or pycuda (the only module that imports either).

:func:`cuda_adapter` picks whichever is installed (cuda-python first: it also supports CUDA graphs).
Both implementations check every call's status, track what they allocate, and free anything left
over in :meth:`CudaAdapter.close`, reporting it as a leak. Device pointers, streams and graphs are
plain ``int`` handles so callers never touch the underlying package.

Every operation runs inside :meth:`CudaAdapter.activate`, which makes the adapter's device (cuda-python: the
runtime API's current device, per thread) or its own context (pycuda: pushed on the calling thread's context
stack for the block and popped after it) current. A pycuda context is never left pushed: pycuda aborts the
process when a thread ends with a context on its stack, and with several adapters open each must run in its
own context, not in whichever was pushed last. Callers that run third-party GPU work on the adapter's device
(TensorRT deserialization, execution contexts, ``execute_async_v3``) wrap it in the same activation.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.core.errors import BackendUnavailable, ConfigError, CudaError, LeptonError

log = logging.getLogger(__name__)

CUDA_PYTHON = "cuda-python"
PYCUDA = "pycuda"

INSTALL_HINT = (
    "install cuda-python matching your CUDA version (`pip install cuda-python`; on Jetson the version of "
    "JetPack's CUDA) or pycuda (`pip install pycuda`)"
)


class CudaGraphUnsupported(CudaError):
    """CUDA graph capture is not available with the installed CUDA package."""


def _check_device(device: int, count: int) -> None:
    if not 0 <= device < count:
        raise ConfigError(
            f"CUDA device {device} requested but {count} device(s) found; "
            f"set backend.device to 0..{count - 1}"
        )


def _version_str(version: int) -> str:
    """CUDA's integer version (12060) as ``"12.6"``."""
    return f"{version // 1000}.{(version % 1000) // 10}"


class CudaAdapter(abc.ABC):
    """Device memory, pinned host memory, streams and graphs on one CUDA device."""

    package: str = ""
    supports_graphs: bool = False

    def __init__(self, device: int) -> None:
        self.device = device
        self._device_allocs: dict[int, int] = {}
        self._pinned: dict[int, np.ndarray] = {}
        self._streams: dict[int, Any] = {}
        self._graphs: dict[int, tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- public interface -------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        """Allocate ``nbytes`` of device memory; returns the device pointer."""
        self._check_open()
        with self.activate():
            ptr = self._malloc(max(int(nbytes), 1))
        with self._lock:
            self._device_allocs[ptr] = int(nbytes)
        return ptr

    def free(self, ptr: int) -> None:
        """Free device memory returned by :meth:`malloc`."""
        with self._lock:
            if ptr not in self._device_allocs:
                raise CudaError(f"free: {ptr:#x} is not a live allocation of this adapter")
            del self._device_allocs[ptr]
        with self.activate():
            self._free(ptr)

    def pinned_empty(self, shape: tuple[int, ...] | int, dtype: Any) -> np.ndarray:
        """A page-locked host array (uninitialised), needed for truly asynchronous copies."""
        self._check_open()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        with self.activate():
            array = self._pinned_empty(shape, np.dtype(dtype))
        with self._lock:
            self._pinned[array.ctypes.data] = array
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        """Free an array returned by :meth:`pinned_empty` (not a view of it)."""
        with self._lock:
            owned = self._pinned.get(array.ctypes.data)
            if owned is not array:
                raise CudaError(
                    "free_pinned: the array was not returned by pinned_empty (pass the array, not a view)"
                )
            del self._pinned[array.ctypes.data]
        with self.activate():
            self._free_pinned(array)

    def create_stream(self) -> int:
        """Create a CUDA stream; returns its handle."""
        self._check_open()
        with self.activate():
            handle, native = self._create_stream()
        with self._lock:
            self._streams[handle] = native
        return handle

    def destroy_stream(self, stream: int) -> None:
        with self._lock:
            native = self._streams.pop(stream, None)
        if native is None:
            raise CudaError(f"destroy_stream: {stream:#x} is not a stream of this adapter")
        with self.activate():
            self._destroy_stream(native)

    def memcpy_htod_async(self, dst_ptr: int, host_array: np.ndarray, stream: int) -> None:
        """Queue a copy of ``host_array`` (contiguous, ideally pinned) to device memory."""
        self._check_contiguous(host_array, "memcpy_htod_async")
        with self.activate():
            self._memcpy_htod_async(dst_ptr, host_array, self._stream(stream))

    def memcpy_dtoh_async(self, host_array: np.ndarray, src_ptr: int, stream: int) -> None:
        """Queue a copy from device memory into ``host_array`` (contiguous, ideally pinned)."""
        self._check_contiguous(host_array, "memcpy_dtoh_async")
        with self.activate():
            self._memcpy_dtoh_async(host_array, src_ptr, self._stream(stream))

    def synchronize(self, stream: int) -> None:
        """Wait until everything queued on ``stream`` has finished."""
        with self.activate():
            self._synchronize(self._stream(stream))

    def begin_capture(self, stream: int) -> None:
        """Start recording the work queued on ``stream`` into a CUDA graph."""
        with self.activate():
            self._begin_capture(self._stream(stream))

    def end_capture(self, stream: int) -> int:
        """Stop recording; returns an executable graph handle for :meth:`launch_graph`."""
        with self.activate():
            handle, natives = self._end_capture(self._stream(stream))
        with self._lock:
            self._graphs[handle] = natives
        return handle

    def launch_graph(self, graph_exec: int, stream: int) -> None:
        natives = self._graphs.get(graph_exec)
        if natives is None:
            raise CudaError(f"launch_graph: {graph_exec:#x} is not a graph of this adapter")
        with self.activate():
            self._launch_graph(natives, self._stream(stream))

    def destroy_graph(self, graph_exec: int) -> None:
        with self._lock:
            natives = self._graphs.pop(graph_exec, None)
        if natives is None:
            raise CudaError(f"destroy_graph: {graph_exec:#x} is not a graph of this adapter")
        with self.activate():
            self._destroy_graph(natives)

    def live_allocations(self) -> dict[str, int]:
        """How many device buffers, pinned arrays, streams and graphs are still alive."""
        with self._lock:
            return {
                "device": len(self._device_allocs),
                "pinned": len(self._pinned),
                "streams": len(self._streams),
                "graphs": len(self._graphs),
            }

    def close(self) -> None:
        """Free whatever is still allocated (logged as a leak) and release the device. Safe twice."""
        if self._closed:
            return
        live = self.live_allocations()
        if any(live.values()):
            leaked = sum(self._device_allocs.values())
            log.warning(
                "CUDA adapter closed with live resources (%s; %d device bytes); freeing them now. "
                "This is a leak in the caller.",
                ", ".join(f"{k}={v}" for k, v in live.items() if v),
                leaked,
            )
        errors: list[str] = []
        try:
            with self.activate():
                for handle in list(self._graphs):
                    self._quietly(errors, self.destroy_graph, handle)
                for handle in list(self._streams):
                    self._quietly(errors, self.destroy_stream, handle)
                for array in list(self._pinned.values()):
                    self._quietly(errors, self.free_pinned, array)
                for ptr in list(self._device_allocs):
                    self._quietly(errors, self.free, ptr)
        except LeptonError as e:  # the context could not be made current: release it anyway
            errors.append(str(e))
        self._quietly(errors, self._release)
        self._closed = True
        if errors:
            log.warning("errors while closing the CUDA adapter: %s", "; ".join(errors))

    def __enter__(self) -> CudaAdapter:
        return self

    @contextlib.contextmanager
    def activate(self) -> Iterator[CudaAdapter]:
        """Make this adapter's device or context current in the calling thread for the ``with`` block.

        Nests, and is safe to use from any thread and with other adapters' activations inside it: what
        this block made current is undone when it ends, and nothing else is.
        """
        token = self._enter()
        try:
            yield self
        finally:
            self._exit(token)

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- device facts -----------------------------------------------------------------------
    @abc.abstractmethod
    def device_name(self) -> str: ...

    @abc.abstractmethod
    def compute_capability(self) -> tuple[int, int]: ...

    @abc.abstractmethod
    def multiprocessor_count(self) -> int:
        """Streaming multiprocessors (SMs): 16 on a Jetson AGX Orin 64GB, 8 on an Orin Nano 8GB, both sm_87."""

    @abc.abstractmethod
    def runtime_version(self) -> str:
        """The CUDA runtime version of this package's runtime API, e.g. ``"12.6"`` (cuda-python: its own)."""

    @abc.abstractmethod
    def driver_version(self) -> str:
        """The newest CUDA version the installed driver supports, e.g. ``"12.6"``."""

    # -- helpers ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise CudaError(f"the {self.package} CUDA adapter is closed")

    def _stream(self, stream: int) -> Any:
        native = self._streams.get(stream)
        if native is None:
            raise CudaError(f"{stream!r} is not a stream of this adapter (destroyed, or another adapter's)")
        return native

    @staticmethod
    def _check_contiguous(array: np.ndarray, call: str) -> None:
        if not array.flags.c_contiguous:
            raise CudaError(f"{call}: the host array must be C-contiguous")

    @staticmethod
    def _quietly(errors: list[str], fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except LeptonError as e:
            errors.append(str(e))

    # -- implementation hooks ---------------------------------------------------------------
    @abc.abstractmethod
    def _malloc(self, nbytes: int) -> int: ...

    @abc.abstractmethod
    def _free(self, ptr: int) -> None: ...

    @abc.abstractmethod
    def _pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...

    @abc.abstractmethod
    def _free_pinned(self, array: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _create_stream(self) -> tuple[int, Any]: ...

    @abc.abstractmethod
    def _destroy_stream(self, native: Any) -> None: ...

    @abc.abstractmethod
    def _memcpy_htod_async(self, dst_ptr: int, host_array: np.ndarray, native: Any) -> None: ...

    @abc.abstractmethod
    def _memcpy_dtoh_async(self, host_array: np.ndarray, src_ptr: int, native: Any) -> None: ...

    @abc.abstractmethod
    def _synchronize(self, native: Any) -> None: ...

    def _begin_capture(self, native: Any) -> None:
        raise CudaGraphUnsupported(f"CUDA graphs need cuda-python; the {self.package} adapter cannot capture")

    def _end_capture(self, native: Any) -> tuple[int, tuple[Any, Any]]:
        raise CudaGraphUnsupported(f"CUDA graphs need cuda-python; the {self.package} adapter cannot capture")

    def _launch_graph(self, natives: tuple[Any, Any], stream: Any) -> None:
        raise CudaGraphUnsupported(f"CUDA graphs need cuda-python; the {self.package} adapter cannot launch")

    def _destroy_graph(self, natives: tuple[Any, Any]) -> None:
        raise CudaGraphUnsupported(f"CUDA graphs need cuda-python; the {self.package} adapter has none")

    def _enter(self) -> Any:
        """Make the adapter current in this thread; returns what :meth:`_exit` needs to undo it."""
        return None

    def _exit(self, token: Any) -> None:
        """Undo what :meth:`_enter` did (and only that)."""
        return None

    @abc.abstractmethod
    def _release(self) -> None: ...


class CudaPythonAdapter(CudaAdapter):
    """The adapter over cuda-python's runtime API (``cuda.bindings.runtime`` or the older ``cuda.cudart``)."""

    package = CUDA_PYTHON
    supports_graphs = True
    _thread = threading.local()
    """The device this adapter class last made current, per thread: shared by every cuda-python adapter,
    because the runtime API has one current device per thread whichever adapter set it."""

    def __init__(self, cudart: Any, device: int = 0) -> None:
        super().__init__(device)
        self._rt = cudart
        count = self._call("cudaGetDeviceCount")
        _check_device(device, count)
        self._enter()
        self._props = self._call("cudaGetDeviceProperties", device)

    def _call(self, name: str, *args: Any) -> Any:
        """Call ``cudart.<name>``; raise CudaError unless it returned cudaSuccess. Returns the value(s)."""
        result = getattr(self._rt, name)(*args)
        err, values = result[0], result[1:]
        if err != self._rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{name} failed: {self._error_name(err)}")
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def _error_name(self, err: Any) -> str:
        try:
            status, name = self._rt.cudaGetErrorName(err)
        except Exception:  # the error name is a courtesy; never mask the original failure
            return str(err)
        if status != self._rt.cudaError_t.cudaSuccess:
            return str(err)
        return name.decode() if isinstance(name, bytes) else str(name)

    def _enter(self) -> None:
        # The runtime API's current device is per thread (its primary context is never pushed or popped):
        # set it where it differs, e.g. on the pipeline's own thread or after another adapter's device.
        key = (id(self._rt), self.device)
        if getattr(CudaPythonAdapter._thread, "device", None) != key:
            self._call("cudaSetDevice", self.device)
            CudaPythonAdapter._thread.device = key

    def device_name(self) -> str:
        name = self._props.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode(errors="replace")
        return str(name).strip()

    def compute_capability(self) -> tuple[int, int]:
        return int(self._props.major), int(self._props.minor)

    def multiprocessor_count(self) -> int:
        return int(self._props.multiProcessorCount)

    def runtime_version(self) -> str:
        return _version_str(int(self._call("cudaRuntimeGetVersion")))

    def driver_version(self) -> str:
        return _version_str(int(self._call("cudaDriverGetVersion")))

    def _malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", nbytes))

    def _free(self, ptr: int) -> None:
        self._call("cudaFree", ptr)

    def _pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = max(count * dtype.itemsize, 1)
        ptr = int(self._call("cudaMallocHost", nbytes))
        raw = (ctypes.c_ubyte * nbytes).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def _free_pinned(self, array: np.ndarray) -> None:
        self._call("cudaFreeHost", array.ctypes.data)

    def _create_stream(self) -> tuple[int, Any]:
        stream = self._call("cudaStreamCreate")
        return int(stream), stream

    def _destroy_stream(self, native: Any) -> None:
        self._call("cudaStreamDestroy", native)

    def _memcpy_htod_async(self, dst_ptr: int, host_array: np.ndarray, native: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", dst_ptr, host_array.ctypes.data, host_array.nbytes, kind, native)

    def _memcpy_dtoh_async(self, host_array: np.ndarray, src_ptr: int, native: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", host_array.ctypes.data, src_ptr, host_array.nbytes, kind, native)

    def _synchronize(self, native: Any) -> None:
        self._call("cudaStreamSynchronize", native)

    def _begin_capture(self, native: Any) -> None:
        # Thread-local mode: CUDA calls made by other threads (other pipelines) stay legal meanwhile.
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", native, mode)

    def _end_capture(self, native: Any) -> tuple[int, tuple[Any, Any]]:
        graph = self._call("cudaStreamEndCapture", native)
        try:
            graph_exec = self._call("cudaGraphInstantiateWithFlags", graph, 0)
        except CudaError:
            self._call("cudaGraphDestroy", graph)
            raise
        return int(graph_exec), (graph_exec, graph)

    def _launch_graph(self, natives: tuple[Any, Any], stream: Any) -> None:
        self._call("cudaGraphLaunch", natives[0], stream)

    def _destroy_graph(self, natives: tuple[Any, Any]) -> None:
        graph_exec, graph = natives
        self._call("cudaGraphExecDestroy", graph_exec)
        self._call("cudaGraphDestroy", graph)

    def _release(self) -> None:
        pass  # the runtime API's primary context lives as long as the process


class PyCudaAdapter(CudaAdapter):
    """The adapter over ``pycuda.driver``, with its own context on the chosen device (no pycuda.autoinit).

    The context is created current (``make_context`` pushes it) and popped at once: from then on it is
    current only inside :meth:`activate`, on whichever thread asks, and never left on a thread's stack.
    """

    package = PYCUDA
    supports_graphs = False

    def __init__(self, driver: Any, device: int = 0) -> None:
        super().__init__(device)
        self._drv = driver
        self._call("init", driver.init)
        count = self._call("Device.count", driver.Device.count)
        _check_device(device, count)
        self._dev = self._call("Device", driver.Device, device)
        self._ctx = self._call("Device.make_context", self._dev.make_context)
        try:
            self._call("Context.pop", driver.Context.pop)
        except CudaError:
            self._call("Context.detach", self._ctx.detach)
            raise
        self._allocations: dict[int, Any] = {}
        self._pinned_allocs: dict[int, Any] = {}

    def _call(self, name: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._drv.Error as e:
            raise CudaError(f"pycuda {name} failed: {type(e).__name__}: {e}") from None

    def _enter(self) -> bool:
        """Push the adapter's context unless it is already the current one; True when pushed."""
        if self._closed:
            raise CudaError("the pycuda CUDA adapter is closed: its context is gone")
        if self._call("Context.get_current", self._drv.Context.get_current) == self._ctx:
            return False
        self._call("Context.push", self._ctx.push)
        return True

    def _exit(self, pushed: bool) -> None:
        if not pushed:
            return
        current = self._call("Context.get_current", self._drv.Context.get_current)
        if current != self._ctx:  # someone pushed without popping: never pop their context for them
            raise CudaError("pycuda context stack out of order: another context was left current inside this "
                            "adapter's activation")
        self._call("Context.pop", self._drv.Context.pop)

    def device_name(self) -> str:
        return str(self._call("Device.name", self._dev.name)).strip()

    def compute_capability(self) -> tuple[int, int]:
        major, minor = self._call("Device.compute_capability", self._dev.compute_capability)
        return int(major), int(minor)

    def multiprocessor_count(self) -> int:
        attribute = self._drv.device_attribute.MULTIPROCESSOR_COUNT
        return int(self._call("Device.get_attribute", self._dev.get_attribute, attribute))

    def runtime_version(self) -> str:
        version = self._call("get_version", self._drv.get_version)
        return ".".join(str(v) for v in version[:2])

    def driver_version(self) -> str:
        return _version_str(int(self._call("get_driver_version", self._drv.get_driver_version)))

    def _malloc(self, nbytes: int) -> int:
        allocation = self._call("mem_alloc", self._drv.mem_alloc, nbytes)
        ptr = int(allocation)
        self._allocations[ptr] = allocation
        return ptr

    def _free(self, ptr: int) -> None:
        allocation = self._allocations.pop(ptr)
        self._call("DeviceAllocation.free", allocation.free)

    def _pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        array = self._call("pagelocked_empty", self._drv.pagelocked_empty, shape, dtype)
        self._pinned_allocs[array.ctypes.data] = array.base
        return array

    def _free_pinned(self, array: np.ndarray) -> None:
        allocation = self._pinned_allocs.pop(array.ctypes.data)
        self._call("HostAllocation.free", allocation.free)

    def _create_stream(self) -> tuple[int, Any]:
        stream = self._call("Stream", self._drv.Stream)
        return int(stream.handle), stream

    def _destroy_stream(self, native: Any) -> None:
        pass  # pycuda destroys a stream with its Python object; the adapter dropped its reference

    def _memcpy_htod_async(self, dst_ptr: int, host_array: np.ndarray, native: Any) -> None:
        self._call("memcpy_htod_async", self._drv.memcpy_htod_async, dst_ptr, host_array, native)

    def _memcpy_dtoh_async(self, host_array: np.ndarray, src_ptr: int, native: Any) -> None:
        self._call("memcpy_dtoh_async", self._drv.memcpy_dtoh_async, host_array, src_ptr, native)

    def _synchronize(self, native: Any) -> None:
        self._call("Stream.synchronize", native.synchronize)

    def _release(self) -> None:
        # Not current anywhere by now (activations pop what they push): detaching destroys it.
        self._call("Context.detach", self._ctx.detach)


PROC_MAPS = Path("/proc/self/maps")


def loaded_cudart_version(maps: Path = PROC_MAPS, load: Any = ctypes.CDLL) -> str | None:
    """The version of the CUDA runtime library loaded in this process (``libcudart.so.12`` mapped by TensorRT
    or onnxruntime), asked with its own ``cudaRuntimeGetVersion``: ``"12.6"``; None when none is loaded.

    This is the CUDA an engine is tied to, not cuda-python's (whose runtime API is compiled into the package
    and follows the package's version).
    """
    try:
        lines = maps.read_text(errors="replace").splitlines()
    except OSError:
        return None
    libraries = sorted({line.split()[-1] for line in lines if "/libcudart.so" in line})
    for library in libraries:
        try:
            version = ctypes.c_int(0)
            if load(library).cudaRuntimeGetVersion(ctypes.byref(version)) == 0 and version.value > 0:
                return _version_str(version.value)
        except (OSError, AttributeError) as e:
            log.debug("cannot ask %s for its version: %s", library, e)
    return None


def _import_cudart() -> Any | None:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    return cudart


def _import_pycuda() -> Any | None:
    try:
        import pycuda.driver as driver
    except ImportError:
        return None
    return driver


def available_packages() -> list[str]:
    """The CUDA Python packages importable here, in order of preference."""
    found = []
    if _import_cudart() is not None:
        found.append(CUDA_PYTHON)
    if _import_pycuda() is not None:
        found.append(PYCUDA)
    return found


def cuda_adapter(device: int = 0, prefer: str | None = None) -> CudaAdapter:
    """A :class:`CudaAdapter` on ``device`` over cuda-python (preferred) or pycuda.

    ``prefer`` forces one package (``"cuda-python"`` or ``"pycuda"``). Raises BackendUnavailable
    when the package(s) are not installed.
    """
    if prefer not in (None, CUDA_PYTHON, PYCUDA):
        raise ConfigError(f"unknown CUDA package {prefer!r}; use {CUDA_PYTHON!r}, {PYCUDA!r} or None")
    if prefer in (None, CUDA_PYTHON):
        cudart = _import_cudart()
        if cudart is not None:
            return CudaPythonAdapter(cudart, device)
        if prefer == CUDA_PYTHON:
            raise BackendUnavailable("cuda-python is not installed: `pip install cuda-python` (your CUDA's)")
    driver = _import_pycuda()
    if driver is not None:
        return PyCudaAdapter(driver, device)
    if prefer == PYCUDA:
        raise BackendUnavailable("pycuda is not installed: `pip install pycuda`")
    raise BackendUnavailable(f"no CUDA Python package found: {INSTALL_HINT}")
