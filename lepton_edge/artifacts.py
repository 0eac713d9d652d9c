"""Engine artifacts: a directory with the engine file and ``manifest.json`` recording its full fingerprint.

The engine is ``model.onnx`` for onnxruntime targets (an fp32 copy of the model, or its QDQ int8
quantization) and ``model.plan`` for TensorRT. The manifest records where the engine came from (the
source model, calibration, builder options), what it was built with (runtime versions, device) and
how accurate it is (the accuracy gate). Before an engine is loaded, :func:`verify_artifact` checks the
engine file against its recorded hash and the recorded environment against the running one, so an
upgraded TensorRT or a truncated copy is reported by name instead of crashing or running silently.

Artifacts are written atomically: built in a staging directory beside the destination, synced, then
renamed into place. A failed build leaves any previous artifact untouched.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lepton_edge import __version__
from lepton_edge.backends.base import Backend, TensorSpec
from lepton_edge.config import BackendConfig, OnnxRuntimeBackendConfig, PreprocessConfig, TensorRTBackendConfig
from lepton_edge.errors import ConfigError, ModelError
from lepton_edge.fileio import atomic_write, fsync_path, fsync_tree

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ONNX_ENGINE = "model.onnx"
TRT_ENGINE = "model.plan"
ARTIFACT_METADATA_KEY = "lepton.artifact"
"""Backend metadata key under which :func:`open_artifact` records the artifact's identity (JSON)."""

BuildPrecision = Literal["fp32", "fp16", "int8"]
ProgressArg = bool | Callable[[str], None]

# Instruction sets that decide how onnxruntime runs int8 (VNNI/AMX dot products; without them u8s8
# kernels can saturate), hence whether an int8 artifact built elsewhere behaves the same here.
INT8_INSTRUCTION_SETS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


# ----------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------

class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorInfo(_Record):
    name: str = Field(description="Tensor name in the model.")
    shape: list[int | str | None] = Field(description="Dimensions; dynamic ones as a name or null.")
    dtype: str = Field(description="numpy element type.")


class SourceModel(_Record):
    name: str = Field(description="File name of the ONNX model given to the build.")
    sha256: str = Field(description="sha256 of the model (and of its external data files, if any).")
    opset: int = Field(description="Default-domain ONNX opset.")
    inputs: list[TensorInfo] = Field(description="Model inputs.")
    outputs: list[TensorInfo] = Field(description="Model outputs.")
    metadata: dict[str, str] = Field(default_factory=dict, description="The model's metadata properties "
                                     "(task, labels, preprocessing), given to every backend that opens the engine.")


class EngineInfo(_Record):
    file: str = Field(description="Engine file name inside the artifact directory.")
    sha256: str = Field(description="sha256 of the engine file.")
    size: int = Field(description="Engine file size in bytes.")


class CalibrationInfo(_Record):
    table_sha256: str = Field(description="sha256 of the calibration table's canonical JSON.")
    method: str = Field(description="Calibration method (minmax, entropy, percentile).")
    samples: int = Field(description="Number of calibration samples.")
    dataset_sha256: str | None = Field(None, description="Fingerprint of the calibration data set.")


class RuntimeInfo(_Record):
    onnxruntime: str | None = Field(None, description="onnxruntime version.")
    tensorrt: str | None = Field(None, description="TensorRT version.")
    cuda: str | None = Field(None, description="CUDA runtime version.")
    cudnn: str | None = Field(None, description="cuDNN version.")
    l4t: str | None = Field(None, description="Jetson Linux (L4T) release.")


class DeviceInfo(_Record):
    cpu: str | None = Field(None, description="CPU model name.")
    instruction_sets: list[str] = Field(default_factory=list, description="Inference-relevant CPU features.")
    gpu_name: str | None = Field(None, description="GPU name (TensorRT targets).")
    compute_capability: str | None = Field(None, description="GPU compute capability (TensorRT targets).")


