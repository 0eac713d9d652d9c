"""A strict fake of the ``tensorrt`` Python module, for the versions lepton-edge supports.

Modelled on the official TensorRT Python API reference and the 8.x->10.x and 10.x->11.x migration
guides, for the surface the backend and builder use. ``make_fake_tensorrt("8.6.1" | "10.3.0" |
"11.4.0")`` returns a module whose classes have only the members that version documents:

* 8.6: ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` is required by the ONNX parser; no
  ``STRONGLY_TYPED``; Q/DQ networks need ``BuilderFlag.INT8``.
* 10.x: ``EXPLICIT_BATCH`` is accepted but ignored; ``STRONGLY_TYPED`` exists and forbids the
  precision flags; the implicit-INT8 calibrator API still exists.
* 11.x: no ``EXPLICIT_BATCH``, no ``BuilderFlag.FP16/INT8``, no calibrators or ``int8_calibrator``,
  no ``platform_has_fast_fp16``; every network is strongly typed.

Strictness: reading or writing a member the modelled version lacks raises AttributeError saying
it is "not in the TensorRT X API"; wrong argument counts raise TypeError (plain Python signatures)
and wrong argument types raise TypeError; a logger or calibrator subclass whose ``__init__`` did
not call the base ``__init__`` is refused, as pybind11 refuses it.

Behaviour: the parser reads the real ONNX file (with ``onnx``) and rejects operators outside
:data:`SUPPORTED_OPS`; a "plan" embeds the ONNX model with a header (TensorRT version, GPU, flags,
profiles); the runtime refuses plans from another version or GPU; an execution context queues its
work on a :class:`~tests.support.fake_cuda.FakeGpu` stream, and that work reads the inputs from
simulated device memory, runs the model with onnxruntime, and writes the outputs back. Implicit INT8
replays a calibration cache only through a calibrator of the algorithm its header names (otherwise, as
TensorRT does, the cache is ignored and calibration with no data fails), only when every scale line is
``tensor: <hex>``, and records the replayed algorithm in ``_state["replayed_caches"]``; the legacy
calibrator must implement its quantile and regression-cutoff members. Calls are
recorded in ``module.calls``; live engines/contexts/runtimes are counted by :func:`live_objects`.
TensorRT 8.6 has no standalone bindings wheel to check names against, so it is covered by this fake
only.

Process-wide rules (each cited where it is modelled below): one logger for every live Builder and Runtime
(a second, different one is refused); a plugin registry that ``init_libnvinfer_plugins`` must fill before a
plugin op parses or a plugin engine deserializes; ``Runtime.DLA_core`` set to a DLA engine's core before it
deserializes; engines run (and get execution contexts) only in the CUDA context they were deserialized in.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
import weakref
from typing import Any

import numpy as np

from tests.support.fake_cuda import DeviceFault, FakeGpu

PLAN_MAGIC = b"FAKE-TRT-PLAN\n"
TIMING_MAGIC = b"FAKE-TRT-TIMING-CACHE\n"

SUPPORTED_OPS = frozenset({
    "Abs", "Add", "And", "ArgMax", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip", "Concat",
    "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "DequantizeLinear", "Div", "Einsum", "Equal", "Erf",
    "Exp", "Expand", "Flatten", "Floor", "Gather", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater",
    "HardSigmoid", "HardSwish", "Identity", "LayerNormalization", "LeakyRelu", "Less", "Log", "MatMul", "Max",
    "MaxPool", "Min", "Mul", "Neg", "NonMaxSuppression", "Not", "Or", "Pad", "Pow", "QuantizeLinear", "Range",
    "ReduceMax", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Resize", "Shape", "Sigmoid", "Slice", "Softmax",
    "Softplus", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile", "TopK", "Transpose", "Unsqueeze", "Where",
})
STANDARD_DOMAINS = ("", "ai.onnx")
PLUGIN_OPS = frozenset({"EfficientNMS_TRT", "BatchedNMSDynamic_TRT", "EfficientNMS_ONNX_TRT"})
"""ONNX nodes of TensorRT's own plugins (exported by name, any domain): imported only through the registry."""

CALIBRATION_HEADERS = {
    "LEGACY_CALIBRATION": "LegacyCalibration",
    "ENTROPY_CALIBRATION": "EntropyCalibration",
    "ENTROPY_CALIBRATION_2": "EntropyCalibration2",
    "MINMAX_CALIBRATION": "MinMaxCalibration",
}


def _major(version: str) -> int:
    return int(version.split(".")[0])


def _encoded_version(version: str) -> int:
    """The number TensorRT writes into calibration cache headers (8.6.1 -> 8601, 10.3.0 -> 100300)."""
    parts = [int(p) for p in version.split(".")[:3]]
    major, minor, patch = parts[0], parts[1], parts[2]
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch


# ---------------------------------------------------------------------------------------------
# Strictness machinery
# ---------------------------------------------------------------------------------------------

