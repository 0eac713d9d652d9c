"""TensorRT: the runtime backend for serialized engines, and the version shim.

This is the only module that imports ``tensorrt``, and only inside functions: importing it works on
any machine; the engine builder (:mod:`lepton_edge.engines.tensorrt_builder`) gets TensorRT from here.
Every difference between the supported TensorRT versions (8.6 on JetPack 6.0, through 10.x and 11.x)
is decided once, in :class:`TrtApi`; the rest of the code asks the shim.

Only the name-based I/O API is used (``num_io_tensors``, ``get_tensor_*``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``), which every supported version has.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.config.pipeline import TensorRTBackendConfig
from lepton_edge.core.errors import BackendUnavailable, ConfigError, LeptonError, ModelError
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.backends.base import Backend
from lepton_edge.runtime.backends.cuda import CudaAdapter, CudaError, cuda_adapter

log = logging.getLogger(__name__)

TRT_INSTALL_HINT = (
    "the TensorRT Python bindings are not installed: `pip install tensorrt` (x86_64 with an NVIDIA GPU), "
    "or on Jetson use JetPack's bindings (`sudo apt install python3-libnvinfer`, visible to this Python "
    "environment, e.g. a venv created with --system-site-packages)"
)

# Names used only where the running TensorRT has them, with the first and last major version that
# has them (None: still present). The bindings check (tests/runtime/backends/test_trt_bindings.py)
# verifies each against the real bindings of every version in its range; everything else this module
# and the engine builder use must exist in all supported versions.
VERSIONED_NAMES: dict[str, tuple[int, int | None]] = {
    "EXPLICIT_BATCH": (8, 10),  # required by the ONNX parser in 8.x, ignored in 10, removed in 11
    "STRONGLY_TYPED": (9, None),  # opt-in in 9/10, always on (flag deprecated) in 11
    "FP16": (8, 10),  # BuilderFlag.FP16, removed in 11 (strong typing instead)
    "INT8": (8, 10),  # BuilderFlag.INT8, removed in 11 (explicit Q/DQ instead)
    "IInt8EntropyCalibrator2": (8, 10),
    "IInt8EntropyCalibrator": (8, 10),
    "IInt8MinMaxCalibrator": (8, 10),
    "IInt8LegacyCalibrator": (8, 10),
    "get_quantile": (8, 10),
    "get_regression_cutoff": (8, 10),
    "read_histogram_cache": (8, 10),
    "write_histogram_cache": (8, 10),
    "int8_calibrator": (8, 10),
    "set_calibration_profile": (8, 10),
    "get_batch_size": (8, 10),
    "get_batch": (8, 10),
    "read_calibration_cache": (8, 10),
    "write_calibration_cache": (8, 10),
    "precision": (8, 10),  # ILayer precision constraints (mixed precision, implicit int8): gone in 11
    "set_output_type": (8, 10),
    "OBEY_PRECISION_CONSTRAINTS": (8, 10),
    "build_serialized_network": (8, None),  # probed: TensorRT older than 8.6 is refused
    "set_memory_pool_limit": (8, None),
}
MIN_VERSION = (8, 6)



def import_tensorrt() -> Any:
    """Import and return the ``tensorrt`` module, or raise BackendUnavailable saying how to install it."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: bindings present but libnvinfer missing
        raise BackendUnavailable(f"TensorRT backend unavailable: {TRT_INSTALL_HINT} ({e})") from None
    return tensorrt