class BuilderInfo(_Record):
    workspace_mb: int | None = Field(None, description="TensorRT builder workspace limit.")
    dla_core: int | None = Field(None, description="DLA core the engine runs on (Jetson), or null for the GPU.")
    timing_cache: str | None = Field(None, description="TensorRT timing cache file used.")
    optimization_level: str | None = Field(None, description="onnxruntime graph optimisation at build time.")
    int8_mode: str | None = Field(None, description="qdq (explicit quantization) or legacy-cache (implicit).")
    per_channel: bool | None = Field(None, description="int8 weights quantized per output channel.")
    strongly_typed: bool | None = Field(None, description="TensorRT network built strongly typed.")
    builder_flags: list[str] = Field(default_factory=list, description="TensorRT builder flags set.")


class AccuracyInfo(_Record):
    metric: str = Field(description="top-1 (classifiers) or mAP@0.5 (detectors).")
    reference: float = Field(description="Metric of the fp32 source model on the validation data.")
    value: float = Field(description="Metric of this engine on the same data.")
    drop: float = Field(description="Points lost against the reference (negative: better).")
    max_drop: float = Field(description="Largest drop the gate allowed.")
    samples: int = Field(description="Validation samples used.")
    data_sha256: str = Field(description="Fingerprint of the validation data.")


class CandidateMeasurement(_Record):
    precision: str = Field(description="Candidate precision.")
    fps: float | None = Field(None, description="Inferences per second measured here (median of rounds).")
    accuracy: float | None = Field(None, description="Metric on the validation data, when measured.")
    drop: float | None = Field(None, description="Points lost against fp32, when measured.")
    passed: bool = Field(description="Whether the candidate could be chosen (built and passed the gate).")
    note: str | None = Field(None, description="Why a candidate was skipped or failed.")


class Measurements(_Record):
    method: str = Field(description="How speed was measured.")
    rounds: int = Field(description="Interleaved measurement rounds.")
    candidates: list[CandidateMeasurement] = Field(description="Every candidate considered.")
    chosen: str = Field(description="The precision chosen: the fastest candidate that passed.")


class Manifest(_Record):
    """``manifest.json``: everything that decides whether an engine may be reused, and its provenance."""

    format_version: int = Field(FORMAT_VERSION, description="Manifest format version.")
    lepton_edge_version: str = Field(description="lepton-edge version that built the artifact.")
    created_at: str = Field(description="Build time, ISO 8601 UTC.")
    source_model: SourceModel = Field(description="The ONNX model given to the build.")
    target: str = Field(description="onnxruntime-cpu, onnxruntime-<provider> or tensorrt.")
    precision: BuildPrecision = Field(description="Engine precision.")
    engine: EngineInfo = Field(description="The engine file.")
    calibration: CalibrationInfo | None = Field(None, description="Calibration used for int8, if any.")
    runtime: RuntimeInfo = Field(description="Runtime versions present at build time.")
    device: DeviceInfo = Field(description="The machine the artifact was built on.")
    profiles: list[dict[str, list[list[int]]]] = Field(
        default_factory=list, description="TensorRT optimization profiles: input -> [min, opt, max] shapes.")
    builder: BuilderInfo = Field(description="Builder options.")
    accuracy: AccuracyInfo | None = Field(None, description="Accuracy gate result, when validation data was given.")
    measurements: Measurements | None = Field(None, description="precision auto: every candidate measured.")
    fingerprint: str = Field(description="sha256 over the fields that decide reuse (see reuse_fields).")


def _tensor_info(spec: TensorSpec) -> TensorInfo:
    return TensorInfo(name=spec.name, shape=list(spec.shape), dtype=str(spec.dtype))


def _major_minor(version: Any) -> Any:
    if not isinstance(version, str):
        return version
    return ".".join(version.split(".")[:2])


def _int8_isa(sets: Any) -> Any:
    return sorted(set(sets or ()) & set(INT8_INSTRUCTION_SETS))


