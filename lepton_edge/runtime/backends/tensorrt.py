"""TensorRT: the runtime backend for serialized engines, the engine builder, and the version shim.

This is the only module that imports ``tensorrt``, and only inside functions: importing it works on
any machine. Every difference between the supported TensorRT versions (8.6 on JetPack 6.0, through
10.x and 11.x) is decided once, in :class:`TrtApi`; the rest of the code asks the shim.

Only the name-based I/O API is used (``num_io_tensors``, ``get_tensor_*``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``), which every supported version has.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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

Precision = Literal["fp32", "fp16", "int8"]
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

# Names used only where the running TensorRT has them, with the first and last major version that
# has them (None: still present). The bindings check (tests/backends/test_trt_bindings.py) verifies
# each against the real bindings of every version in its range; everything else the module uses
# must exist in all supported versions.
VERSIONED_NAMES: dict[str, tuple[int, int | None]] = {
    "EXPLICIT_BATCH": (8, 10),  # required by the ONNX parser in 8.x, ignored in 10, removed in 11
    "STRONGLY_TYPED": (9, None),  # opt-in in 9/10, always on (flag deprecated) in 11
    "FP16": (8, 10),  # BuilderFlag.FP16, removed in 11 (strong typing instead)
    "INT8": (8, 10),  # BuilderFlag.INT8, removed in 11 (explicit Q/DQ instead)
    "IInt8EntropyCalibrator2": (8, 10),
    "int8_calibrator": (8, 10),
    "set_calibration_profile": (8, 10),
    "get_batch_size": (8, 10),
    "get_batch": (8, 10),
    "read_calibration_cache": (8, 10),
    "write_calibration_cache": (8, 10),
    "build_serialized_network": (8, None),  # probed: TensorRT older than 8.6 is refused
    "set_memory_pool_limit": (8, None),
}
MIN_VERSION = (8, 6)

CALIBRATION_ALGORITHMS = (
    "EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration",
)
REPLAYED_ALGORITHM = "EntropyCalibration2"
_CACHE_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9_]+)$")
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


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

def make_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that forwards to Python logging and keeps the latest errors in ``.errors``."""
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.CRITICAL,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.INFO,
        severity.VERBOSE: logging.DEBUG,
    }

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: collections.deque[str] = collections.deque(maxlen=20)

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity, logging.INFO)
            if level >= logging.ERROR:
                self.errors.append(str(msg))
            if log.isEnabledFor(level):
                log.log(level, "TensorRT: %s", msg)

    return CapturingLogger()


def make_cache_calibrator(trt: Any, cache: bytes) -> Any:
    """An IInt8EntropyCalibrator2 that only replays ``cache``: it has no data (``get_batch`` is None)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.cache = cache
            self.cache_reads = 0

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None  # no data: TensorRT must take every scale from the cache

        def read_calibration_cache(self) -> bytes:
            self.cache_reads += 1
            return self.cache

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return CacheCalibrator()


def _logged_errors(logger: Any) -> str:
    errors = list(getattr(logger, "errors", ()))
    return "; ".join(errors) if errors else "(TensorRT logged no error)"


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
        self._cuda = cuda_adapter(self.config.device)
        try:
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
        self._runtime = trt.Runtime(self._logger)
        detail = ""
        try:
            self._engine = self._runtime.deserialize_cuda_engine(plan)
        except Exception as e:  # some versions raise instead of returning None
            detail = f"{type(e).__name__}: {e}; "
        if self._engine is None:
            raise ModelError(
                f"{self.engine_path}: TensorRT {trt.__version__} cannot load this engine. The file is "
                "corrupt, or it was built by another TensorRT version or for another GPU; rebuild it on this "
                f"device with `lepton-edge build`. TensorRT said: {detail}{_logged_errors(self._logger)}"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ModelError(
                f"{self.engine_path}: TensorRT could not create an execution context (usually out of GPU "
                f"memory): {_logged_errors(self._logger)}"
            )

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

    def warmup(self, runs: int) -> None:
        """Like :meth:`Backend.warmup`, with dynamic inputs at their profile's optimal shape."""
        feeds = {}
        for spec in self.inputs:
            profile = self._profiles.get(spec.name)
            shape = profile.opt if profile else tuple(spec.shape)
            feeds[spec.name] = np.zeros(shape, spec.dtype)
        for _ in range(runs):
            self._infer(feeds)

    def _close(self) -> None:
        cuda, errors = self._cuda, []
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
        self._logger = None
        self._shapes = None
        if cuda is not None:
            cuda.close()
            self._cuda = None
        if errors:
            log.warning("%s: errors while releasing TensorRT resources: %s", self.engine_path,
                        "; ".join(errors))

    @staticmethod
    def _attempt(errors: list[str], fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except LeptonError as e:
            errors.append(str(e))

    # -- inference --------------------------------------------------------------------------
    def _infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
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
        if not self._context.execute_async_v3(stream):
            raise ModelError(
                f"{self.engine_path}: TensorRT failed to run the engine: {_logged_errors(self._logger)}"
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
                                 f"{_logged_errors(self._logger)}")
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
        )
        return info