def _parse_version(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True)
class TrtApi:
    """What the running TensorRT supports, decided once from its version and its attributes."""

    version: str
    major: int
    minor: int
    explicit_batch_bit: int
    """``create_network`` flag bits every network needs (EXPLICIT_BATCH on 8.x, 0 later)."""
    strongly_typed_bit: int | None
    """Flag bits that opt a network into strong typing (9.x/10.x); None where unavailable or implied."""
    always_strongly_typed: bool
    """11.x: every network is strongly typed; precision comes from the model, not builder flags."""
    has_fp16_flag: bool
    has_int8_flag: bool
    has_implicit_int8: bool
    """The legacy calibrator API (IInt8EntropyCalibrator2, ``int8_calibrator``) exists (up to 10.x)."""
    has_calibration_profile: bool

    @classmethod
    def from_module(cls, trt: Any) -> TrtApi:
        major, minor, _ = _parse_version(trt.__version__)
        core = hasattr(trt.Builder, "build_serialized_network") and hasattr(
            trt.IBuilderConfig, "set_memory_pool_limit"
        )
        if (major, minor) < MIN_VERSION or not core:
            raise BackendUnavailable(
                f"TensorRT {trt.__version__} is too old: lepton-edge needs TensorRT "
                f"{'.'.join(map(str, MIN_VERSION))} or newer (JetPack 6 or a current `pip install tensorrt`)"
            )
        creation = trt.NetworkDefinitionCreationFlag
        explicit_batch = 0
        if major < 10 and hasattr(creation, "EXPLICIT_BATCH"):
            explicit_batch = 1 << int(creation.EXPLICIT_BATCH)
        always_strong = major >= 11
        strong_bit = None
        if not always_strong and hasattr(creation, "STRONGLY_TYPED"):
            strong_bit = 1 << int(creation.STRONGLY_TYPED)
        flags = trt.BuilderFlag
        has_int8 = major < 11 and hasattr(flags, "INT8")
        return cls(
            version=trt.__version__,
            major=major,
            minor=minor,
            explicit_batch_bit=explicit_batch,
            strongly_typed_bit=strong_bit,
            always_strongly_typed=always_strong,
            has_fp16_flag=major < 11 and hasattr(flags, "FP16"),
            has_int8_flag=has_int8,
            has_implicit_int8=has_int8
            and hasattr(trt, "IInt8EntropyCalibrator2")
            and hasattr(trt.IBuilderConfig, "int8_calibrator"),
            has_calibration_profile=major < 11 and hasattr(trt.IBuilderConfig, "set_calibration_profile"),
        )

    @property
    def can_opt_into_strong_typing(self) -> bool:
        return self.strongly_typed_bit is not None

    def network_flags(self, strongly_typed: bool) -> int:
        """The ``create_network`` flags for a (optionally strongly typed) network."""
        flags = self.explicit_batch_bit
        if strongly_typed and self.strongly_typed_bit is not None:
            flags |= self.strongly_typed_bit
        return flags


# ---------------------------------------------------------------------------------------------
# TensorRT subclasses: built in factories because the base classes exist only after the import.
# ---------------------------------------------------------------------------------------------

_LOGGER_LOCK = threading.Lock()
_SHARED_LOGGER: list[tuple[Any, Any]] = []
"""[(tensorrt module, its logger)]: the one logger of the process (tests swap fake modules, each gets its own)."""
_operation = threading.local()
"""Per thread: the sequence number where the current TensorRT operation began (see :func:`make_logger`)."""
_error_numbers = itertools.count(1)


