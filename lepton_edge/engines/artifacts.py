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

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lepton_edge.config.pipeline import BackendConfig, OnnxRuntimeBackendConfig, TensorRTBackendConfig
from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.core.fileio import atomic_write, sha256_file
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.backends import create_backend
from lepton_edge.runtime.backends.base import Backend
from lepton_edge.runtime.input_size import ARTIFACT_PREPROCESS_KEY
from lepton_edge.runtime.platform import accelerator_facts, cpu_facts, onnxruntime_version

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
    cuda: str | None = Field(None, description="CUDA version TensorRT runs with (the CUDA runtime it loads, else the "
                             "installed toolkit), major.minor; not the CUDA Python package's.")
    cudnn: str | None = Field(None, description="cuDNN version.")
    l4t: str | None = Field(None, description="Jetson Linux (L4T) release.")


class DeviceInfo(_Record):
    cpu: str | None = Field(None, description="CPU model name.")
    instruction_sets: list[str] = Field(default_factory=list, description="Inference-relevant CPU features.")
    gpu_name: str | None = Field(None, description="GPU name (TensorRT targets).")
    compute_capability: str | None = Field(None, description="GPU compute capability (TensorRT targets).")
    module: str | None = Field(None, description="Jetson module from the device tree (e.g. NVIDIA Jetson AGX Orin "
                               "Developer Kit); every Orin reports GPU Orin, 8.7. TensorRT targets.")
    multiprocessors: int | None = Field(None, description="GPU streaming multiprocessors (TensorRT targets).")
    dla_cores: int | None = Field(None, description="DLA cores TensorRT can use (TensorRT targets).")
    device_index: int | None = Field(None, description="CUDA device index the engine was built on (TensorRT).")


class BuilderInfo(_Record):
    workspace_mb: int | None = Field(None, description="TensorRT builder workspace limit.")
    dla_core: int | None = Field(None, description="DLA core the engine runs on (Jetson), or null for the GPU.")
    timing_cache: str | None = Field(None, description="TensorRT timing cache file used.")
    optimization_level: str | None = Field(None, description="onnxruntime graph optimisation at build time.")
    int8_mode: str | None = Field(None, description="qdq (explicit quantization) or legacy-cache (implicit).")
    per_channel: bool | None = Field(None, description="int8 weights quantized per output channel.")
    strongly_typed: bool | None = Field(None, description="TensorRT network built strongly typed.")
    builder_flags: list[str] = Field(default_factory=list, description="TensorRT builder flags set.")
    batch: int | str | None = Field(None, description="The batch axis the build gave the image input (dynamic or a "
                                    "fixed N); null: as the model was exported.")


class AccuracyInfo(_Record):
    metric: str = Field(description="top-1 (classifiers) or mAP@0.5 (detectors).")
    reference: float = Field(description="Metric of the fp32 source model on the validation data.")
    value: float = Field(description="Metric of this engine on the same data.")
    drop: float = Field(description="Points lost against the reference (negative: better).")
    max_drop: float = Field(description="Largest drop the gate allowed.")
    samples: int = Field(description="Validation samples used.")
    data_sha256: str = Field(description="Fingerprint of the validation data.")


class FidelityInfo(_Record):
    """The label-free fidelity gate: the engine against the fp32 model's own outputs (fractions 0..1)."""

    task: str = Field(description="detect, classify or raw: how fidelity was measured.")
    metric: str = Field(description="mAP@0.5 vs reference, top-1 agreement or thresholded agreement.")
    value: float | None = Field(description="The metric; null when undefined (no reference detections).")
    boxes_kept: float | None = Field(None, description="Detectors: fraction of the reference's boxes kept.")
    reference_boxes: int | None = Field(None, description="Detectors: reference boxes the fractions count.")
    max_rel_error: float = Field(description="Largest relative error of any output.")
    required: dict[str, float] = Field(description="The minimums the gate applied, by name.")
    samples: int = Field(description="Samples compared.")
    data: str = Field(description="Which data: held-out calibration items, validation or calibration data.")
    held_out: bool = Field(description="Whether the data was unseen by calibration.")
    data_sha256: str = Field(description="Fingerprint of the data compared.")


class PreprocessRecord(_Record):
    """The preprocessing and input size an engine was calibrated and built for; the runtime uses it for every field
    its own config leaves unset (config > this record > the model's metadata > its static shape)."""

    input: str = Field(description="Name of the image input it applies to.")
    size: tuple[int, int] = Field(description="[width, height] the engine was built for (TensorRT profiles' opt).")
    size_source: str = Field(description="Where the size came from: preprocess.size (--size, --config), the "
                             "calibration table, the model's metadata (imgsz, lepton.preprocess) or its static shape.")
    calibrated_size: tuple[int, int] | None = Field(
        None, description="int8: [width, height] the calibration table's ranges were measured at.")
    config: dict[str, Any] = Field(description="The effective preprocessing (PreprocessConfig fields, size included) "
                                   "used for calibration, the gates and the record.")