# ---------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------

@dataclass
class OnnxSummary:
    """What the builder needs to know about an ONNX model before TensorRT sees it."""

    op_types: frozenset[str]
    has_qdq: bool
    has_fp16: bool
    sha256: str


def summarize_onnx(path: Path) -> OnnxSummary:
    """Read the op types and tensor types of an ONNX file (external weights are not loaded)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors have no common type
        detail = f"{type(e).__name__}: {e}"
        raise ModelError(f"{path}: not a readable ONNX model ({detail}); re-export it") from None
    ops: set[str] = set()
    fp16 = onnx.TensorProto.FLOAT16
    has_fp16 = any(init.data_type == fp16 for init in model.graph.initializer)
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        has_fp16 = has_fp16 or value.type.tensor_type.elem_type == fp16
    for node in model.graph.node:
        ops.add(node.op_type)
        if node.op_type == "Cast":
            has_fp16 = has_fp16 or any(a.name == "to" and a.i == fp16 for a in node.attribute)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return OnnxSummary(frozenset(ops), bool(ops & _QDQ_OPS), has_fp16, digest)


@dataclass
class CalibrationCache:
    """A TensorRT calibration cache file whose header was checked."""

    path: Path
    data: bytes
    header: str
    trt_version: int
    algorithm: str

    @property
    def facts(self) -> dict[str, Any]:
        digest = hashlib.sha256(self.data).hexdigest()
        return {"path": str(self.path), "header": self.header, "sha256": digest}


def read_calibration_cache(path: Path) -> CalibrationCache:
    """Read a calibration cache and check its header (``TRT-<version>-EntropyCalibration2``)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: calibration cache not found; run `lepton-edge calibrate` first") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read calibration cache: {e}") from None
    first = data.split(b"\n", 1)[0].strip()
    header = first.decode("ascii", errors="replace")
    match = _CACHE_HEADER.match(header)
    if not match:
        raise ModelError(
            f"{path}: not a TensorRT calibration cache: first line is {header[:80]!r}, expected "
            f"'TRT-<version>-{REPLAYED_ALGORITHM}'"
        )
    version, algorithm = int(match.group(1)), match.group(2)
    if algorithm not in CALIBRATION_ALGORITHMS:
        raise ModelError(
            f"{path}: unknown calibrator algorithm {algorithm!r} in header {header!r}; expected "
            f"{REPLAYED_ALGORITHM}. Re-run `lepton-edge calibrate` to write a new cache."
        )
    if algorithm != REPLAYED_ALGORITHM:
        raise ModelError(
            f"{path}: header {header!r} says the cache was made by {algorithm}, but the builder replays "
            f"{REPLAYED_ALGORITHM} caches (TensorRT would ignore it and calibrate with no data). "
            "Re-run `lepton-edge calibrate`."
        )
    return CalibrationCache(path, data, header, version, algorithm)


def _cache_major(encoded: int) -> int:
    """The TensorRT major version in a cache header (8601 -> 8, 100300 -> 10)."""
    return encoded // 10000 if encoded >= 10000 else encoded // 1000


@dataclass
class _PrecisionPlan:
    strongly_typed: bool = False
    fp16_flag: bool = False
    int8_flag: bool = False
    int8_mode: str | None = None
    calibration: CalibrationCache | None = None