def _create_logger(trt: Any) -> Any:
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.CRITICAL,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.INFO,
        severity.VERBOSE: logging.DEBUG,
    }

    class CapturingLogger(trt.ILogger):
        """Forwards to Python logging and keeps the latest errors, numbered, with the thread that logged them."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: collections.deque[tuple[int, int, str]] = collections.deque(maxlen=200)

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity, logging.INFO)
            if level >= logging.ERROR:
                self.errors.append((next(_error_numbers), threading.get_ident(), str(msg)))
            if log.isEnabledFor(level):
                log.log(level, "TensorRT: %s", msg)

    return CapturingLogger()


def make_logger(trt: Any) -> Any:
    """The process-wide TensorRT logger, and the start of a TensorRT operation on the calling thread.

    TensorRT keeps a single logger pointer for the whole process: a builder or runtime created with another
    logger while one is alive logs to the first (NVIDIA/TensorRT#1475), and freeing that first logger while
    TensorRT holds it is unsafe. So every builder, runtime and parser here shares one logger, created once (and
    never freed) together with the registration of TensorRT's own plugins (``init_libnvinfer_plugins``, needed
    before parsing or deserializing a model that uses EfficientNMS_TRT, RoiAlign, InstanceNormalization...).

    Each call also marks where an operation begins on this thread: :func:`logged_errors` reports the errors
    logged since then, not the earlier ones of other builds or engines.
    """
    with _LOGGER_LOCK:
        if _SHARED_LOGGER and _SHARED_LOGGER[0][0] is trt:
            logger = _SHARED_LOGGER[0][1]
        else:
            logger = _create_logger(trt)
            try:
                registered, why = bool(trt.init_libnvinfer_plugins(logger, "")), ""
            except Exception as e:  # e.g. libnvinfer_plugin missing from the installation
                registered, why = False, f"{type(e).__name__}: {e}; "
            if not registered:
                log.warning("TensorRT could not register its plugins (init_libnvinfer_plugins failed): models "
                            "using plugin layers (EfficientNMS_TRT, RoiAlign, ...) will not parse or load: %s%s",
                            why, logged_errors(logger, since=0))
            _SHARED_LOGGER[:] = [(trt, logger)]
    _operation.start = (id(logger), error_mark(logger))
    return logger


def error_mark(logger: Any) -> int:
    """A position in ``logger``'s errors: :func:`logged_errors` with ``since`` reports only those logged after it."""
    errors = getattr(logger, "errors", ())
    return errors[-1][0] if errors else 0


def logged_errors(logger: Any, since: int | None = None) -> str:
    """The errors ``logger`` kept since ``since`` (an :func:`error_mark`; default: where this thread's current
    operation began, see :func:`make_logger`), this thread's first, for messages."""
    if since is None:
        started = getattr(_operation, "start", None)
        since = started[1] if started and started[0] == id(logger) else 0
    entries = [entry for entry in getattr(logger, "errors", ()) if entry[0] > since]
    thread = threading.get_ident()
    mine = [msg for _, ident, msg in entries if ident == thread]
    errors = mine or [msg for _, _, msg in entries]
    return "; ".join(errors[-20:]) if errors else "(TensorRT logged no error)"


def dla_core_count(trt: Any) -> int:
    """How many DLA cores TensorRT can use here (0 on GPUs without DLA, on Orin Nano, on TensorRT 11.0-11.3)."""
    runtime = trt.Runtime(make_logger(trt))
    try:
        return int(runtime.num_DLA_cores)
    finally:
        del runtime


# ---------------------------------------------------------------------------------------------
# Runtime backend
# ---------------------------------------------------------------------------------------------

@dataclass
class _Buffer:
    device: int
    host: np.ndarray
    """Pinned uint8 staging area of ``capacity`` bytes."""
    capacity: int
    dtype: np.dtype
    shape: tuple[int, ...] = ()

    @property
    def view(self) -> np.ndarray:
        nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        return self.host[:nbytes].view(self.dtype).reshape(self.shape)