def reuse_fields(target: str, precision: str) -> list[tuple[str, Callable[[Any], Any]]]:
    """Environment fields (dotted paths) that must match for an engine to be reused, with their normaliser.

    TensorRT engines are tied to the TensorRT, CUDA and cuDNN versions and to the GPU. ONNX engines
    run under any onnxruntime, but a new minor version changes kernels and fusions, so it is checked
    at that level; an int8 ONNX engine is also tied to the CPU's int8 dot-product instructions.
    """
    if target == "tensorrt":
        same = lambda v: v  # noqa: E731
        return [(f, same) for f in ("runtime.tensorrt", "runtime.cuda", "runtime.cudnn", "runtime.l4t",
                                    "device.gpu_name", "device.compute_capability")]
    fields: list[tuple[str, Callable[[Any], Any]]] = [("runtime.onnxruntime", _major_minor)]
    if precision == "int8":
        fields.append(("device.instruction_sets", _int8_isa))
    return fields


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def compute_fingerprint(manifest: Manifest) -> str:
    """sha256 over the reuse-deciding fields: model, target, precision, calibration, environment, shapes,
    builder options."""
    env = {"runtime": manifest.runtime.model_dump(), "device": manifest.device.model_dump()}
    payload = {
        "format_version": manifest.format_version,
        "model_sha256": manifest.source_model.sha256,
        "target": manifest.target,
        "precision": manifest.precision,
        "calibration_sha256": manifest.calibration.table_sha256 if manifest.calibration else None,
        "environment": {path: norm(_lookup(env, path)) for path, norm in
                        reuse_fields(manifest.target, manifest.precision)},
        "profiles": manifest.profiles,
        "builder": manifest.builder.model_dump(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of the artifact directory ``path``; ModelError when missing or invalid."""
    path = Path(path)
    file = path / MANIFEST_NAME
    if not path.is_dir():
        raise ModelError(f"{path}: artifact directory not found")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: not an artifact directory (no {MANIFEST_NAME}); build one with "
                         "`lepton-edge build --model MODEL.onnx --out DIR`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{file}: unreadable manifest ({e}); rebuild the artifact") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ModelError(f"{file}: manifest format {version} was written by a newer lepton-edge (this one reads "
                         f"format {FORMAT_VERSION}); upgrade lepton-edge or rebuild the artifact here")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'top level'}: {err['msg']}" for err in e.errors())
        raise ModelError(f"{file}: invalid manifest ({problems}); rebuild the artifact") from None
    name = manifest.engine.file
    if Path(name).name != name or name in ("", ".", ".."):
        raise ModelError(f"{file}: engine.file {name!r} must be a file name inside the artifact directory; "
                         "refusing it as a path traversal")
    return manifest


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically (temp file, fsync, rename, fsync the folder)."""
    atomic_write(directory / MANIFEST_NAME, (manifest.model_dump_json(indent=2) + "\n").encode())


# ----------------------------------------------------------------------------------------------
# Targets and environment
# ----------------------------------------------------------------------------------------------

def _provider_target(provider: str) -> str:
    return "onnxruntime-" + provider.removesuffix("ExecutionProvider").lower()


def target_for_backend(config: BackendConfig) -> str:
    """The build target a backend config runs: ``tensorrt`` or ``onnxruntime-<first available provider>``."""
    if isinstance(config, TensorRTBackendConfig):
        return "tensorrt"
    import onnxruntime as ort

    available = ort.get_available_providers()
    for provider in config.providers:
        if provider in available:
            return _provider_target(provider)
    return "onnxruntime-cpu"


def _check_target(target: str) -> None:
    if target == "tensorrt" or (target.startswith("onnxruntime-") and len(target) > len("onnxruntime-")):
        return
    raise ConfigError(f"unknown target {target!r}; use onnxruntime-cpu, onnxruntime-<provider> (e.g. "
                      "onnxruntime-cuda) or tensorrt")


def backend_config_for(target: str, **overrides: Any) -> BackendConfig:
    """A default backend config that runs engines of ``target``."""
    if target == "tensorrt":
        return TensorRTBackendConfig(type="tensorrt", **overrides)
    import onnxruntime as ort

    wanted = [p for p in ort.get_all_providers() if _provider_target(p) == target]
    providers = wanted + (["CPUExecutionProvider"] if "CPUExecutionProvider" not in wanted else [])
    return OnnxRuntimeBackendConfig(providers=providers, **overrides)


def current_environment(target: str = "onnxruntime-cpu") -> dict[str, Any]:
    """What this machine is: ``{"runtime": {...}, "device": {...}}`` as recorded in manifests.

    TensorRT, CUDA and the GPU are probed only for the ``tensorrt`` target (never raises).
    """
    from lepton_edge.bench import machine_info

    info = machine_info()
    runtime = RuntimeInfo(onnxruntime=info.get("onnxruntime")).model_dump()
    device = DeviceInfo(cpu=info.get("cpu"), instruction_sets=list(info.get("instruction_sets", []))).model_dump()
    if target == "tensorrt":
        from lepton_edge.backends.tensorrt import tensorrt_environment

        trt = tensorrt_environment()
        runtime.update(tensorrt=trt.get("tensorrt"), cuda=trt.get("cuda_runtime"), cudnn=trt.get("cudnn"),
                       l4t=trt.get("l4t"))
        device.update(gpu_name=trt.get("gpu"), compute_capability=trt.get("compute_capability"))
    return {"runtime": runtime, "device": device}


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


def verify_artifact(path: str | Path, *, target_env: dict[str, Any] | None = None) -> list[str]:
    """Problems that forbid using the artifact here; ``[]`` means it is good.

    Checks the manifest, the engine file (present, same size, same sha256), the fingerprint (the
    manifest was not edited) and the reuse-deciding environment fields against ``target_env``
    (default: :func:`current_environment` of the artifact's target). Each problem names its field:
    ``"runtime.tensorrt: built with 10.3.0, running 10.7.0"``.
    """
    from lepton_edge.onnx_tools import sha256_file

    path = Path(path)
    try:
        manifest = read_manifest(path)
    except ModelError as e:
        return [f"manifest: {e}"]
    problems: list[str] = []
    engine = path / manifest.engine.file
    if not engine.is_file():
        problems.append(f"engine.file: {manifest.engine.file} is missing from {path}")
    else:
        size = engine.stat().st_size
        if size != manifest.engine.size:
            problems.append(f"engine.size: built {manifest.engine.size} bytes, the file has {size} "
                            "(truncated or replaced)")
        elif sha256_file(engine) != manifest.engine.sha256:
            problems.append("engine.sha256: the engine file changed since it was built (corrupt or replaced)")
    if compute_fingerprint(manifest) != manifest.fingerprint:
        problems.append("fingerprint: manifest.json was edited after the build (recorded fingerprint does not "
                        "match its fields)")
    env = target_env if target_env is not None else current_environment(manifest.target)
    built = {"runtime": manifest.runtime.model_dump(), "device": manifest.device.model_dump()}
    for field, norm in reuse_fields(manifest.target, manifest.precision):
        then, now = _lookup(built, field), _lookup(env, field)
        if norm(then) != norm(now):
            if isinstance(then, list) or isinstance(now, list):  # show only the elements that matter
                then, now = norm(then), norm(now)
            problems.append(f"{field}: built with {_show(then)}, running {_show(now)}")
    return problems


def _rebuild_hint(path: Path, manifest: Manifest | None) -> str:
    if manifest is None:
        return "rebuild it with `lepton-edge build --model MODEL.onnx --out DIR`"
    return (f"rebuild it on this machine: `lepton-edge build --model {manifest.source_model.name} "
            f"--target {manifest.target} --precision {manifest.precision} --out {path}`, or set model.path "
            "to the ONNX model with model.precision so the engine cache rebuilds it when needed")


def open_artifact(path: str | Path, backend_config: BackendConfig | None = None, in_pipeline: bool = True) -> Backend:
    """Verify the artifact at ``path`` and return its engine loaded in a backend.

    Raises ModelError listing every mismatch (see :func:`verify_artifact`) and how to rebuild, and
    ConfigError when ``backend_config`` cannot run the artifact's target. The source model's metadata
    (task, labels, preprocessing) is given to the backend, plus ``lepton.artifact`` (fingerprint, target,
    precision).
    """
    from lepton_edge.backends import create_backend

    path = Path(path)
    manifest = read_manifest(path)
    backend_config = backend_config or backend_config_for(manifest.target)
    kind = "tensorrt" if manifest.target == "tensorrt" else "onnxruntime"
    if backend_config.type != kind:
        raise ConfigError(f"{path}: the artifact was built for {manifest.target}, but backend.type is "
                          f"{backend_config.type!r}; set backend.type: {kind} or build for "
                          f"target {target_for_backend(backend_config)}")
    problems = verify_artifact(path)
    if problems:
        listed = "\n  - ".join(problems)
        raise ModelError(f"{path}: this artifact cannot be used on this machine:\n  - {listed}\n"
                         f"{_rebuild_hint(path, manifest)}")
    backend = create_backend(path / manifest.engine.file, backend_config, in_pipeline=in_pipeline)
    backend.load()
    identity = {"fingerprint": manifest.fingerprint, "target": manifest.target, "precision": manifest.precision,
                "source_sha256": manifest.source_model.sha256}
    backend.metadata = {**manifest.source_model.metadata, **backend.metadata,
                        ARTIFACT_METADATA_KEY: json.dumps(identity)}
    return backend


def is_artifact(path: str | Path) -> bool:
    """True when ``path`` is a directory with a manifest (valid or not)."""
    return (Path(path) / MANIFEST_NAME).is_file()


# ----------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------

class TrtOptions(BaseModel):
    """TensorRT builder options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workspace_mb: int = Field(1024, gt=0, description="Builder workspace limit in MiB.")
    dla_core: int | None = Field(None, ge=0, description="Run on this DLA core (Jetson), GPU fallback on.")
    timing_cache: Path | None = Field(None, description="Timing cache file, read if present and updated.")
    profiles: list[dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]] | None = Field(
        None, description="Optimization profiles: input -> (min, opt, max) shapes. Default: dynamic dims 1.")
    int8_mode: Literal["qdq", "legacy-cache"] = Field(
        "qdq", description="qdq: explicit quantization from the QDQ model; legacy-cache: implicit "
        "calibration replaying a TensorRT calibration cache written from the table (TensorRT <= 10).")


def _reporter(progress: ProgressArg, model: Path) -> Callable[[str], None]:
    if callable(progress):
        return progress
    if progress:
        return lambda stage: log.info("%s: %s", model.name, stage)
    return lambda stage: None


def _default_profiles(inputs: list[TensorSpec]) -> list[dict[str, tuple[tuple[int, ...], ...]]]:
    """One profile with every dynamic dimension at 1: the runtime feeds one frame at a time."""
    if all(spec.is_static for spec in inputs):
        return []
    profile = {}
    for spec in inputs:
        if not spec.is_static:
            shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
            profile[spec.name] = (shape, shape, shape)
    return [profile]


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_artifact(out_dir):
        raise ConfigError(f"{out_dir}: exists and is not an artifact directory (no {MANIFEST_NAME}); refusing "
                          "to replace it. Choose another --out or remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A fresh directory beside ``out_dir``, removed when the block fails."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the artifact is read by the service user too
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(staged: Path, out_dir: Path) -> None:
    """Sync ``staged`` and rename it to ``out_dir``, replacing a previous artifact there."""
    fsync_tree(staged)
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.rename(out_dir, old / "artifact")
        try:
            os.rename(staged, out_dir)
        except BaseException:
            os.rename(old / "artifact", out_dir)
            old.rmdir()
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staged, out_dir)
    fsync_path(out_dir.parent)


def _load_calibration(calibration: Any, info: Any) -> Any:
    """A CalibrationTable from a table object or file, checked against the model."""
    from lepton_edge.calibration import load_table

    if isinstance(calibration, str | Path):
        return load_table(Path(calibration), model_sha256=info.sha256)
    if getattr(calibration, "model_sha256", None) != info.sha256:
        raise ConfigError(
            f"model_sha256: the calibration table was made for another model ({calibration.model_name}, sha256 "
            f"{str(calibration.model_sha256)[:16]}...), not for {info.path} (sha256 {info.sha256[:16]}...); the model "
            "changed since it was calibrated. Calibrate this model again: lepton-edge calibrate --model MODEL "
            "--data DATA --out TABLE"
        )
    return calibration


def table_sha256(table: Any) -> str:
    """Fingerprint of a calibration table: sha256 of its canonical JSON."""
    data = table.model_dump(mode="json")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _calibrate(model: Path, info: Any, calibration: Any, calibration_data: str | None, options: dict[str, Any],
               preprocess: PreprocessConfig | None, report: Callable[[str], None], show_bar: bool) -> Any:
    if calibration is not None:
        return _load_calibration(calibration, info)
    if not calibration_data:
        raise ModelError(
            f"{model}: int8 needs calibration: give a calibration table (--calibration, model.calibration, "
            "from `lepton-edge calibrate`) or calibration data (--calibration-data, model.calibration_data: "
            "an image folder, a video or a .npy/.npz recording)"
        )
    from lepton_edge.calibration import calibrate

    report(f"calibrating from {calibration_data}")
    kwargs = {k: v for k, v in options.items() if v is not None}
    return calibrate(model, calibration_data, preprocess=preprocess, progress=show_bar, **kwargs)


def _copy_onnx(model: Path, info: Any, dest: Path) -> None:
    """The fp32 engine for onnxruntime: the model itself, with external weights folded in."""
    if not info.external_data:
        shutil.copyfile(model, dest)
        return
    import onnx

    proto = onnx.load(str(model), load_external_data=True)
    try:
        onnx.save(proto, str(dest))
    except ValueError as e:  # protobuf's 2 GiB limit
        raise ModelError(f"{model}: cannot fold its external data into one file ({e}); models over 2 GiB "
                         "are not supported for onnxruntime artifacts") from None


def _trt_version_code(version: str) -> int:
    """TensorRT's calibration-cache version number: 8.6.1 -> 8601, 10.3.0 -> 100300."""
    import re

    major, minor, patch = ([int(p) for p in re.findall(r"\d+", version)] + [0, 0, 0])[:3]
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch


def build_artifact(
    model: str | Path,
    out_dir: str | Path,
    *,
    target: str = "onnxruntime-cpu",
    precision: BuildPrecision = "fp32",
    calibration: Any = None,
    calibration_data: str | None = None,
    calibration_options: dict[str, Any] | None = None,
    validation_data: str | Path | None = None,
    validation_samples: int | None = None,
    max_accuracy_drop: float = 1.0,
    preprocess: PreprocessConfig | None = None,
    trt_options: TrtOptions | None = None,
    progress: ProgressArg = True,
) -> Manifest:
    """Build the engine of ``model`` for ``target`` at ``precision`` into the artifact directory ``out_dir``.

    int8 needs ``calibration`` (a CalibrationTable or a table file made for this model) or
    ``calibration_data`` to calibrate from (``calibration_options``: method, samples, seed, percentile),
    unless the model is already quantized (Q/DQ). With ``validation_data`` the accuracy gate runs: the
    build fails, leaving no artifact, when the engine loses more than ``max_accuracy_drop`` points against
    the fp32 model. fp16 is refused for onnxruntime targets (CPU kernels run fp16 slower than fp32).
    Writing is atomic; a failed build leaves a previous artifact at ``out_dir`` untouched.
    """
    from lepton_edge.onnx_tools import inspect_onnx, sha256_file, unsupported_ops

    model, out_dir = Path(model), Path(out_dir)
    _check_target(target)
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"precision must be fp32, fp16 or int8 for a build, got {precision!r}")
    if precision == "fp16" and target != "tensorrt":
        raise ConfigError(
            f"{model}: fp16 is not built for {target}: onnxruntime's CPU kernels compute fp16 models by "
            "converting to fp32, so they run slower than the fp32 model. Use fp32 or int8 on onnxruntime, "
            "or target tensorrt for fp16"
        )
    trt_options = trt_options or TrtOptions()
    report = _reporter(progress, model)
    info = inspect_onnx(model)
    if target == "tensorrt":
        from lepton_edge.backends.tensorrt import import_tensorrt

        import_tensorrt()  # BackendUnavailable, saying what to install, before any work
    else:
        missing = unsupported_ops(info, "onnxruntime-cpu")
        if missing:
            raise ModelError(f"{model}: onnxruntime cannot run these operators: {', '.join(missing)}; "
                             "re-export the model without them (another opset, or simpler layers)")
    _prepare_out_dir(out_dir)
    env = current_environment(target)

    table = None
    if precision == "int8" and not info.has_qdq:
        table = _calibrate(model, info, calibration, calibration_data, calibration_options or {}, preprocess,
                           report, progress is True)
        if getattr(table, "samples", 1) <= 0:
            raise ModelError(f"{model}: the calibration set is empty (0 samples); give calibration data with "
                             "images the model sees in production")
    elif precision == "int8":
        report("model is already quantized (Q/DQ): using its own scales")

    builder = BuilderInfo()
    profiles: list[dict[str, list[list[int]]]] = []
    with staging_dir(out_dir) as staged:
        if target == "tensorrt":
            engine_file = TRT_ENGINE
            builder, profiles = _build_tensorrt(model, info, staged, precision, table, trt_options, env, report)
        else:
            engine_file = ONNX_ENGINE
            builder.optimization_level = "all"
            if table is not None:
                from lepton_edge.calibration import quantize_qdq

                report("quantizing (QDQ, per channel)")
                quantize_qdq(model, table, staged / engine_file, per_channel=True)
                builder.int8_mode, builder.per_channel = "qdq", True
            else:
                _copy_onnx(model, info, staged / engine_file)
        engine_path = staged / engine_file
        source = SourceModel(name=model.name, sha256=info.sha256, opset=info.opset,
                             inputs=[_tensor_info(s) for s in info.inputs],
                             outputs=[_tensor_info(s) for s in info.outputs], metadata=dict(info.metadata))
        calibration_info = None
        if table is not None:
            calibration_info = CalibrationInfo(table_sha256=table_sha256(table), method=str(table.method),
                                               samples=int(table.samples),
                                               dataset_sha256=getattr(table, "dataset_sha256", None))
        manifest = Manifest(
            lepton_edge_version=__version__,
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            source_model=source, target=target, precision=precision,
            engine=EngineInfo(file=engine_file, sha256=sha256_file(engine_path), size=engine_path.stat().st_size),
            calibration=calibration_info, runtime=RuntimeInfo(**env["runtime"]), device=DeviceInfo(**env["device"]),
            profiles=profiles, builder=builder, fingerprint="",
        )
        if validation_data is not None:
            report(f"accuracy gate on {validation_data}")
            manifest.accuracy = run_gate(model, engine_path, manifest, validation_data, validation_samples,
                                         max_accuracy_drop, preprocess)
        manifest.fingerprint = compute_fingerprint(manifest)
        write_manifest(staged, manifest)
        publish(staged, out_dir)
    report(f"wrote {out_dir} ({precision}, {target}, fingerprint {manifest.fingerprint[:12]})")
    return manifest


def run_gate(model: Path, engine_path: Path, manifest: Manifest, data: str | Path, samples: int | None,
             max_drop: float, preprocess: PreprocessConfig | None) -> AccuracyInfo:
    """Compare the staged engine with the fp32 model on ``data``; ModelError when it drops too much."""
    from lepton_edge.backends import create_backend
    from lepton_edge.compare import accuracy_gate, compare

    backend = create_backend(engine_path, backend_config_for(manifest.target, warmup_runs=0))
    backend.load()
    try:
        backend.metadata = {**manifest.source_model.metadata, **backend.metadata}
        report = compare(model, backend, Path(data), samples=samples, preprocess=preprocess,
                         candidate_name=manifest.precision)
    finally:
        backend.close()
    accuracy_gate(report, max_drop)
    return AccuracyInfo(metric=report.metric, reference=report.reference_value, value=report.candidate_value,
                        drop=report.drop, max_drop=max_drop, samples=report.samples, data_sha256=report.data_sha256)


def _build_tensorrt(model: Path, info: Any, staged: Path, precision: str, table: Any, options: TrtOptions,
                    env: dict[str, Any], report: Callable[[str], None]) -> tuple[BuilderInfo, list]:
    from lepton_edge.backends.tensorrt import build_engine

    source = model
    cache = None
    int8_mode = None
    if table is not None and options.int8_mode == "qdq":
        from lepton_edge.calibration import quantize_qdq

        report("quantizing (QDQ) for explicit int8")
        source = quantize_qdq(model, table, staged / "qdq.onnx", per_channel=True)
        int8_mode = "qdq"
    elif table is not None:
        from lepton_edge.calibration import write_tensorrt_cache

        version = env["runtime"]["tensorrt"] or "8.6.1"
        cache = staged / "calibration.cache"
        # The builder replays caches through an EntropyCalibration2 calibrator, and TensorRT ignores a cache
        # whose header names another algorithm; the ranges are the table's whatever its method.
        carrier = table.model_copy(update={"method": "entropy"})
        write_tensorrt_cache(carrier, cache, trt_version=_trt_version_code(version))
        int8_mode = "legacy-cache"
    elif precision == "int8":
        int8_mode = "qdq"
    profiles = options.profiles if options.profiles is not None else _default_profiles(info.inputs)
    try:
        plan, facts = build_engine(source, precision=precision, calibration_cache=cache,
                                   timing_cache=options.timing_cache, workspace_mb=options.workspace_mb,
                                   dla_core=options.dla_core, profiles=profiles, progress=report)
    finally:
        for scratch in (staged / "qdq.onnx", staged / "calibration.cache"):
            with contextlib.suppress(FileNotFoundError):
                scratch.unlink()
    (staged / TRT_ENGINE).write_bytes(plan)
    builder = BuilderInfo(
        workspace_mb=options.workspace_mb, dla_core=options.dla_core,
        timing_cache=str(options.timing_cache) if options.timing_cache else None,
        int8_mode=int8_mode, per_channel=True if int8_mode == "qdq" and table is not None else None,
        strongly_typed=facts.get("strongly_typed"), builder_flags=list(facts.get("builder_flags", [])),
    )
    recorded = [{name: [list(s) for s in shapes] for name, shapes in p.items()} for p in profiles]
    return builder, recorded


def describe_artifact(path: str | Path, *, target_env: dict[str, Any] | None = None) -> dict[str, Any]:
    """Manifest summary and the mismatches against this machine, for ``lepton-edge inspect``."""
    path = Path(path)
    manifest = read_manifest(path)
    return {
        "artifact": str(path),
        "target": manifest.target,
        "precision": manifest.precision,
        "fingerprint": manifest.fingerprint,
        "created_at": manifest.created_at,
        "source_model": manifest.source_model.model_dump(exclude={"metadata"}),
        "engine": manifest.engine.model_dump(),
        "calibration": manifest.calibration.model_dump() if manifest.calibration else None,
        "accuracy": manifest.accuracy.model_dump() if manifest.accuracy else None,
        "measurements": manifest.measurements.model_dump() if manifest.measurements else None,
        "runtime": manifest.runtime.model_dump(),
        "device": manifest.device.model_dump(),
        "builder": manifest.builder.model_dump(),
        "mismatches": verify_artifact(path, target_env=target_env),
    }


__all__ = [
    "Manifest",
    "TrtOptions",
    "backend_config_for",
    "build_artifact",
    "current_environment",
    "open_artifact",
    "read_manifest",
    "target_for_backend",
    "verify_artifact",
]