def _plan_precision(
    api: TrtApi, precision: Precision, onnx_path: Path, summary: OnnxSummary, calibration_cache: Path | None
) -> _PrecisionPlan:
    plan = _PrecisionPlan(strongly_typed=api.always_strongly_typed)
    if precision == "fp16":
        if api.has_fp16_flag:
            plan.fp16_flag = True
        elif not summary.has_fp16:
            raise ModelError(
                f"{onnx_path}: TensorRT {api.version} has no FP16 builder flag (strong typing only) and this "
                "model is FP32. Convert it to mixed precision first (`python -m modelopt.onnx.autocast "
                "--onnx_path model.onnx --output_path model_fp16.onnx`) and build the converted model."
            )
    elif precision == "int8":
        if summary.has_qdq:
            plan.int8_mode = "explicit-qdq"
            if calibration_cache is not None:
                log.warning("%s has Q/DQ nodes: its own scales are used and %s is ignored", onnx_path,
                            calibration_cache)
            if api.can_opt_into_strong_typing:
                plan.strongly_typed = True
            elif not api.always_strongly_typed:
                plan.int8_flag = True  # 8.x: Q/DQ networks build with the INT8 flag
        elif not api.has_implicit_int8:
            raise ModelError(
                f"{onnx_path}: the model has no QuantizeLinear/DequantizeLinear nodes and TensorRT "
                f"{api.version} removed implicit INT8 calibration. Build from the Q/DQ (explicitly "
                "quantized) model instead, e.g. one quantized with ModelOpt (`python -m "
                "modelopt.onnx.quantization`)."
            )
        elif calibration_cache is None:
            raise ConfigError(
                f"{onnx_path}: int8 without Q/DQ nodes needs a calibration cache: run `lepton-edge "
                "calibrate` and pass its cache, or build from a Q/DQ model"
            )
        else:
            cache = read_calibration_cache(Path(calibration_cache))
            if _cache_major(cache.trt_version) != api.major:
                log.warning("%s was written by TensorRT %d (header %r), this is TensorRT %s; TensorRT may "
                            "ignore it, which fails the build",
                            cache.path, cache.trt_version, cache.header, api.version)
            plan.int8_flag = True
            plan.int8_mode = "calibration-cache"
            plan.calibration = cache
    return plan


def _check_profiles(onnx_path: Path, inputs: dict[str, tuple[int, ...]], profiles: list[Profile]) -> None:
    dynamic = sorted(name for name, shape in inputs.items() if any(d < 0 for d in shape))
    if dynamic and not profiles:
        listed = ", ".join(f"{name} {list(inputs[name])}" for name in dynamic)
        example = dynamic[0]
        raise ConfigError(
            f"{onnx_path}: dynamic inputs need an optimization profile: {listed}. Pass profiles, e.g. "
            f"[{{'{example}': (min_shape, opt_shape, max_shape)}}] with -1 dims replaced by sizes."
        )
    for index, profile in enumerate(profiles):
        where = f"{onnx_path}: profile {index}"
        unknown = sorted(set(profile) - set(inputs))
        if unknown:
            raise ConfigError(f"{where}: {unknown} are not inputs of the model (inputs: {sorted(inputs)})")
        missing = [name for name in dynamic if name not in profile]
        if missing:
            raise ConfigError(f"{where}: no shapes for dynamic input(s) {missing}")
        for name, shapes in profile.items():
            if len(shapes) != 3:
                raise ConfigError(f"{where}: {name!r} needs (min, opt, max) shapes, got {shapes!r}")
            low, opt, high = (tuple(int(d) for d in s) for s in shapes)
            declared = inputs[name]
            for label, shape in (("min", low), ("opt", opt), ("max", high)):
                if len(shape) != len(declared):
                    raise ConfigError(f"{where}: {name!r} {label} shape {shape} has rank {len(shape)}, "
                                      f"the input has rank {len(declared)} {list(declared)}")
                for want, got in zip(declared, shape, strict=True):
                    if (want >= 0 and got != want) or got <= 0:
                        raise ConfigError(f"{where}: {name!r} {label} shape {shape} does not fit the input "
                                          f"{list(declared)}")
            if not all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True)):
                raise ConfigError(f"{where}: {name!r} needs min <= opt <= max in every dim, got "
                                  f"{low}, {opt}, {high}")


def _parser_error_text(node: Any, desc: str, code: Any) -> str:
    where = f"node {node}: " if isinstance(node, int) and node >= 0 else ""
    return f"{where}{desc} ({code})"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _device_facts() -> dict[str, Any]:
    try:
        with cuda_adapter(0) as cuda:
            major, minor = cuda.compute_capability()
            return {"device_name": cuda.device_name(), "compute_capability": f"{major}.{minor}"}
    except LeptonError as e:
        log.warning("cannot read the GPU's name and compute capability for the manifest: %s", e)
        return {"device_name": None, "compute_capability": None}