@dataclass
class _Profile:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine (plan file) on one CUDA device.

    Inputs are staged in pinned host buffers; each inference queues the copies in, the engine and
    the copies out on one stream and synchronises once. With ``cuda_graph`` the sequence is captured
    in a CUDA graph after the first run for a given set of input shapes, and replayed.

    Everything that touches the GPU (deserialization, the execution context, inference, release) runs inside
    the CUDA adapter's activation, so each engine runs in its own adapter's context whichever thread calls
    and however many engines are open. An engine built for a DLA core is deserialized with the runtime's
    ``DLA_core`` set to that core first (``config.dla_core``; artifacts pass the core their manifest records).
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, config: TensorRTBackendConfig | None = None) -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        self.config = config or TensorRTBackendConfig(type="tensorrt")
        self.tensorrt_version = ""
        self._cuda: CudaAdapter | None = None
        self._logger: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: int | None = None
        self._graph: int | None = None
        self._graphs_enabled = self.config.cuda_graph
        self._buffers: dict[str, _Buffer] = {}
        self._profiles: dict[str, _Profile] = {}
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._ran_with_shapes = False

    # -- lifecycle --------------------------------------------------------------------------
    def _load(self) -> None:
        trt = import_tensorrt()
        TrtApi.from_module(trt)  # refuses versions without the name-based I/O API
        try:
            plan = self.engine_path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"{self.engine_path}: engine file not found") from None
        except OSError as e:
            raise ModelError(f"{self.engine_path}: cannot read engine file: {e}") from None
        self.tensorrt_version = trt.__version__
        self._graphs_enabled = self.config.cuda_graph
        package = self.config.cuda_package
        self._cuda = cuda_adapter(self.config.device, prefer=None if package == "auto" else package)
        try:
            with self._cuda.activate():
                self._deserialize(trt, plan)
                self._describe(trt)
                self._stream = self._cuda.create_stream()
                if all(spec.is_static for spec in self.inputs):
                    self._prepare({spec.name: tuple(spec.shape) for spec in self.inputs})  # type: ignore[misc]
                self.metadata = {"tensorrt_version": trt.__version__, "cuda_package": self._cuda.package}
                self.warmup(self.config.warmup_runs)
        except BaseException:
            self._close()
            raise

    # TensorRT objects live only in attributes, never in locals of frames that may raise: a
    # traceback would keep them alive after _close(), past the runtime that must outlive them.
    def _deserialize(self, trt: Any, plan: bytes) -> None:
        self._logger = make_logger(trt)
        mark = error_mark(self._logger)
        self._runtime = trt.Runtime(self._logger)
        self._use_dla_core()
        detail = ""
        try:
            self._engine = self._runtime.deserialize_cuda_engine(plan)
        except Exception as e:  # some versions raise instead of returning None
            detail = f"{type(e).__name__}: {e}; "
        if self._engine is None:
            raise ModelError(
                f"{self.engine_path}: TensorRT {trt.__version__} cannot load this engine. The file is "
                "corrupt, or it was built by another TensorRT version or for another GPU; rebuild it on this "
                f"device with `lepton-edge build`. TensorRT said: {detail}{logged_errors(self._logger, mark)}"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ModelError(
                f"{self.engine_path}: TensorRT could not create an execution context (usually out of GPU "
                f"memory): {logged_errors(self._logger, mark)}"
            )

    def _use_dla_core(self) -> None:
        """Point the runtime at the DLA core the engine was built for, before deserializing (as trtexec
        ``--useDLACore`` and DeepStream do): otherwise a DLA engine runs on the runtime's default core."""
        core = self.config.dla_core
        if core is None:
            return
        cores = int(self._runtime.num_DLA_cores)
        if not 0 <= core < cores:
            available = f"cores 0..{cores - 1}" if cores else "no DLA core"
            raise ConfigError(f"{self.engine_path}: the engine runs on DLA core {core}, but this device has "
                              f"{available} (as TensorRT {self.tensorrt_version} sees it); rebuild it for the GPU "
                              "or for a core this device has")
        self._runtime.DLA_core = core

    def _describe(self, trt: Any) -> None:
        inputs, outputs = [], []
        self._profiles = {}
        for index in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(index)
            if self._engine.is_shape_inference_io(name):
                raise ModelError(f"{self.engine_path}: tensor {name!r} is a shape tensor; engines with "
                                 "shape-tensor I/O are not supported by this backend")
            trt_dtype = self._engine.get_tensor_dtype(name)
            try:
                dtype = np.dtype(trt.nptype(trt_dtype))
            except TypeError:
                raise ModelError(
                    f"{self.engine_path}: tensor {name!r} has type {trt_dtype}, which has no numpy "
                    "equivalent; export the model with float32/float16/int8/int32 I/O"
                ) from None
            shape = tuple(int(d) for d in self._engine.get_tensor_shape(name))
            spec = TensorSpec(name, tuple(d if d >= 0 else None for d in shape), dtype)
            mode = self._engine.get_tensor_mode(name)
            if mode == trt.TensorIOMode.INPUT:
                inputs.append(spec)
                if not spec.is_static:
                    low, opt, high = (tuple(s) for s in self._engine.get_tensor_profile_shape(name, 0))
                    self._profiles[name] = _Profile(low, opt, high)
            elif mode == trt.TensorIOMode.OUTPUT:
                outputs.append(spec)
        self.inputs, self.outputs = inputs, outputs

    def warmup_shapes(self) -> dict[str, tuple[int, ...]]:
        """Dynamic inputs at their profile's optimal shape (the engine was built for it), static ones as declared."""
        shapes = {}
        for spec in self.inputs:
            profile = self._profiles.get(spec.name)
            shapes[spec.name] = profile.opt if profile else tuple(spec.shape)
        return shapes  # type: ignore[return-value]

    def _close(self) -> None:
        cuda, errors = self._cuda, []
        activation = cuda.activate() if cuda is not None else contextlib.nullcontext()
        try:
            with activation:  # TensorRT frees the engine's device memory in the adapter's context
                self._release(cuda, errors)
        except LeptonError as e:
            errors.append(str(e))
            self._release(None, errors)
        if cuda is not None:
            cuda.close()
            self._cuda = None
        if errors:
            log.warning("%s: errors while releasing TensorRT resources: %s", self.engine_path,
                        "; ".join(errors))

    def _release(self, cuda: CudaAdapter | None, errors: list[str]) -> None:
        if cuda is not None:
            if self._stream is not None:
                self._attempt(errors, cuda.synchronize, self._stream)
            for buffer in self._buffers.values():
                self._attempt(errors, cuda.free, buffer.device)
                self._attempt(errors, cuda.free_pinned, buffer.host)
            self._buffers.clear()
            if self._stream is not None:
                self._attempt(errors, cuda.destroy_stream, self._stream)
            if self._graph is not None:
                self._attempt(errors, cuda.destroy_graph, self._graph)
        self._stream = self._graph = None
        self._context = None  # TensorRT frees a context/engine when its last reference goes
        self._engine = None
        self._runtime = None
        self._logger = None  # the process-wide logger stays alive in make_logger's keeping
        self._shapes = None

    @staticmethod
    def _attempt(errors: list[str], fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except LeptonError as e:
            errors.append(str(e))

    # -- inference --------------------------------------------------------------------------
    def _infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cuda = self._cuda
        assert cuda is not None
        with cuda.activate():  # execute_async_v3 launches kernels: the engine's context must be current
            return self._infer_active(feeds)

    def _infer_active(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cuda, stream = self._cuda, self._stream
        assert cuda is not None and stream is not None
        shapes = {spec.name: tuple(feeds[spec.name].shape) for spec in self.inputs}
        if shapes != self._shapes:
            self._prepare(shapes)
        for spec in self.inputs:
            np.copyto(self._buffers[spec.name].view, feeds[spec.name], casting="no")
        if self._graph is not None:
            cuda.launch_graph(self._graph, stream)
        elif self._graphs_enabled and self._ran_with_shapes and self._capture():
            cuda.launch_graph(self._graph, stream)  # type: ignore[arg-type]
        else:
            self._enqueue()
        cuda.synchronize(stream)
        self._ran_with_shapes = True
        # The staging buffers are reused by the next call: hand out copies.
        return [self._buffers[spec.name].view.copy() for spec in self.outputs]

    def _enqueue(self) -> None:
        cuda, stream = self._cuda, self._stream
        assert cuda is not None and stream is not None
        for spec in self.inputs:
            buffer = self._buffers[spec.name]
            cuda.memcpy_htod_async(buffer.device, buffer.view, stream)
        mark = error_mark(self._logger)
        if not self._context.execute_async_v3(stream):
            raise ModelError(
                f"{self.engine_path}: TensorRT failed to run the engine: {logged_errors(self._logger, mark)}"
            )
        for spec in self.outputs:
            buffer = self._buffers[spec.name]
            cuda.memcpy_dtoh_async(buffer.view, buffer.device, stream)

    def _capture(self) -> bool:
        """Capture copies + engine into a CUDA graph; on failure warn once and run without graphs."""
        cuda, stream = self._cuda, self._stream
        assert cuda is not None and stream is not None
        try:
            cuda.begin_capture(stream)
        except CudaError as e:
            return self._give_up_graphs(e)
        try:
            self._enqueue()
        except LeptonError as e:
            with contextlib.suppress(CudaError):
                cuda.destroy_graph(cuda.end_capture(stream))
            return self._give_up_graphs(e)
        try:
            self._graph = cuda.end_capture(stream)
        except CudaError as e:
            return self._give_up_graphs(e)
        return True

    def _give_up_graphs(self, reason: Exception) -> bool:
        self._graphs_enabled = False
        # Log the text, not the exception: its traceback would keep CUDA objects alive.
        log.warning("%s: CUDA graph capture unavailable, running without it: %s", self.engine_path, str(reason))
        return False

    def _prepare(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Set input shapes and (re)allocate buffers for them; invalidates any captured graph."""
        cuda = self._cuda
        assert cuda is not None
        if self._graph is not None:
            graph, self._graph = self._graph, None
            cuda.destroy_graph(graph)
        self._shapes, self._ran_with_shapes = None, False
        mark = error_mark(self._logger)
        for spec in self.inputs:
            if not self._context.set_input_shape(spec.name, shapes[spec.name]):
                profile = self._profiles.get(spec.name)
                allowed = f"min {profile.min}, max {profile.max}" if profile else spec.shape_str
                raise ModelError(
                    f"{self.engine_path}: input {spec.name!r} shape {shapes[spec.name]} is outside what the "
                    f"engine accepts ({allowed}); rebuild the engine with a wider optimization profile"
                )
        resolved = [(spec, shapes[spec.name]) for spec in self.inputs]
        for spec in self.outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise ModelError(f"{self.engine_path}: output {spec.name!r} has a data-dependent shape "
                                 f"{shape}, which this backend does not support")
            resolved.append((spec, shape))
        for spec, shape in resolved:
            buffer = self._ensure_buffer(spec, shape)
            if not self._context.set_tensor_address(spec.name, buffer.device):
                raise ModelError(f"{self.engine_path}: TensorRT rejected the buffer of {spec.name!r}: "
                                 f"{logged_errors(self._logger, mark)}")
        self._shapes = dict(shapes)

    def _ensure_buffer(self, spec: TensorSpec, shape: tuple[int, ...]) -> _Buffer:
        cuda = self._cuda
        assert cuda is not None
        nbytes = int(np.prod(shape, dtype=np.int64)) * spec.dtype.itemsize
        buffer = self._buffers.get(spec.name)
        if buffer is None or buffer.capacity < nbytes:
            if buffer is not None:
                del self._buffers[spec.name]
                cuda.free(buffer.device)
                cuda.free_pinned(buffer.host)
            capacity = max(nbytes, 256)
            device = cuda.malloc(capacity)
            try:
                host = cuda.pinned_empty(capacity, np.uint8)
            except BaseException:
                cuda.free(device)
                raise
            buffer = _Buffer(device, host, capacity, spec.dtype)
            self._buffers[spec.name] = buffer
        buffer.shape = shape
        return buffer

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            engine=str(self.engine_path),
            tensorrt_version=self.tensorrt_version,
            cuda_package=self._cuda.package if self._cuda else None,
            cuda_graph=self._graphs_enabled,
            dla_core=self.config.dla_core,
        )
        return info
