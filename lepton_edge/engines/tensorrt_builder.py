"""The TensorRT engine builder: an ONNX model to a serialized engine (plan), through the version shim.

Every TensorRT object comes from :func:`~lepton_edge.runtime.backends.tensorrt.import_tensorrt`, and every
difference between TensorRT versions is asked of :class:`~lepton_edge.runtime.backends.tensorrt.TrtApi`;
this module imports neither ``tensorrt`` nor a CUDA package itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lepton_edge.core.errors import BackendUnavailable, ConfigError, ModelError
from lepton_edge.core.fileio import atomic_write, sha256_file
from lepton_edge.runtime.backends.cuda import INSTALL_HINT as CUDA_INSTALL_HINT
from lepton_edge.runtime.backends.cuda import cuda_adapter
from lepton_edge.runtime.backends.tensorrt import TrtApi, import_tensorrt, logged_errors, make_logger
from lepton_edge.runtime.platform import probe_gpu

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

CALIBRATION_ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
"""Cache header algorithms; each is replayed by the calibrator class of the same algorithm, because TensorRT
ignores a cache whose header names another one (and then calibrates with no data)."""
_CACHE_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9_]+)$")
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def make_cache_calibrator(trt: Any, cache: bytes, algorithm: str) -> Any:
    """A calibrator of ``algorithm``'s class that only replays ``cache``: it has no data (``get_batch`` is None)."""
    bases = {
        "EntropyCalibration2": trt.IInt8EntropyCalibrator2,
        "EntropyCalibration": trt.IInt8EntropyCalibrator,
        "MinMaxCalibration": trt.IInt8MinMaxCalibrator,
        "LegacyCalibration": trt.IInt8LegacyCalibrator,
    }
    base = bases[algorithm]

    class CacheCalibrator(base):
        def __init__(self) -> None:
            base.__init__(self)
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

        # The legacy calibrator's extra members; its defaults as documented (unused when the cache is read).
        def get_quantile(self) -> float:
            return 0.9999

        def get_regression_cutoff(self) -> float:
            return 1.0

        def read_histogram_cache(self, length: int) -> None:
            return None

        def write_histogram_cache(self, data: Any, length: int) -> None:
            return None

    return CacheCalibrator()


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
    digest = sha256_file(path)
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
    """Read a calibration cache and check its header (``TRT-<version>-<algorithm>``)."""
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
            f"'TRT-<version>-<algorithm>' with an algorithm among {', '.join(CALIBRATION_ALGORITHMS)}"
        )
    version, algorithm = int(match.group(1)), match.group(2)
    if algorithm not in CALIBRATION_ALGORITHMS:
        raise ModelError(
            f"{path}: unknown calibrator algorithm {algorithm!r} in header {header!r}; expected one of "
            f"{', '.join(CALIBRATION_ALGORITHMS)}. Re-run `lepton-edge calibrate` to write a new cache."
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
    flags: list[str] = field(default_factory=list)
    """Builder flags set, for the manifest."""
    float_layers: list[str] = field(default_factory=list)
    """ONNX nodes whose layers were constrained to fp32 (mixed precision)."""


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
        # Layers left unquantized (mixed precision, decode heads) run in fp16 rather than fp32 where the network
        # is not strongly typed (8.6 Q/DQ, implicit calibration); strongly typed networks take no precision flags.
        plan.fp16_flag = plan.int8_flag and api.has_fp16_flag and not plan.strongly_typed
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


def _device_facts(device: int = 0) -> dict[str, Any]:
    gpu, problem = probe_gpu(device)
    if problem is not None:
        log.warning("cannot read the GPU's name and compute capability for the manifest: %s", problem)
    return {"device_name": gpu.get("gpu"), "compute_capability": gpu.get("compute_capability"),
            "device_index": device}


@contextlib.contextmanager
def _on_device(device: int) -> Iterator[None]:
    """CUDA device ``device`` current on this thread: TensorRT builds on the calling thread's current device."""
    try:
        cuda = cuda_adapter(device)
    except BackendUnavailable:
        if device != 0:
            raise ConfigError(f"building for CUDA device {device} needs cuda-python or pycuda to select it: "
                              f"{CUDA_INSTALL_HINT}") from None
        cuda = None
    if cuda is None:
        yield
        return
    with cuda, cuda.activate():
        yield


def build_engine(onnx_path: Path, *, device: int = 0, **options: Any) -> tuple[bytes, dict[str, Any]]:
    """Build on CUDA device ``device`` (see :func:`_build_engine` for the options); the facts name that device."""
    with _on_device(device):
        plan, facts = _build_engine(onnx_path, **options)
    if device != 0:
        facts.update(_device_facts(device))
    return plan, facts


def _build_engine(
    onnx_path: Path,
    *,
    precision: Precision,
    calibration_cache: Path | None = None,
    timing_cache: Path | None = None,
    workspace_mb: int = 1024,
    dla_core: int | None = None,
    profiles: list[Profile] | None = None,
    progress: Callable[[str], None] | None = None,
    float_layers: Sequence[str] = (),
) -> tuple[bytes, dict[str, Any]]:
    """Build a TensorRT engine from an ONNX model; returns the serialized plan and facts for the manifest.

    ``precision`` ``int8`` uses the model's Q/DQ nodes when it has them, otherwise replays
    ``calibration_cache`` (TensorRT up to 10.x) through the calibrator its header names. ``timing_cache``
    is read if it exists and written back after the build. ``profiles`` gives (min, opt, max) shapes per
    dynamic input, one dict per optimization profile. ``progress`` is called with the stage name: parse,
    configure, build, done. ``float_layers`` (mixed precision; int8 from a calibration cache) names ONNX nodes whose
    layers must run in fp32: precision constraints obeyed by the builder (a Q/DQ model has no Q/DQ there instead).
    """
    onnx_path = Path(onnx_path)
    report = progress or (lambda stage: None)
    _check_request(onnx_path, precision, workspace_mb, dla_core)
    summary = summarize_onnx(onnx_path)
    trt = import_tensorrt()
    api = TrtApi.from_module(trt)
    plan = _plan_precision(api, precision, onnx_path, summary, calibration_cache)

    report("parse")
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(api.network_flags(plan.strongly_typed))
    parser = trt.OnnxParser(network, logger)
    _parse(parser, onnx_path, api, logger)
    _check_profiles(onnx_path, _network_inputs(network), profiles or [])

    report("configure")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    _set_flags(trt, config, plan)
    _constrain_to_float(trt, network, config, plan, float_layers, onnx_path)
    if dla_core is not None:
        _use_dla(trt, builder, config, dla_core)
        plan.flags.append("GPU_FALLBACK")
    calibrating = plan.calibration is not None and api.has_calibration_profile
    _add_profiles(builder, config, onnx_path, profiles or [], calibrating, logger)
    calibrator = _attach_calibrator(trt, config, plan)  # kept referenced until the build is done
    if timing_cache is not None:
        _load_timing_cache(config, Path(timing_cache))

    report("build")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise _build_failed(onnx_path, api, logger, calibrated=calibrator is not None)
    engine_bytes = bytes(serialized)
    if timing_cache is not None:
        _save_timing_cache(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
    report("done")
    return engine_bytes, _build_facts(api, plan, summary, precision, workspace_mb, dla_core, profiles, timing_cache)


def _network_inputs(network: Any) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the parsed network's inputs (-1 for a dynamic dimension)."""
    inputs = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        inputs[tensor.name] = tuple(int(d) for d in tensor.shape)
    return inputs


def _attach_calibrator(trt: Any, config: Any, plan: _PrecisionPlan) -> Any:
    """The calibrator replaying the plan's calibration cache, set on ``config``; None without a cache."""
    if plan.calibration is None:
        return None
    calibrator = make_cache_calibrator(trt, plan.calibration.data, plan.calibration.algorithm)
    config.int8_calibrator = calibrator
    return calibrator


def _build_failed(onnx_path: Path, api: TrtApi, logger: Any, *, calibrated: bool) -> ModelError:
    hint = ""
    if calibrated:
        hint = (" The calibration cache may not match this model or TensorRT version: re-run "
                "`lepton-edge calibrate` with this model.")
    return ModelError(f"{onnx_path}: TensorRT {api.version} failed to build the engine: "
                      f"{logged_errors(logger)}.{hint}")


def _check_request(onnx_path: Path, precision: str, workspace_mb: int, dla_core: int | None) -> None:
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    if workspace_mb <= 0:
        raise ConfigError(f"workspace_mb must be positive, got {workspace_mb}")
    if dla_core is not None and precision == "fp32":
        raise ConfigError("DLA runs FP16 and INT8 layers only: build with precision fp16 or int8 to use "
                          "dla_core")
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: ONNX model not found")


def _parse(parser: Any, onnx_path: Path, api: TrtApi, logger: Any) -> None:
    if parser.parse_from_file(str(onnx_path)):
        return
    errors = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        errors.append(_parser_error_text(error.node(), error.desc(), error.code()))
    listed = "\n  ".join(errors) or logged_errors(logger)
    raise ModelError(
        f"{onnx_path}: TensorRT {api.version} cannot parse this model ({len(errors)} error(s)):\n"
        f"  {listed}\nSimplify or re-export the model (e.g. another opset) or replace the unsupported "
        "operators."
    )


def _set_flags(trt: Any, config: Any, plan: _PrecisionPlan) -> None:
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
        plan.flags.append("FP16")
    if plan.int8_flag:
        config.set_flag(trt.BuilderFlag.INT8)
        plan.flags.append("INT8")


def _constrain_to_float(trt: Any, network: Any, config: Any, plan: _PrecisionPlan, float_layers: Sequence[str],
                        onnx_path: Path) -> None:
    """Run the layers of the ONNX nodes ``float_layers`` in fp32 (layer precision and float output types) and make
    the builder obey it. The ONNX parser names a node's layer after the node (extra layers ``<node>_<n>``)."""
    if not float_layers:
        return
    if plan.int8_mode != "calibration-cache":
        raise ConfigError(f"{onnx_path}: layers are kept in float by precision constraints only when int8 is "
                          "calibrated from a cache; a Q/DQ model leaves their Q/DQ out instead")
    wanted = set(float_layers)
    found: set[str] = set()
    floats = (trt.float32, trt.float16)
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        node = layer.name if layer.name in wanted else re.sub(r"_\d+$", "", layer.name)
        if node not in wanted:
            continue
        found.add(node)
        layer.precision = trt.float32
        for output in range(layer.num_outputs):
            if layer.get_output(output).dtype in floats:
                layer.set_output_type(output, trt.float32)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    plan.flags.append("OBEY_PRECISION_CONSTRAINTS")
    plan.float_layers = sorted(found)
    missing = sorted(wanted - found)
    if missing:
        log.warning("%s: no TensorRT layer for %d node(s) to keep in float, e.g. %s", onnx_path, len(missing),
                    missing[:3])


def _use_dla(trt: Any, builder: Any, config: Any, dla_core: int) -> None:
    cores = builder.num_DLA_cores
    if not 0 <= dla_core < cores:
        available = f"cores 0..{cores - 1}" if cores else "no DLA (only Jetson Xavier/Orin AGX and NX do)"
        raise ConfigError(f"dla_core={dla_core} is not available: this device has {available}")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = dla_core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _add_profiles(builder: Any, config: Any, onnx_path: Path, profiles: list[Profile], calibrating: bool,
                  logger: Any) -> None:
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, tuple(low), tuple(opt), tuple(high))
        if config.add_optimization_profile(profile) < 0:
            raise ConfigError(f"{onnx_path}: TensorRT rejected profile {shapes}: {logged_errors(logger)}")
        if calibrating and config.num_optimization_profiles == 1:
            config.set_calibration_profile(profile)


def _save_timing_cache(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def _build_facts(api: TrtApi, plan: _PrecisionPlan, summary: OnnxSummary, precision: str, workspace_mb: int,
                 dla_core: int | None, profiles: list[Profile] | None, timing_cache: Path | None) -> dict[str, Any]:
    return {
        "tensorrt_version": api.version,
        "precision": precision,
        "builder_flags": plan.flags,
        "strongly_typed": plan.strongly_typed,
        "int8_mode": plan.int8_mode,
        "float_layers": plan.float_layers,
        "calibration_cache": plan.calibration.facts if plan.calibration else None,
        "workspace_mb": workspace_mb,
        "device_type": "DLA" if dla_core is not None else "GPU",
        "dla_core": dla_core,
        "profiles": [{name: [list(s) for s in shapes] for name, shapes in p.items()} for p in profiles or []],
        "timing_cache": str(timing_cache) if timing_cache is not None else None,
        "onnx_sha256": summary.sha256,
        **_device_facts(),
    }


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