def build_engine(
    onnx_path: Path,
    *,
    precision: Precision,
    calibration_cache: Path | None = None,
    timing_cache: Path | None = None,
    workspace_mb: int = 1024,
    dla_core: int | None = None,
    profiles: list[Profile] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Build a TensorRT engine from an ONNX model; returns the serialized plan and facts for the manifest.

    ``precision`` ``int8`` uses the model's Q/DQ nodes when it has them, otherwise replays
    ``calibration_cache`` (TensorRT up to 10.x). ``timing_cache`` is read if it exists and written
    back after the build. ``profiles`` gives (min, opt, max) shapes per dynamic input, one dict per
    optimization profile. ``progress`` is called with the stage name: parse, configure, build, done.
    """
    onnx_path = Path(onnx_path)
    report = progress or (lambda stage: None)
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    if workspace_mb <= 0:
        raise ConfigError(f"workspace_mb must be positive, got {workspace_mb}")
    if dla_core is not None and precision == "fp32":
        raise ConfigError("DLA runs FP16 and INT8 layers only: build with precision fp16 or int8 to use "
                          "dla_core")
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: ONNX model not found")
    summary = summarize_onnx(onnx_path)
    trt = import_tensorrt()
    api = TrtApi.from_module(trt)
    plan = _plan_precision(api, precision, onnx_path, summary, calibration_cache)

    report("parse")
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(api.network_flags(plan.strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for index in range(parser.num_errors):
            error = parser.get_error(index)
            errors.append(_parser_error_text(error.node(), error.desc(), error.code()))
        listed = "\n  ".join(errors) or _logged_errors(logger)
        raise ModelError(
            f"{onnx_path}: TensorRT {api.version} cannot parse this model ({len(errors)} error(s)):\n"
            f"  {listed}\nSimplify or re-export the model (e.g. another opset) or replace the unsupported "
            "operators."
        )
    inputs = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        inputs[tensor.name] = tuple(int(d) for d in tensor.shape)
    _check_profiles(onnx_path, inputs, profiles or [])

    report("configure")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    flags_used = []
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
        flags_used.append("FP16")
    if plan.int8_flag:
        config.set_flag(trt.BuilderFlag.INT8)
        flags_used.append("INT8")
    if dla_core is not None:
        cores = builder.num_DLA_cores
        if not 0 <= dla_core < cores:
            available = f"cores 0..{cores - 1}" if cores else "no DLA (only Jetson Xavier/Orin AGX and NX do)"
            raise ConfigError(f"dla_core={dla_core} is not available: this device has {available}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        flags_used.append("GPU_FALLBACK")
    for shapes in profiles or []:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, tuple(low), tuple(opt), tuple(high))
        if config.add_optimization_profile(profile) < 0:
            raise ConfigError(f"{onnx_path}: TensorRT rejected profile {shapes}: {_logged_errors(logger)}")
        calibrating = plan.calibration is not None and api.has_calibration_profile
        if calibrating and config.num_optimization_profiles == 1:
            config.set_calibration_profile(profile)
    calibrator = None
    if plan.calibration is not None:
        calibrator = make_cache_calibrator(trt, plan.calibration.data)
        config.int8_calibrator = calibrator
    if timing_cache is not None:
        _load_timing_cache(config, Path(timing_cache))

    report("build")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        hint = ""
        if calibrator is not None:
            hint = (" The calibration cache may not match this model or TensorRT version: re-run "
                    "`lepton-edge calibrate` with this model.")
        raise ModelError(f"{onnx_path}: TensorRT {api.version} failed to build the engine: "
                         f"{_logged_errors(logger)}.{hint}")
    engine_bytes = bytes(serialized)
    if timing_cache is not None:
        _write_atomic(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
    report("done")

    facts: dict[str, Any] = {
        "tensorrt_version": api.version,
        "precision": precision,
        "builder_flags": flags_used,
        "strongly_typed": plan.strongly_typed,
        "int8_mode": plan.int8_mode,
        "calibration_cache": plan.calibration.facts if plan.calibration else None,
        "workspace_mb": workspace_mb,
        "device_type": "DLA" if dla_core is not None else "GPU",
        "dla_core": dla_core,
        "profiles": [{name: [list(s) for s in shapes] for name, shapes in p.items()} for p in profiles or []],
        "timing_cache": str(timing_cache) if timing_cache is not None else None,
        "onnx_sha256": summary.sha256,
    }
    facts.update(_device_facts())
    return engine_bytes, facts


def _load_timing_cache(config: Any, path: Path) -> None:
    """Attach the timing cache at ``path`` (or a fresh one) to ``config``; written back after the build."""
    blob = b""
    if path.is_file():
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read timing cache: {e}") from None
    try:
        cache = config.create_timing_cache(blob)
    except Exception as e:  # some versions raise on a corrupt blob, others return None
        log.debug("create_timing_cache: %s", e)
        cache = None
    if cache is None:
        log.warning("%s: timing cache is corrupt; starting a fresh one", path)
        cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, False):
        log.warning("%s: timing cache comes from another GPU or TensorRT version; starting a fresh one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)


# ---------------------------------------------------------------------------------------------
# Environment report
# ---------------------------------------------------------------------------------------------