class FloatLayer(_Record):
    """A layer mixed precision kept in float."""

    name: str = Field(description="The layer, named after its first node.")
    nodes: list[str] = Field(description="Its ONNX nodes: no Q/DQ (TensorRT legacy-cache: fp32 precision constraints).")
    error: float = Field(description="Output error of the model with only this layer int8 (its sensitivity).")


class MixedPrecisionInfo(_Record):
    """int8 with its most sensitive layers in float, because the all-int8 engine failed the fidelity gate."""

    method: str = Field(description="How layers were ranked and how many were chosen.")
    layers: int = Field(description="Quantized layers ranked.")
    limit: int = Field(description="Most layers the build could keep in float.")
    kept: list[FloatLayer] = Field(description="Layers kept in float, most sensitive first.")
    int8_error: float = Field(description="Output error of the all-int8 model on the ranking samples.")
    samples: int = Field(description="Calibration items the ranking ran on.")
    before: dict[str, float] = Field(description="The all-int8 engine's fidelity measures.")
    after: dict[str, float] = Field(description="The fidelity measures with the kept layers in float.")
    trials: int = Field(description="Gate runs of the search.")
    seconds: float = Field(description="Time spent ranking and searching.")


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
    preprocess: PreprocessRecord | None = Field(
        None, description="The preprocessing and input size the engine was calibrated and built for (image models); "
        "the runtime applies it where its config sets nothing.")
    builder: BuilderInfo = Field(description="Builder options.")
    accuracy: AccuracyInfo | None = Field(None, description="Accuracy gate result, when validation data was given.")
    fidelity: FidelityInfo | None = Field(None, description="int8: the label-free fidelity gate result.")
    mixed_precision: MixedPrecisionInfo | None = Field(
        None, description="int8: layers kept in float to pass the fidelity gate, and why.")
    measurements: Measurements | None = Field(None, description="precision auto: every candidate measured.")
    fingerprint: str = Field(description="sha256 over the fields that decide reuse (see reuse_fields).")


def tensor_info(spec: TensorSpec) -> TensorInfo:
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
                                    "device.gpu_name", "device.compute_capability", *DEVICE_IDENTITY)]
    fields: list[tuple[str, Callable[[Any], Any]]] = [("runtime.onnxruntime", _major_minor)]
    if precision == "int8":
        fields.append(("device.instruction_sets", _int8_isa))
    return fields


DEVICE_IDENTITY = ("device.module", "device.multiprocessors", "device.dla_cores")
"""What tells two GPUs of one name and compute capability apart (an AGX Orin from an Orin Nano). The module is
always compared (an engine recorded without one is refused on a Jetson); the SM and DLA core counts only when
the manifest recorded them. Left out of the fingerprint while unrecorded, so older manifests keep theirs."""


def _unrecorded(path: str, built: Any) -> bool:
    return built is None and path in DEVICE_IDENTITY[1:]


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
                        reuse_fields(manifest.target, manifest.precision)
                        if path not in DEVICE_IDENTITY or _lookup(env, path) is not None},
        "profiles": manifest.profiles,
        "builder": manifest.builder.model_dump(exclude={"batch"} if manifest.builder.batch is None else None),
    }  # a batch left as exported is absent, as in manifests written before the field: same fingerprint
    if manifest.preprocess is not None:  # absent from manifests written before the record: same fingerprint
        payload["preprocess"] = manifest.preprocess.model_dump(mode="json")
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


def check_target(target: str) -> None:
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


def current_environment(target: str = "onnxruntime-cpu", device_index: int = 0) -> dict[str, Any]:
    """What this machine is: ``{"runtime": {...}, "device": {...}}`` as recorded in manifests.

    TensorRT, CUDA and the GPU (CUDA device ``device_index``) are probed only for the ``tensorrt`` target
    (never raises).
    """
    cpu = cpu_facts()
    runtime = RuntimeInfo(onnxruntime=onnxruntime_version()).model_dump()
    device = DeviceInfo(cpu=cpu.model, instruction_sets=list(cpu.instruction_sets)).model_dump()
    if target == "tensorrt":
        trt = accelerator_facts(device_index)
        runtime.update(tensorrt=trt.get("tensorrt"), cuda=trt.get("cuda"), cudnn=trt.get("cudnn"),
                       l4t=trt.get("l4t"))
        device.update(gpu_name=trt.get("gpu"), compute_capability=trt.get("compute_capability"),
                      module=trt.get("module"), multiprocessors=trt.get("multiprocessors"),
                      dla_cores=trt.get("dla_cores"), device_index=trt.get("device_index"))
    return {"runtime": runtime, "device": device}


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