class _Removed:
    """A class member the modelled version does not have: hasattr() is False on class and instance."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        owner = owner or type(obj)
        raise AttributeError(f"{owner.__name__}.{self.name} is not in the TensorRT {owner._version} API")

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"{type(obj).__name__}.{self.name} is not in the TensorRT {obj._version} API")


class _Strict:
    """Base of the fake API objects: unknown members raise, only documented properties are settable."""

    _version = "?"

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"{type(self).__name__}.{name} is not in the TensorRT {self._version} API "
            "(as modelled by tests/support/fake_tensorrt.py)"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        member = next((k.__dict__[name] for k in type(self).__mro__ if name in k.__dict__), None)
        if isinstance(member, _Removed):
            member.__set__(self, value)
        if isinstance(member, property) and member.fset is not None:
            member.fset(self, value)
            return
        raise AttributeError(f"{type(self).__name__}.{name} is not a settable attribute in the TensorRT "
                             f"{self._version} API")


def _check_type(call: str, name: str, value: Any, *types_: type) -> None:
    if not isinstance(value, types_) or (isinstance(value, bool) and bool not in types_):
        wanted = " or ".join(t.__name__ for t in types_)
        raise TypeError(f"{call}(): incompatible function arguments: {name} must be {wanted}, "
                        f"got {type(value).__name__}")


class _EnumMeta(type):
    def __getattr__(cls, name: str) -> Any:
        raise AttributeError(f"{cls.__name__}.{name} is not in the TensorRT {cls._version} API")

    def __iter__(cls) -> Any:
        return iter(cls.__members__.values())


class _EnumMember(metaclass=_EnumMeta):
    _version = "?"
    __members__: dict[str, Any] = {}

    def __init__(self, name: str, value: int) -> None:
        self.name = name
        self.value = value

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.value == self.value  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.value))

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value}>"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


def _make_enum(name: str, members: dict[str, int], version: str) -> type:
    cls = _EnumMeta(name, (_EnumMember,), {"_version": version, "__members__": {}})
    for member, value in members.items():
        instance = cls(member, value)
        cls.__members__[member] = instance
        type.__setattr__(cls, member, instance)
    return cls


class Dims(_Strict):
    """Sequence-like, as ``trt.Dims``: ``len()``, indexing, iteration, equality with tuples."""

    def __init__(self, shape: Any = ()) -> None:
        values = tuple(shape)
        for v in values:
            _check_type("Dims", "shape", v, int, np.integer)
        self._values = tuple(int(v) for v in values)

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index: int) -> int:
        return self._values[index]

    def __iter__(self) -> Any:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Dims):
            return other._values == self._values
        if isinstance(other, tuple | list):
            return tuple(other) == self._values
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"({', '.join(map(str, self._values))})"


def _shape_arg(call: str, shape: Any) -> tuple[int, ...]:
    if isinstance(shape, Dims):
        return tuple(shape)
    if not isinstance(shape, tuple | list):
        raise TypeError(f"{call}(): incompatible function arguments: shape must be Dims, tuple or list, "
                        f"got {type(shape).__name__}")
    for v in shape:
        _check_type(call, "shape", v, int, np.integer)
    return tuple(int(v) for v in shape)


class IHostMemory(bytes):
    """``IHostMemory`` supports the buffer protocol (``bytes(mem)``) and ``nbytes`` only."""

    _ALLOWED = frozenset({"nbytes"})

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("__") or name in IHostMemory._ALLOWED:
            return super().__getattribute__(name)
        raise AttributeError(f"IHostMemory.{name} is not in the TensorRT API")

    @property
    def nbytes(self) -> int:
        return len(self)


# ---------------------------------------------------------------------------------------------
# Logger and calibrators (subclassed by user code, so not _Strict)
# ---------------------------------------------------------------------------------------------

class _Subclassable:
    """Base-class behaviour shared by ILogger and the calibrators: the base __init__ must run."""

    def __init__(self) -> None:
        self._trt_base_initialized = True


def _require_base_init(call: str, obj: Any, base: type) -> None:
    if not isinstance(obj, base):
        raise TypeError(f"{call}(): incompatible function arguments: expected {base.__name__}, "
                        f"got {type(obj).__name__}")
    if not getattr(obj, "_trt_base_initialized", False):
        raise TypeError(f"{base.__name__}.__init__() must be called when overriding __init__")


def _pure_virtual(name: str) -> Any:
    def method(self: Any, *args: Any) -> Any:
        raise RuntimeError(f'Tried to call pure virtual function "{name}"')
    return method


# ---------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------

class FakeTensorRT(types.ModuleType):
    """The fake ``tensorrt`` module; unknown names raise AttributeError naming the version."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"module 'tensorrt' has no attribute {name!r}: not in the TensorRT {self.__version__} API "
            "(as modelled by tests/support/fake_tensorrt.py)"
        )


def live_objects(trt: Any) -> dict[str, int]:
    """How many runtimes, engines and execution contexts of this fake are still alive."""
    state = trt._state
    return {kind: len(objects) for kind, objects in state["live"].items()}