def verify_artifact(path: str | Path, *, target_env: dict[str, Any] | None = None,
                    device_index: int = 0) -> list[str]:
    """Problems that forbid using the artifact here; ``[]`` means it is good.

    Checks the manifest, the engine file (present, same size, same sha256), the fingerprint (the
    manifest was not edited) and the reuse-deciding environment fields against ``target_env``
    (default: :func:`current_environment` of the artifact's target). Each problem names its field:
    ``"runtime.tensorrt: built with 10.3.0, running 10.7.0"``.
    """

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
    env = target_env if target_env is not None else current_environment(manifest.target, device_index)
    built = {"runtime": manifest.runtime.model_dump(), "device": manifest.device.model_dump()}
    for field, norm in reuse_fields(manifest.target, manifest.precision):
        then, now = _lookup(built, field), _lookup(env, field)
        if _unrecorded(field, then):
            continue
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


def _on_its_dla_core(path: Path, manifest: Manifest, config: BackendConfig) -> BackendConfig:
    """A TensorRT engine built for a DLA core runs on that core: TensorRT must be told before deserializing."""
    core = manifest.builder.dla_core
    if not isinstance(config, TensorRTBackendConfig) or core is None:
        return config
    if config.dla_core not in (None, core):
        raise ConfigError(f"{path}: the engine was built for DLA core {core}, but backend.dla_core is "
                          f"{config.dla_core}; leave backend.dla_core unset or rebuild with --dla-core "
                          f"{config.dla_core}")
    return config.model_copy(update={"dla_core": core})


def open_artifact(path: str | Path, backend_config: BackendConfig | None = None, in_pipeline: bool = True) -> Backend:
    """Verify the artifact at ``path`` and return its engine loaded in a backend.

    Raises ModelError listing every mismatch (see :func:`verify_artifact`) and how to rebuild, and
    ConfigError when ``backend_config`` cannot run the artifact's target. The source model's metadata
    (task, labels, preprocessing) is given to the backend, plus ``lepton.artifact`` (fingerprint, target,
    precision).
    """

    path = Path(path)
    manifest = read_manifest(path)
    backend_config = backend_config or backend_config_for(manifest.target)
    kind = "tensorrt" if manifest.target == "tensorrt" else "onnxruntime"
    if backend_config.type != kind:
        raise ConfigError(f"{path}: the artifact was built for {manifest.target}, but backend.type is "
                          f"{backend_config.type!r}; set backend.type: {kind} or build for "
                          f"target {target_for_backend(backend_config)}")
    backend_config = _on_its_dla_core(path, manifest, backend_config)
    problems = verify_artifact(path, device_index=getattr(backend_config, "device", 0))
    if problems:
        listed = "\n  - ".join(problems)
        raise ModelError(f"{path}: this artifact cannot be used on this machine:\n  - {listed}\n"
                         f"{_rebuild_hint(path, manifest)}")
    # Warm-up waits for the metadata below: it holds the size the engine was built for.
    quiet = backend_config.model_copy(update={"warmup_runs": 0})
    backend = create_backend(path / manifest.engine.file, quiet, in_pipeline=in_pipeline)
    backend.load()
    try:
        identity = {"fingerprint": manifest.fingerprint, "target": manifest.target, "precision": manifest.precision,
                    "source_sha256": manifest.source_model.sha256}
        backend.metadata = {**manifest.source_model.metadata, **backend.metadata,
                            ARTIFACT_METADATA_KEY: json.dumps(identity)}
        if manifest.preprocess is not None:
            backend.metadata[ARTIFACT_PREPROCESS_KEY] = json.dumps(manifest.preprocess.config)
        backend.warmup(backend_config.warmup_runs)
    except BaseException:
        backend.close()
        raise
    return backend


def is_artifact(path: str | Path) -> bool:
    """True when ``path`` is a directory with a manifest (valid or not)."""
    return (Path(path) / MANIFEST_NAME).is_file()


# ----------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------





























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
        "profiles": manifest.profiles,
        "preprocess": manifest.preprocess.model_dump(mode="json") if manifest.preprocess else None,
        "mismatches": verify_artifact(path, target_env=target_env),
    }


__all__ = [
    "Manifest",
    "PreprocessRecord",
    "backend_config_for",
    "current_environment",
    "open_artifact",
    "read_manifest",
    "target_for_backend",
    "verify_artifact",
]