def make_fake_tensorrt(version: str = "10.3.0", gpu: FakeGpu | None = None, *, dla_cores: int = 0) -> Any:
    """Build the fake module for ``version`` ("8.6.1", "10.3.0", "11.4.0", ...) over ``gpu``."""
    major = _major(version)
    if major not in (8, 10, 11):
        raise ValueError(f"the fake models TensorRT 8.6, 10.x and 11.x, not {version}")
    gpu = gpu or FakeGpu()
    trt = FakeTensorRT("tensorrt")
    trt.__version__ = version
    state: dict[str, Any] = {
        "gpu": gpu,
        "dla_cores": dla_cores,
        "calls": [],
        "live": {"runtime": weakref.WeakSet(), "engine": weakref.WeakSet(), "context": weakref.WeakSet()},
        "violations": [],
        "timing_cache_hits": 0,
        "builds": [],
        "replayed_caches": [],
        "logger_holders": weakref.WeakSet(),
        "plugins_registered": False,
        "plugin_inits": 0,
    }
    if major == 11 and int(version.split(".")[1]) < 4:
        # "DLA was unavailable in TensorRT 11.0 through 11.3" (TensorRT 11.4.1 docs, "Migrating TensorRT from
        # 10.x to 11.x on Jetson/JetPack"); 11.4.1 restores it on Jetson AGX Orin with JetPack 7.2.2+.
        state["dla_cores"] = 0
    trt._state = state
    trt.calls = state["calls"]

    def record(call: str, *args: Any) -> None:
        state["calls"].append((call, args))

    def enum(name: str, members: dict[str, int]) -> type:
        cls = _make_enum(name, members, version)
        setattr(trt, name, cls)
        return cls

    # -- enums ------------------------------------------------------------------------------
    creation_members = {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1} if major == 8 else (
        {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if major == 10 else
        {"STRONGLY_TYPED": 0, "PREFER_AOT_PYTHON_PLUGINS": 1, "PREFER_JIT_PYTHON_PLUGINS": 2}
    )
    NetworkDefinitionCreationFlag = enum("NetworkDefinitionCreationFlag", creation_members)
    builder_flags = ["DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS",
                     "SAFETY_SCOPE", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"]
    if major <= 10:
        builder_flags += ["FP16", "INT8", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
                          "DIRECT_IO"]
    if major == 10:
        builder_flags += ["BF16", "INT4", "WEIGHT_STREAMING", "STRIP_PLAN"]
    if major == 11:
        builder_flags += ["WEIGHT_STREAMING", "STRIP_PLAN"]
    BuilderFlag = enum("BuilderFlag", {name: i for i, name in enumerate(builder_flags)})
    pools = {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2, "DLA_GLOBAL_DRAM": 3, "TACTIC_DRAM": 4}
    if major >= 10:
        pools["TACTIC_SHARED_MEMORY"] = 5
    MemoryPoolType = enum("MemoryPoolType", pools)
    DeviceType = enum("DeviceType", {"GPU": 0, "DLA": 1})
    TensorIOMode = enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    dtypes = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6}
    if major >= 10:
        dtypes.update(BF16=7, INT64=8, INT4=9)
    DataType = enum("DataType", dtypes)
    ErrorCode = enum("ErrorCode", {
        "SUCCESS": 0, "INTERNAL_ERROR": 1, "MEM_ALLOC_FAILED": 2, "MODEL_DESERIALIZE_FAILED": 3,
        "INVALID_VALUE": 4, "INVALID_GRAPH": 5, "INVALID_NODE": 6, "UNSUPPORTED_GRAPH": 7, "UNSUPPORTED_NODE": 8,
    })
    aliases = {"float32": "FLOAT", "float16": "HALF", "int8": "INT8", "int32": "INT32", "bool": "BOOL",
               "uint8": "UINT8"}
    if major >= 10:
        aliases.update(int64="INT64", bfloat16="BF16")
    for alias, member in aliases.items():
        setattr(trt, alias, getattr(DataType, member))
    numpy_types = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_,
                   "UINT8": np.uint8, "INT64": np.int64}
    onnx_to_trt = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 9: "BOOL", 2: "UINT8", 7: "INT64"}

    def nptype(trt_type: Any) -> type:
        _check_type("nptype", "trt_type", trt_type, DataType)
        if trt_type.name in numpy_types:
            return numpy_types[trt_type.name]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    trt.nptype = nptype

    # -- logger -----------------------------------------------------------------------------
    class ILogger(_Subclassable):
        Severity = _make_enum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4},
                              version)
        log = _pure_virtual("ILogger::log")

    class Logger(ILogger):
        def __init__(self, min_severity: Any = None) -> None:
            super().__init__()
            self.min_severity = min_severity or ILogger.Severity.WARNING
            self.messages: list[tuple[Any, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            self.messages.append((severity, msg))

    for member in ILogger.Severity:
        setattr(Logger, member.name, member)
    trt.ILogger, trt.Logger = ILogger, Logger

    def claim_logger(call: str, holder: Any, logger: Any) -> None:
        # "TensorRT maintains only a single logger pointer at any given time": a Builder or Runtime created
        # with a different logger while another is alive gets the existing one instead (NVIDIA/TensorRT#1475,
        # the warning of createInferBuilder/createInferRuntime). The strict fake refuses it outright.
        others = [h for h in state["logger_holders"] if h._logger is not logger]
        if others:
            raise RuntimeError(f"{call}: a different logger than the live {type(others[0]).__name__}'s; TensorRT "
                               "keeps one logger pointer per process and would log to the first one")
        state["logger_holders"].add(holder)

    # -- plugins: TensorRT's own plugin library registers its creators only when asked ---------
    # initLibNvInferPlugins "should be called once before accessing the Plugin Registry" (NvInferPlugin.h;
    # Python: trt.init_libnvinfer_plugins(logger, namespace), as NVIDIA's samples call it with their logger).
    def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
        _require_base_init("init_libnvinfer_plugins", logger, ILogger)
        _check_type("init_libnvinfer_plugins", "namespace", namespace, str)
        record("init_libnvinfer_plugins", namespace)
        state["plugins_registered"] = True
        state["plugin_inits"] += 1
        return True

    trt.init_libnvinfer_plugins = init_libnvinfer_plugins
    severity = ILogger.Severity

    def emit(logger: Any, level: Any, message: str) -> None:
        logger.log(level, message)

    # -- calibrators (implicit INT8; gone in 11) --------------------------------------------
    if major <= 10:
        CalibrationAlgoType = enum("CalibrationAlgoType", {
            "LEGACY_CALIBRATION": 0, "ENTROPY_CALIBRATION": 1, "ENTROPY_CALIBRATION_2": 2, "MINMAX_CALIBRATION": 3,
        })

        class IInt8Calibrator(_Subclassable):
            get_batch_size = _pure_virtual("IInt8Calibrator::getBatchSize")
            get_batch = _pure_virtual("IInt8Calibrator::getBatch")
            read_calibration_cache = _pure_virtual("IInt8Calibrator::readCalibrationCache")
            write_calibration_cache = _pure_virtual("IInt8Calibrator::writeCalibrationCache")
            get_algorithm = _pure_virtual("IInt8Calibrator::getAlgorithm")

        class IInt8EntropyCalibrator2(IInt8Calibrator):
            def get_algorithm(self) -> Any:
                return CalibrationAlgoType.ENTROPY_CALIBRATION_2

        class IInt8EntropyCalibrator(IInt8Calibrator):
            def get_algorithm(self) -> Any:
                return CalibrationAlgoType.ENTROPY_CALIBRATION

        class IInt8MinMaxCalibrator(IInt8Calibrator):
            def get_algorithm(self) -> Any:
                return CalibrationAlgoType.MINMAX_CALIBRATION

        class IInt8LegacyCalibrator(IInt8Calibrator):
            get_quantile = _pure_virtual("IInt8LegacyCalibrator::getQuantile")
            get_regression_cutoff = _pure_virtual("IInt8LegacyCalibrator::getRegressionCutoff")
            read_histogram_cache = _pure_virtual("IInt8LegacyCalibrator::readHistogramCache")
            write_histogram_cache = _pure_virtual("IInt8LegacyCalibrator::writeHistogramCache")

            def get_algorithm(self) -> Any:
                return CalibrationAlgoType.LEGACY_CALIBRATION

        trt.IInt8Calibrator = IInt8Calibrator
        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
        trt.IInt8EntropyCalibrator = IInt8EntropyCalibrator
        trt.IInt8MinMaxCalibrator = IInt8MinMaxCalibrator
        trt.IInt8LegacyCalibrator = IInt8LegacyCalibrator
    else:
        IInt8Calibrator = None

    removed_in_version = {
        # name -> members this version lacks although other supported versions have them
        "Builder": {"platform_has_fast_fp16", "platform_has_fast_int8"} if major >= 11 else set(),
        "IBuilderConfig": {"int8_calibrator", "set_calibration_profile", "get_calibration_profile"}
        if major >= 11 else ({"max_workspace_size"} if major >= 10 else set()),
        "INetworkDefinition": {"has_implicit_batch_dimension"} if major >= 11 else set(),
        # TensorRT 11 networks are strongly typed: no per-layer precision or output type to set (the 11.4 bindings
        # keep only get_output_type).
        "ILayer": {"precision", "precision_is_set", "reset_precision", "set_output_type", "output_type_is_set",
                   "reset_output_type"} if major >= 11 else set(),
    }
    if major >= 10:
        removed_in_version["Builder"].add("build_engine")

    def versioned(cls: type) -> type:
        members = {name: _Removed() for name in removed_in_version.get(cls.__name__, ())}
        for name, descriptor in members.items():
            descriptor.__set_name__(cls, name)
        subclass = type(cls.__name__, (cls,), {"_version": version, **members})
        setattr(trt, cls.__name__, subclass)
        return subclass

    # -- network, parser --------------------------------------------------------------------
    class ITensor(_Strict):
        def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
            self._name, self._shape, self._dtype = name, shape, dtype

        @property
        def name(self) -> str:
            return self._name

        @property
        def shape(self) -> Dims:
            return Dims(self._shape)

        @property
        def dtype(self) -> Any:
            return self._dtype

        @property
        def is_network_input(self) -> bool:
            return self._is_input

    ITensor = versioned(ITensor)

    class ILayer(_Strict):
        """One parsed ONNX node (the parser names its layer after the node); the precision members of ILayer."""

        def __init__(self, name: str, outputs: list[Any]) -> None:
            self._name, self._outputs = name, outputs
            self._precision: Any = None
            self._output_types: dict[int, Any] = {}

        @property
        def name(self) -> str:
            return self._name

        @name.setter
        def name(self, value: str) -> None:
            _check_type("name", "value", value, str)
            self._name = value

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_output(self, index: int) -> Any:
            _check_type("get_output", "index", index, int)
            return self._outputs[index] if 0 <= index < len(self._outputs) else None

        @property
        def precision(self) -> Any:
            return self._precision or DataType.FLOAT

        @precision.setter
        def precision(self, value: Any) -> None:
            _check_type("precision", "value", value, DataType)
            record("ILayer.precision", self._name, value.name)
            self._precision = value

        @property
        def precision_is_set(self) -> bool:
            return self._precision is not None

        def reset_precision(self) -> None:
            self._precision = None

        def set_output_type(self, index: int, dtype: Any) -> None:
            _check_type("set_output_type", "index", index, int)
            _check_type("set_output_type", "dtype", dtype, DataType)
            if not 0 <= index < len(self._outputs):
                raise IndexError(f"set_output_type(): layer {self._name} has no output {index}")
            record("ILayer.set_output_type", self._name, index, dtype.name)
            self._output_types[index] = dtype

        def get_output_type(self, index: int) -> Any:
            _check_type("get_output_type", "index", index, int)
            return self._output_types.get(index, self._outputs[index].dtype)

        def output_type_is_set(self, index: int) -> bool:
            _check_type("output_type_is_set", "index", index, int)
            return index in self._output_types

        def reset_output_type(self, index: int) -> None:
            _check_type("reset_output_type", "index", index, int)
            self._output_types.pop(index, None)

    ILayer = versioned(ILayer)

    class INetworkDefinition(_Strict):
        def __init__(self, builder: Any, explicit_batch: bool, strongly_typed: bool) -> None:
            self._builder = builder
            self._explicit_batch = explicit_batch
            self._strongly_typed = strongly_typed
            self._inputs: list[Any] = []
            self._outputs: list[Any] = []
            self._onnx: bytes | None = None
            self._plugins: list[str] = []
            self._has_qdq = False
            self._has_fp16 = False
            self._layers: list[Any] = []

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_input(self, index: int) -> Any:
            _check_type("get_input", "index", index, int)
            return self._inputs[index] if 0 <= index < len(self._inputs) else None

        def get_output(self, index: int) -> Any:
            _check_type("get_output", "index", index, int)
            return self._outputs[index] if 0 <= index < len(self._outputs) else None

        @property
        def num_layers(self) -> int:
            return len(self._layers)

        def get_layer(self, index: int) -> Any:
            _check_type("get_layer", "index", index, int)
            return self._layers[index] if 0 <= index < len(self._layers) else None

        @property
        def has_implicit_batch_dimension(self) -> bool:
            return not self._explicit_batch

    INetworkDefinition = versioned(INetworkDefinition)

    class ParserError(_Strict):
        def __init__(self, code: Any, desc: str, node: int) -> None:
            self._code, self._desc, self._node = code, desc, node

        def code(self) -> Any:
            return self._code

        def desc(self) -> str:
            return self._desc

        def node(self) -> int:
            return self._node

        def file(self) -> str:
            return "ModelImporter.cpp"

        def line(self) -> int:
            return 0

        def func(self) -> str:
            return "parseGraph"

        def __str__(self) -> str:
            return f"In node {self._node} ({self._desc})"

    ParserError = versioned(ParserError)

    class OnnxParser(_Strict):
        def __init__(self, network: Any, logger: Any) -> None:
            _check_type("OnnxParser", "network", network, INetworkDefinition)
            _require_base_init("OnnxParser", logger, ILogger)
            record("OnnxParser")  # not the network: a record must not keep its builder alive
            self._network, self._logger = network, logger
            self._errors: list[Any] = []

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> Any:
            _check_type("get_error", "index", index, int)
            return self._errors[index] if 0 <= index < len(self._errors) else None

        def clear_errors(self) -> None:
            self._errors.clear()

        def supports_operator(self, op_name: str) -> bool:
            _check_type("supports_operator", "op_name", op_name, str)
            return op_name in SUPPORTED_OPS

        def parse_from_file(self, model: str) -> bool:
            _check_type("parse_from_file", "model", model, str)
            record("OnnxParser.parse_from_file", model)
            try:
                with open(model, "rb") as f:
                    data = f.read()
            except OSError as e:
                self._fail(ErrorCode.INVALID_VALUE, f"Failed to open file: {model} ({e})", -1)
                return False
            return self._parse(data)

        def parse(self, model: Any, path: str | None = None) -> bool:
            _check_type("parse", "model", model, bytes, bytearray, memoryview)
            record("OnnxParser.parse", path)
            return self._parse(bytes(model))

        def _fail(self, code: Any, desc: str, node: int) -> None:
            self._errors.append(ParserError(code, desc, node))
            emit(self._logger, severity.ERROR, f"ModelImporter.cpp: {desc}")

        def _parse(self, data: bytes) -> bool:
            import onnx

            network = self._network
            try:
                model = onnx.load_from_string(data)
            except Exception as e:
                self._fail(ErrorCode.MODEL_DESERIALIZE_FAILED, f"Failed to parse ONNX model ({e})", -1)
                return False
            if not network._explicit_batch:
                self._fail(ErrorCode.INVALID_VALUE, "The ONNX parser only supports networks with an explicit "
                           "batch dimension", -1)
                return False
            ok = True
            plugins = set()
            for index, node in enumerate(model.graph.node):
                plugin = plugin_for(node.op_type)
                if plugin is not None:
                    # onnx-tensorrt imports an op it has no importer for (or, on 8.x, InstanceNormalization
                    # unless OnnxParserFlag.NATIVE_INSTANCENORM) through the plugin registry's creator of
                    # that name, version "1": it fails when the plugins were never registered.
                    if not state["plugins_registered"]:
                        self._fail(ErrorCode.UNSUPPORTED_NODE, f"No importer registered for op: {node.op_type}. "
                                   f"Attempting to import as plugin. Searching for plugin: {plugin}, plugin_version:"
                                   " 1, plugin_namespace: ; Plugin not found, are the plugin name, version, and "
                                   "namespace correct?", index)
                        ok = False
                    plugins.add(plugin)
                    continue
                if node.domain not in STANDARD_DOMAINS or node.op_type not in SUPPORTED_OPS:
                    self._fail(ErrorCode.UNSUPPORTED_NODE, f"No importer registered for op: {node.op_type}", index)
                    ok = False
            if not ok or not self._symmetric_qdq(model):
                return False
            initializers = {init.name for init in model.graph.initializer}

            def tensor(value: Any) -> Any:
                tensor_type = value.type.tensor_type
                dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                             for d in tensor_type.shape.dim)
                name = onnx_to_trt.get(tensor_type.elem_type)
                if name is None or not hasattr(DataType, name):
                    self._fail(ErrorCode.UNSUPPORTED_GRAPH, f"unsupported type of {value.name}", -1)
                    return None
                return ITensor(value.name, dims, getattr(DataType, name))

            inputs = [tensor(v) for v in model.graph.input if v.name not in initializers]
            outputs = [tensor(v) for v in model.graph.output]
            if any(t is None for t in inputs + outputs):
                return False
            for t in inputs:
                t._is_input = True
            for t in outputs:
                t._is_input = False
            network._inputs, network._outputs, network._onnx = inputs, outputs, data
            types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.output)}
            network._layers = [
                ILayer(node.name or f"node_of_{node.output[0]}",
                       [ITensor(out, (), getattr(DataType, onnx_to_trt.get(types.get(out, 1), "FLOAT")))
                        for out in node.output])
                for node in model.graph.node
            ]
            ops = {node.op_type for node in model.graph.node}
            network._has_qdq = bool(ops & {"QuantizeLinear", "DequantizeLinear"})
            network._plugins = sorted(plugins)
            return True

        def _symmetric_qdq(self, model: Any) -> bool:
            """TensorRT quantizes symmetrically, int8 only. onnx-tensorrt's QuantizeLinear/DequantizeLinear importer
            (onnxOpImporters.cpp, TensorRT 8.6): uint8 zero points are refused; TensorRT 10 converts a uint8 zero
            point to int8 but refuses any that is not zero ("TensorRT only supports symmetric quantization. The zero
            point for the QuantizeLinear/DequantizeLinear operator must be all zeros.")."""
            from onnx import numpy_helper

            zero_points = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
            for index, node in enumerate(model.graph.node):
                if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
                    continue
                zero_point = zero_points.get(node.input[2])
                if zero_point is None:
                    continue
                if zero_point.dtype not in (np.int8, np.uint8):  # e.g. an int32-quantized bias
                    self._fail(ErrorCode.UNSUPPORTED_NODE, f"{node.op_type}: {zero_point.dtype} quantization is not "
                               "supported; TensorRT quantizes to INT8", index)
                    return False
                if zero_point.dtype == np.uint8 and major == 8:
                    self._fail(ErrorCode.UNSUPPORTED_NODE, f"{node.op_type}: UINT8 zero point is not supported; "
                               "only INT8 quantization is", index)
                    return False
                if np.any(zero_point != 0):
                    self._fail(ErrorCode.INVALID_NODE, "TensorRT only supports symmetric quantization. The zero "
                               f"point for the {node.op_type} operator must be all zeros.", index)
                    return False
            return True

    OnnxParser = versioned(OnnxParser)

    def plugin_for(op_type: str) -> str | None:
        """The plugin creator an ONNX op is imported through, or None for a native layer."""
        if op_type in PLUGIN_OPS:
            return op_type
        # OnnxParserFlag.NATIVE_INSTANCENORM is off by default in 8.6 (plugin) and on by default from 10.0.
        if op_type == "InstanceNormalization" and major == 8:
            return "InstanceNormalization_TRT"
        return None

    # -- builder configuration --------------------------------------------------------------
    class IOptimizationProfile(_Strict):
        def __init__(self) -> None:
            self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
            _check_type("set_shape", "input", input, str)
            shapes = tuple(_shape_arg("set_shape", s) for s in (min, opt, max))
            record("IOptimizationProfile.set_shape", input, *shapes)
            self._shapes[input] = shapes

        def get_shape(self, input: str) -> list[Dims]:
            _check_type("get_shape", "input", input, str)
            return [Dims(s) for s in self._shapes.get(input, ())]

        def _valid(self) -> bool:
            for low, opt, high in self._shapes.values():
                if not (len(low) == len(opt) == len(high)):
                    return False
                if not all(0 < a <= b <= c for a, b, c in zip(low, opt, high, strict=True)):
                    return False
            return True

    IOptimizationProfile = versioned(IOptimizationProfile)

    class ITimingCache(_Strict):
        def __init__(self, device_key: str, entries: set[str]) -> None:
            self._device_key, self._entries = device_key, set(entries)

        def serialize(self) -> IHostMemory:
            body = json.dumps({"device": self._device_key, "entries": sorted(self._entries)})
            return IHostMemory(TIMING_MAGIC + body.encode())

        def combine(self, input_cache: Any, ignore_mismatch: bool) -> bool:
            _check_type("combine", "input_cache", input_cache, ITimingCache)
            _check_type("combine", "ignore_mismatch", ignore_mismatch, bool)
            if input_cache._device_key != self._device_key and not ignore_mismatch:
                return False
            self._entries |= input_cache._entries
            return True

        def reset(self) -> bool:
            self._entries.clear()
            return True

    ITimingCache = versioned(ITimingCache)
    device_key = f"{gpu.name}|sm{gpu.capability[0]}{gpu.capability[1]}|trt{major}"

    class IBuilderConfig(_Strict):
        def __init__(self, builder: Any) -> None:
            self._builder = builder
            self._flags: set[str] = {"TF32"}
            self._pools: dict[str, int] = {}
            self._device_type = DeviceType.GPU
            self._dla_core = -1
            self._calibrator: Any = None
            self._profiles: list[Any] = []
            self._calibration_profile: Any = None
            self._timing_cache: Any = None

        def set_flag(self, flag: Any) -> None:
            _check_type("set_flag", "flag", flag, BuilderFlag)
            record("IBuilderConfig.set_flag", flag.name)
            self._flags.add(flag.name)

        def clear_flag(self, flag: Any) -> None:
            _check_type("clear_flag", "flag", flag, BuilderFlag)
            self._flags.discard(flag.name)

        def get_flag(self, flag: Any) -> bool:
            _check_type("get_flag", "flag", flag, BuilderFlag)
            return flag.name in self._flags

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            _check_type("set_memory_pool_limit", "pool", pool, MemoryPoolType)
            _check_type("set_memory_pool_limit", "pool_size", pool_size, int)
            record("IBuilderConfig.set_memory_pool_limit", pool.name, pool_size)
            self._pools[pool.name] = pool_size

        def get_memory_pool_limit(self, pool: Any) -> int:
            _check_type("get_memory_pool_limit", "pool", pool, MemoryPoolType)
            return self._pools.get(pool.name, 1 << 40)

        @property
        def max_workspace_size(self) -> int:  # deprecated in 8.x, removed in 10
            return self._pools.get("WORKSPACE", 0)

        @property
        def default_device_type(self) -> Any:
            return self._device_type

        @default_device_type.setter
        def default_device_type(self, value: Any) -> None:
            _check_type("default_device_type", "value", value, DeviceType)
            record("IBuilderConfig.default_device_type", value.name)
            self._device_type = value

        @property
        def DLA_core(self) -> int:
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, value: int) -> None:
            _check_type("DLA_core", "value", value, int)
            record("IBuilderConfig.DLA_core", value)
            self._dla_core = value

        @property
        def int8_calibrator(self) -> Any:
            return self._calibrator

        @int8_calibrator.setter
        def int8_calibrator(self, value: Any) -> None:
            if value is not None:
                _require_base_init("int8_calibrator", value, IInt8Calibrator)  # type: ignore[arg-type]
            record("IBuilderConfig.int8_calibrator", type(value).__name__)
            self._calibrator = value

        def add_optimization_profile(self, profile: Any) -> int:
            _check_type("add_optimization_profile", "profile", profile, IOptimizationProfile)
            if not profile._valid():
                emit(builder_logger(self), severity.ERROR, "IBuilderConfig::addOptimizationProfile: invalid profile")
                return -1
            self._profiles.append(profile)
            return len(self._profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self._profiles)

        def set_calibration_profile(self, profile: Any) -> bool:
            _check_type("set_calibration_profile", "profile", profile, IOptimizationProfile)
            record("IBuilderConfig.set_calibration_profile")
            self._calibration_profile = profile
            return True

        def get_calibration_profile(self) -> Any:
            return self._calibration_profile

        def create_timing_cache(self, serialized_timing_cache: Any) -> Any:
            _check_type("create_timing_cache", "serialized_timing_cache", serialized_timing_cache,
                        bytes, bytearray, memoryview)
            blob = bytes(serialized_timing_cache)
            record("IBuilderConfig.create_timing_cache", len(blob))
            if not blob:
                return ITimingCache(device_key, set())
            if not blob.startswith(TIMING_MAGIC):
                emit(builder_logger(self), severity.ERROR, "Timing cache: invalid serialized blob")
                return None
            body = json.loads(blob[len(TIMING_MAGIC):])
            return ITimingCache(body["device"], set(body["entries"]))

        def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
            _check_type("set_timing_cache", "cache", cache, ITimingCache)
            _check_type("set_timing_cache", "ignore_mismatch", ignore_mismatch, bool)
            record("IBuilderConfig.set_timing_cache", ignore_mismatch)
            if cache._device_key != device_key and not ignore_mismatch:
                emit(builder_logger(self), severity.ERROR, "Timing cache was created on a different device or "
                     "TensorRT version")
                return False
            self._timing_cache = cache
            return True

        def get_timing_cache(self) -> Any:
            return self._timing_cache

    IBuilderConfig = versioned(IBuilderConfig)

    def builder_logger(config: Any) -> Any:
        return config._builder._logger

    # -- builder ----------------------------------------------------------------------------
    class Builder(_Strict):
        def __init__(self, logger: Any) -> None:
            _require_base_init("Builder", logger, ILogger)
            claim_logger("Builder", self, logger)
            record("Builder")
            self._logger = logger

        @property
        def num_DLA_cores(self) -> int:
            return state["dla_cores"]

        @property
        def platform_has_fast_fp16(self) -> bool:
            return True

        @property
        def platform_has_fast_int8(self) -> bool:
            return True

        def create_network(self, flags: int = 0) -> Any:
            _check_type("create_network", "flags", flags, int)
            record("Builder.create_network", flags)
            known = 0
            for member in NetworkDefinitionCreationFlag:
                known |= 1 << int(member)
            if flags & ~known:
                raise TypeError(f"create_network(): unknown flag bits {flags & ~known:#x}")

            def has(name: str) -> bool:
                member = NetworkDefinitionCreationFlag.__members__.get(name)
                return member is not None and bool(flags & (1 << int(member)))

            if major == 10 and has("EXPLICIT_BATCH"):
                emit(self._logger, severity.WARNING, "kEXPLICIT_BATCH is deprecated and has no effect")
            explicit = has("EXPLICIT_BATCH") if major == 8 else True
            strongly_typed = True if major >= 11 else has("STRONGLY_TYPED")
            return INetworkDefinition(self, explicit, strongly_typed)

        def create_builder_config(self) -> Any:
            return IBuilderConfig(self)

        def create_optimization_profile(self) -> Any:
            return IOptimizationProfile()

        def build_engine(self, network: Any, config: Any) -> Any:  # 8.x only (deprecated)
            raise AssertionError("lepton-edge must use build_serialized_network")

        def build_serialized_network(self, network: Any, config: Any) -> Any:
            _check_type("build_serialized_network", "network", network, INetworkDefinition)
            _check_type("build_serialized_network", "config", config, IBuilderConfig)
            record("Builder.build_serialized_network")
            return self._build(network, config)

        def _error(self, message: str) -> None:
            emit(self._logger, severity.ERROR, message)

        def _build(self, network: Any, config: Any) -> Any:
            if network._builder is not self or config._builder is not self:
                self._error("network and config must come from this builder")
                return None
            if not network._outputs:
                self._error("Network must have at least one output")
                return None
            profiles = [p._shapes for p in config._profiles]
            dynamic = [t for t in network._inputs if any(d < 0 for d in t._shape)]
            if dynamic and not profiles:
                self._error("Network has dynamic or shape inputs, but no optimization profile has been defined.")
                return None
            for index, shapes in enumerate(profiles):
                for t in network._inputs:
                    entry = shapes.get(t._name)
                    if entry is None:
                        if t in dynamic:
                            self._error(f"Optimization profile {index}: no shapes for dynamic input {t._name}")
                            return None
                        continue
                    for shape in entry:
                        if len(shape) != len(t._shape) or any(
                            want >= 0 and got != want for want, got in zip(t._shape, shape, strict=True)
                        ):
                            self._error(f"Optimization profile {index}: {t._name} shape {shape} does not match "
                                        f"{t._shape}")
                            return None
            flags = config._flags
            precision_flags = flags & {"FP16", "INT8", "FP8", "BF16", "INT4"}
            if network._strongly_typed and precision_flags:
                self._error(f"BuilderFlag(s) {sorted(precision_flags)} are not allowed with a strongly typed "
                            "network")
                return None
            int8_mode = None
            if network._has_qdq:
                if not network._strongly_typed and "INT8" not in flags:
                    self._error("Network contains Q/DQ layers: BuilderFlag.INT8 must be set (or build strongly "
                                "typed)")
                    return None
                int8_mode = "explicit"
            elif "INT8" in flags:
                int8_mode = self._calibrate(network, config)
                if int8_mode is False:
                    return None
            if config._device_type == DeviceType.DLA:
                if state["dla_cores"] == 0:
                    self._error("DLA is not available on this platform")
                    return None
                if not 0 <= config._dla_core < state["dla_cores"]:
                    self._error(f"DLA core {config._dla_core} is out of range")
                    return None
                if not flags & {"FP16", "INT8"} and not network._strongly_typed:
                    emit(self._logger, severity.WARNING, "DLA: no FP16/INT8 precision; layers fall back to GPU")
            # Layer precisions: refused in strongly typed networks, obeyed only with a precision-constraint flag
            # (without one TensorRT treats them as hints and may ignore them).
            constrained = {layer._name: layer for layer in network._layers
                           if layer._precision is not None or layer._output_types}
            if constrained and network._strongly_typed:
                self._error("ILayer::setPrecision/setOutputType: layer precisions cannot be set in a strongly typed "
                            f"network ({sorted(constrained)[:3]})")
                return None
            precisions: dict[str, Any] = {}
            if constrained and flags & {"OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}:
                precisions = {name: {"precision": layer.precision.name,
                                     "outputs": {str(i): t.name for i, t in layer._output_types.items()}}
                              for name, layer in constrained.items()}
            elif constrained:
                emit(self._logger, severity.WARNING, "Layer precisions were set without OBEY_PRECISION_CONSTRAINTS or "
                     "PREFER_PRECISION_CONSTRAINTS: they are hints the builder may ignore")
            cache = config._timing_cache or ITimingCache(device_key, set())
            config._timing_cache = cache
            key = hashlib.sha256(network._onnx + ",".join(sorted(flags)).encode()).hexdigest()[:16]
            if key in cache._entries:
                state["timing_cache_hits"] += 1
            cache._entries.add(key)
            header = {
                "trt_version": version,
                "device": gpu.name,
                "capability": list(gpu.capability),
                "flags": sorted(flags),
                "strongly_typed": network._strongly_typed,
                "layer_precisions": precisions,
                "int8": int8_mode,
                "device_type": config._device_type.name,
                "dla_core": config._dla_core,
                "plugins": network._plugins,
                "workspace": config._pools.get("WORKSPACE"),
                "inputs": [[t._name, list(t._shape), t._dtype.name] for t in network._inputs],
                "outputs": [[t._name, list(t._shape), t._dtype.name] for t in network._outputs],
                "profiles": [{name: [list(s) for s in shapes] for name, shapes in p.items()} for p in profiles],
            }
            state["builds"].append(header)
            return IHostMemory(PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network._onnx)

        def _calibrate(self, network: Any, config: Any) -> Any:
            calibrator = config._calibrator if major <= 10 else None
            if calibrator is None:
                emit(self._logger, severity.WARNING, "Calibrator is not being used. Users must provide dynamic "
                     "range for all tensors that are not Int32 or Bool.")
                return "no-scales"
            algorithm = calibrator.get_algorithm()
            expected = CALIBRATION_HEADERS[algorithm.name]
            if algorithm == CalibrationAlgoType.LEGACY_CALIBRATION:  # TensorRT asks for these first
                calibrator.get_quantile()
                calibrator.get_regression_cutoff()
            cache = calibrator.read_calibration_cache()
            if cache:
                lines = bytes(cache).decode(errors="replace").splitlines()
                header = lines[0] if lines else ""
                parts = header.split("-")
                if len(parts) == 3 and parts[0] == "TRT" and parts[2] == expected:
                    if int(parts[1]) != _encoded_version(version):
                        emit(self._logger, severity.WARNING, f"Calibration cache {header} was written by another "
                             "TensorRT version")
                    scales = [line for line in lines[1:] if line.strip()]
                    for line in scales:
                        name, sep, value = line.rpartition(": ")
                        hex_digits = value.strip()
                        if not (name and sep and 1 <= len(hex_digits) <= 8
                                and all(c in "0123456789abcdefABCDEF" for c in hex_digits)):
                            self._error(f"Calibration cache line {line!r} is not 'tensor: <hex scale>'")
                            return False
                    if scales:
                        state["replayed_caches"].append(expected)
                        return "calibrated-from-cache"
                    self._error("Calibration cache has no scales")
                    return False
                emit(self._logger, severity.WARNING, f"Calibration cache header {header!r} does not match "
                     f"{expected}; ignoring the cache and calibrating")
            batch_size = calibrator.get_batch_size()
            batch = calibrator.get_batch([t._name for t in network._inputs])
            if batch is None or batch_size < 1:
                self._error("Calibration failure occurred with no scaling factors detected. This could be due to "
                            "no int8 calibrator or insufficient custom scales for network layers.")
                return False
            raise AssertionError("the fake does not model calibration on device data")

    Builder = versioned(Builder)

    # -- runtime, engine, execution context ---------------------------------------------------
    class Runtime(_Strict):
        def __init__(self, logger: Any) -> None:
            _require_base_init("Runtime", logger, ILogger)
            claim_logger("Runtime", self, logger)
            record("Runtime")
            self._logger = logger
            self._dla_core = -1
            self._engines: weakref.WeakSet = weakref.WeakSet()
            state["live"]["runtime"].add(self)

        @property
        def num_DLA_cores(self) -> int:
            return state["dla_cores"]

        # IRuntime::setDLACore: "Sets the DLA core used by the network. Defaults to -1." A DLA engine runs on
        # the runtime's core, so trtexec (--useDLACore) and DeepStream set it before deserializing; the fake
        # refuses a DLA plan on a runtime whose core is not the one the plan was built for.
        @property
        def DLA_core(self) -> int:
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, value: int) -> None:
            _check_type("DLA_core", "value", value, int)
            record("Runtime.DLA_core", value)
            self._dla_core = value

        def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
            _check_type("deserialize_cuda_engine", "serialized_engine", serialized_engine,
                        bytes, bytearray, memoryview)
            record("Runtime.deserialize_cuda_engine")
            blob = bytes(serialized_engine)
            if not blob.startswith(PLAN_MAGIC):
                emit(self._logger, severity.ERROR, "1: [stdArchiveReader.cpp::StdArchiveReader::32] Error Code 1: "
                     "Serialization (Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not "
                     "match)")
                return None
            head, _, onnx_bytes = blob[len(PLAN_MAGIC):].partition(b"\n")
            try:
                header = json.loads(head)
            except ValueError:
                emit(self._logger, severity.ERROR, "Serialization: the engine plan is truncated or corrupt")
                return None
            if header["trt_version"] != version:
                emit(self._logger, severity.ERROR, "The engine plan file is not compatible with this version of "
                     f"TensorRT, expecting library version {version} got {header['trt_version']}, please rebuild.")
                return None
            if header["device"] != gpu.name or tuple(header["capability"]) != gpu.capability:
                emit(self._logger, severity.ERROR, "The engine plan file is generated on an incompatible device, "
                     f"expecting compute {gpu.capability} got compute {tuple(header['capability'])}, please "
                     "rebuild.")
                return None
            if header.get("device_type") == "DLA" and self._dla_core != header["dla_core"]:
                emit(self._logger, severity.ERROR, f"The engine was built for DLA core {header['dla_core']} but the "
                     f"runtime's DLA core is {self._dla_core}: set IRuntime::setDLACore before deserializing")
                return None
            missing = [p for p in header.get("plugins", []) if not state["plugins_registered"]]
            if missing:
                emit(self._logger, severity.ERROR, f"IPluginRegistry::getCreator: Error Code 4: Cannot find plugin: "
                     f"{missing[0]}, version: 1, namespace: (call init_libnvinfer_plugins before deserializing)")
                return None
            engine = ICudaEngine(self, header, onnx_bytes)
            self._engines.add(engine)
            return engine

        def __del__(self) -> None:
            if len(self.__dict__.get("_engines", ())):
                state["violations"].append("Runtime destroyed while its engines were alive")

    Runtime = versioned(Runtime)

    class ICudaEngine(_Strict):
        def __init__(self, runtime: Any, header: dict, onnx_bytes: bytes) -> None:
            self._runtime_logger = runtime._logger
            self._cuda_context = gpu.current_context()
            """The CUDA context current at deserialization (None: the runtime API's primary context)."""
            self._header = header
            self._onnx = onnx_bytes
            self._io = [(name, tuple(shape), getattr(DataType, dtype), TensorIOMode.INPUT)
                        for name, shape, dtype in header["inputs"]]
            self._io += [(name, tuple(shape), getattr(DataType, dtype), TensorIOMode.OUTPUT)
                         for name, shape, dtype in header["outputs"]]
            self._contexts: weakref.WeakSet = weakref.WeakSet()
            self._session: Any = None
            state["live"]["engine"].add(self)

        def _lookup(self, name: str) -> Any:
            _check_type("tensor lookup", "name", name, str)
            for entry in self._io:
                if entry[0] == name:
                    return entry
            emit(self._runtime_logger, severity.ERROR, f"ICudaEngine: no tensor named {name}")
            return None

        @property
        def num_io_tensors(self) -> int:
            return len(self._io)

        @property
        def num_optimization_profiles(self) -> int:
            return max(1, len(self._header["profiles"]))

        def get_tensor_name(self, index: int) -> str:
            _check_type("get_tensor_name", "index", index, int)
            return self._io[index][0] if 0 <= index < len(self._io) else None

        def get_tensor_mode(self, name: str) -> Any:
            entry = self._lookup(name)
            return entry[3] if entry else TensorIOMode.NONE

        def get_tensor_shape(self, name: str) -> Dims:
            entry = self._lookup(name)
            return Dims(entry[1] if entry else ())

        def get_tensor_dtype(self, name: str) -> Any:
            entry = self._lookup(name)
            return entry[2] if entry else DataType.FLOAT

        def is_shape_inference_io(self, name: str) -> bool:
            self._lookup(name)
            return False

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
            _check_type("get_tensor_profile_shape", "profile_index", profile_index, int)
            entry = self._lookup(name)
            if entry is None or entry[3] != TensorIOMode.INPUT:
                return []
            profiles = self._header["profiles"]
            if profiles:
                shapes = profiles[profile_index].get(name)
                if shapes:
                    return [Dims(s) for s in shapes]
            return [Dims(entry[1])] * 3

        def _in_own_context(self, call: str) -> bool:
            # Device memory and kernels belong to a CUDA context: an engine's work must run with the context
            # it was deserialized in current (CUDA driver API, Context Management; pycuda contexts are pushed
            # per thread), else the launch fails with an invalid-context/invalid-handle error.
            if gpu.current_context() is self._cuda_context:
                return True
            emit(self._runtime_logger, severity.ERROR, f"{call}: Cuda Runtime (invalid device context): the "
                 "engine's CUDA context is not current in this thread")
            return False

        def create_execution_context(self) -> Any:
            record("ICudaEngine.create_execution_context")
            if not self._in_own_context("ICudaEngine::createExecutionContext"):
                return None
            context = IExecutionContext(self)
            self._contexts.add(context)
            return context

        def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if self._session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                self._session = ort.InferenceSession(self._onnx, options, providers=["CPUExecutionProvider"])
            names = [entry[0] for entry in self._io if entry[3] == TensorIOMode.OUTPUT]
            return dict(zip(names, self._session.run(names, feeds), strict=True))

        def __del__(self) -> None:
            if len(self.__dict__.get("_contexts", ())):
                state["violations"].append("ICudaEngine destroyed while its execution contexts were alive")

    ICudaEngine = versioned(ICudaEngine)

    class IExecutionContext(_Strict):
        def __init__(self, engine: Any) -> None:
            self._engine = engine
            self._shapes: dict[str, tuple[int, ...]] = {}
            self._addresses: dict[str, int] = {}
            self._output_shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}
            state["live"]["context"].add(self)

        @property
        def engine(self) -> Any:
            return self._engine

        def _inputs(self) -> list[Any]:
            return [e for e in self._engine._io if e[3] == TensorIOMode.INPUT]

        def set_input_shape(self, name: str, shape: Any) -> bool:
            shape = _shape_arg("set_input_shape", shape)
            record("IExecutionContext.set_input_shape", name, shape)
            entry = self._engine._lookup(name)
            logger = self._engine._runtime_logger
            if entry is None or entry[3] != TensorIOMode.INPUT:
                return False
            declared = entry[1]
            low, _, high = self._engine.get_tensor_profile_shape(name, 0)
            fits = len(shape) == len(declared) and all(
                (want < 0 or got == want) and lo <= got <= hi
                for want, got, lo, hi in zip(declared, shape, low, high, strict=True)
            )
            if not fits:
                emit(logger, severity.ERROR, f"IExecutionContext::setInputShape: {name} shape {shape} is outside "
                     f"the optimization profile [{tuple(low)}, {tuple(high)}]")
                return False
            self._shapes[name] = shape
            return True

        def _all_shapes(self) -> dict[str, tuple[int, ...]] | None:
            shapes = {}
            for name, declared, _, _ in self._inputs():
                shape = self._shapes.get(name, declared if all(d >= 0 for d in declared) else None)
                if shape is None:
                    return None
                shapes[name] = shape
            return shapes

        def _resolved_outputs(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
            key = tuple(sorted(shapes.items()))
            if key not in self._output_shapes:
                feeds = {name: np.zeros(shapes[name], nptype(dtype)) for name, _, dtype, _ in self._inputs()}
                outputs = self._engine._run(feeds)
                self._output_shapes[key] = {name: tuple(array.shape) for name, array in outputs.items()}
            return self._output_shapes[key]

        def get_tensor_shape(self, name: str) -> Dims:
            entry = self._engine._lookup(name)
            if entry is None:
                return Dims(())
            if entry[3] == TensorIOMode.INPUT:
                return Dims(self._shapes.get(name, entry[1]))
            shapes = self._all_shapes()
            if shapes is None:
                return Dims(entry[1])
            return Dims(self._resolved_outputs(shapes)[name])

        def set_tensor_address(self, name: str, memory: int) -> bool:
            _check_type("set_tensor_address", "memory", memory, int)
            record("IExecutionContext.set_tensor_address", name, memory)
            if self._engine._lookup(name) is None:
                return False
            self._addresses[name] = memory
            return True

        def get_tensor_address(self, name: str) -> int:
            self._engine._lookup(name)
            return self._addresses.get(name, 0)

        def execute_async_v3(self, stream_handle: int) -> bool:
            _check_type("execute_async_v3", "stream_handle", stream_handle, int)
            record("IExecutionContext.execute_async_v3", stream_handle)
            logger = self._engine._runtime_logger
            if not self._engine._in_own_context("IExecutionContext::enqueueV3"):
                return False
            shapes = self._all_shapes()
            if shapes is None:
                emit(logger, severity.ERROR, "IExecutionContext::enqueueV3: not all input shapes are specified")
                return False
            for name, _, _, _ in self._engine._io:
                if not self._addresses.get(name):
                    emit(logger, severity.ERROR, f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error "
                         f"(Neither address or allocator is set for tensor {name})")
                    return False
            outputs = self._resolved_outputs(shapes)
            # Like a CUDA graph, queued work sees the addresses and shapes of enqueue time.
            addresses = dict(self._addresses)
            inputs = [(name, shapes[name], nptype(dtype)) for name, _, dtype, _ in self._inputs()]
            out_types = {name: nptype(dtype) for name, _, dtype, mode in self._engine._io
                         if mode == TensorIOMode.OUTPUT}
            engine = self._engine

            def work() -> None:
                feeds = {}
                for name, shape, dtype in inputs:
                    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                    raw = gpu.read(addresses[name], nbytes)
                    feeds[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
                results = engine._run(feeds)
                for name, array in results.items():
                    if tuple(array.shape) != outputs[name]:
                        raise DeviceFault(f"output {name} shape changed under a captured execution")
                    gpu.write(addresses[name], np.ascontiguousarray(array, out_types[name]).tobytes())

            if not gpu.enqueue(stream_handle, "TensorRT enqueueV3", work):
                emit(logger, severity.ERROR, f"IExecutionContext::enqueueV3: invalid stream {stream_handle:#x}")
                return False
            return True

    IExecutionContext = versioned(IExecutionContext)
    trt.Dims = Dims
    trt.IHostMemory = IHostMemory
    return trt


def install_tensorrt(monkeypatch: Any, version: str = "10.3.0", gpu: FakeGpu | None = None,
                     *, dla_cores: int = 0) -> Any:
    """Put the fake in ``sys.modules["tensorrt"]`` for one test; returns the fake module."""
    trt = make_fake_tensorrt(version, gpu, dla_cores=dla_cores)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def block_tensorrt(monkeypatch: Any) -> None:
    """Make ``import tensorrt`` fail for one test (whether or not TensorRT is installed)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def calibration_cache_text(version: str, algorithm: str = "EntropyCalibration2",
                           tensors: tuple[str, ...] = ("input", "output")) -> bytes:
    """A calibration cache in TensorRT's text format, as ``lepton-edge calibrate`` writes it."""
    lines = [f"TRT-{_encoded_version(version)}-{algorithm}"]
    lines += [f"{name}: 3c010a14" for name in tensors]
    return ("\n".join(lines) + "\n").encode()
