"""Builds an artifact: calibrates, quantizes or builds the engine, measures it against the accuracy gate, and
publishes it atomically with its manifest."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from lepton_edge import __version__
from lepton_edge.config.pipeline import PreprocessConfig
from lepton_edge.core.errors import ConfigError, LeptonError, ModelError
from lepton_edge.core.fileio import fsync_path, fsync_tree, sha256_file
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.engines.artifacts import (
    MANIFEST_NAME,
    ONNX_ENGINE,
    TRT_ENGINE,
    AccuracyInfo,
    BuilderInfo,
    CalibrationInfo,
    DeviceInfo,
    EngineInfo,
    FidelityInfo,
    FloatLayer,
    Manifest,
    MixedPrecisionInfo,
    PreprocessRecord,
    ProgressArg,
    RuntimeInfo,
    SourceModel,
    backend_config_for,
    check_target,
    compute_fingerprint,
    current_environment,
    is_artifact,
    tensor_info,
    write_manifest,
)
from lepton_edge.engines.batching import set_batch
from lepton_edge.engines.calibration import (
    calibrate,
    dataset_manifest,
    load_table,
    quantize_qdq,
    trt_version_code,
    write_tensorrt_cache,
)
from lepton_edge.engines.calibration.qdq import QdqQuantizer
from lepton_edge.engines.calibration.samples import Feeds, dataset_path, select_samples
from lepton_edge.engines.calibration.sensitivity import SensitivityAnalysis, SensitivityRanking
from lepton_edge.engines.evaluation.compare import CompareReport, FidelityReport, accuracy_gate, compare
from lepton_edge.engines.evaluation.fidelity import DETECTION_TASKS
from lepton_edge.engines.float16 import write_float32_copy
from lepton_edge.engines.mixed_precision import FloatLayerSearch, Trial, float_layer_limit
from lepton_edge.engines.model_inputs import check_feedable, whole_sequences
from lepton_edge.engines.onnx_tools import explain_unsupported, inspect_onnx, unsupported_ops
from lepton_edge.engines.options import MAX_BATCH, BuildOptions, TrtOptions
from lepton_edge.engines.tensorrt_builder import build_engine
from lepton_edge.runtime.assembly import preprocess_from_metadata
from lepton_edge.runtime.backends import create_backend
from lepton_edge.runtime.backends.tensorrt import import_tensorrt
from lepton_edge.runtime.input_size import MissingInputSize, image_axes, image_layout
from lepton_edge.runtime.preprocess import Preprocessor

log = logging.getLogger(__name__)


def _reporter(progress: ProgressArg, model: Path) -> Callable[[str], None]:
    if callable(progress):
        return progress
    if progress:
        return lambda stage: log.info("%s: %s", model.name, stage)
    return lambda stage: None


def _default_profiles(inputs: list[TensorSpec], record: PreprocessRecord | None,
                      max_batch: int, opt_batch: int = 1) -> list[dict[str, tuple[tuple[int, ...], ...]]]:
    """One profile from the resolved input size: the image input's height and width at the size the engine is built
    for (min = opt = max), a dynamic batch from 1 to ``max_batch`` tuned for ``opt_batch`` (the streams feeding the
    model; at most ``max_batch``), any other dynamic dimension 1."""
    if all(spec.is_static for spec in inputs):
        return []
    profile = {}
    for spec in inputs:
        if spec.is_static:
            continue
        low = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        high, opt = list(low), list(low)
        if record is not None and spec.name == record.input:
            _, h_axis, w_axis = image_axes(record.config.get("layout") or image_layout(spec))
            low[h_axis], low[w_axis] = record.size[1], record.size[0]
            high[h_axis], high[w_axis] = record.size[1], record.size[0]
            opt[h_axis], opt[w_axis] = record.size[1], record.size[0]
        if len(spec.shape) >= 2 and not (isinstance(spec.shape[0], int) and spec.shape[0] > 0):
            high[0], opt[0] = max_batch, min(opt_batch, max_batch)
        profile[spec.name] = (tuple(low), tuple(opt), tuple(high))
    return [profile]


def default_max_batch(max_batch: int | None, metadata: dict[str, str]) -> int:
    """``max_batch`` when given, else the batch the model was exported for (Ultralytics ``batch`` metadata), else 1."""
    if max_batch is not None:
        return max_batch
    raw = metadata.get("batch", "").strip()
    return int(raw) if raw.isdigit() and 1 <= int(raw) <= MAX_BATCH else 1


def _check_fixed_profiles(model: Path, profiles: list[dict[str, Any]]) -> None:
    """DLA runs fixed shapes only: every profile needs min = opt = max (TensorRT's DLA documentation)."""
    for profile in profiles:
        for name, shapes in profile.items():
            if len({tuple(shape) for shape in shapes}) != 1:
                raise ConfigError(f"{model}: --profile {name}: DLA needs fixed shapes (min = opt = max), got "
                                  f"{' / '.join('x'.join(map(str, s)) for s in shapes)}; give one shape three times")


def _check_size_in_profiles(model: Path, record: PreprocessRecord | None, profiles: list[dict[str, Any]]) -> None:
    """ConfigError when the size the engine is built for lies outside a user profile of its image input."""
    if record is None:
        return
    _, h_axis, w_axis = image_axes(record.config.get("layout", "nchw"))
    for profile in profiles:
        shapes = profile.get(record.input)
        if shapes is None or len(shapes) != 3 or any(len(s) != 4 for s in shapes):
            continue
        low, _, high = shapes
        width, height = record.size
        if not (low[h_axis] <= height <= high[h_axis] and low[w_axis] <= width <= high[w_axis]):
            raise ConfigError(
                f"{model}: the input size {width}x{height} ({record.size_source}) is outside the --profile range "
                f"{list(low)}..{list(high)} of {record.input!r}; pass a --size within it or widen the profile"
            )


def image_input(info: Any) -> TensorSpec | None:
    """The model's image input, the one preprocessing feeds: its only input when that is 4-D NCHW/NHWC, else None."""
    if len(info.inputs) != 1:
        return None
    try:
        image_layout(info.inputs[0])
    except ModelError:
        return None
    return info.inputs[0]


def _table_layer(table: Any, spec: TensorSpec) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """The preprocessing a calibration table records (its size from the recorded input shape)."""
    recorded = dict(getattr(table, "preprocess", None) or {})
    shape = (getattr(table, "input_shapes", None) or {}).get(spec.name)
    if not recorded or not shape or len(shape) != 4:
        return recorded, None
    _, h_axis, w_axis = image_axes(recorded.get("layout") or image_layout(spec))
    size = (int(shape[w_axis]), int(shape[h_axis]))
    return {**recorded, "size": list(size)}, size


def resolve_build_preprocess(model: Path, info: Any, explicit: PreprocessConfig | None,
                             table: Any = None) -> tuple[PreprocessConfig | None, PreprocessRecord | None]:
    """The preprocessing a build calibrates, gates and records, and its record for the manifest.

    Order per field: ``explicit`` (--size, --config and the preprocessing flags), the calibration table's record,
    the model's metadata (``lepton.preprocess``, Ultralytics ``imgsz``), its static shape. (None, None) for models
    without one image input. ConfigError, saying to pass --size, when a dynamic height or width has no size anywhere.
    """
    spec = image_input(info)
    if spec is None:
        return explicit, None
    layered = explicit
    calibrated = None
    if table is not None:
        recorded, calibrated = _table_layer(table, spec)
        if recorded:
            try:
                layered = PreprocessConfig.model_validate(
                    {**recorded, **(explicit.model_dump(exclude_unset=True) if explicit else {})})
            except ValidationError as e:  # a table from another version: its record does not apply
                log.warning("%s: ignoring the calibration table's preprocessing record: %s", model.name, e)
    try:
        pre = Preprocessor(spec, preprocess_from_metadata(layered or PreprocessConfig(), dict(info.metadata)),
                           metadata=dict(info.metadata))
    except ModelError as e:  # e.g. a one-channel input and no color: gray anywhere; the runtime says so too
        if explicit is not None and explicit.model_fields_set:
            raise  # what the user asked for does not fit the model
        log.warning("%s: no preprocessing recorded in the manifest: %s", model.name, e)
        return explicit, None
    except MissingInputSize as e:
        raise ConfigError(
            f"{model}: input {spec.name!r} {spec.shape_str} has a dynamic height or width and no size is given "
            "anywhere (no --size, no preprocess.size in --config, no size in the calibration table or the model's "
            f"metadata); pass --size WIDTHxHEIGHT, e.g. --size 640x640 ({e})"
        ) from None
    size = (pre.width, pre.height)
    if calibrated is not None and calibrated != size:
        log.warning("%s: the calibration table was measured at %dx%d, the engine is built for %dx%d (%s); "
                    "calibrate at the size the engine runs for ranges that match it", model.name, *calibrated,
                    *size, pre.size.source)
    record = PreprocessRecord(
        input=spec.name, size=size, size_source=_size_source(spec, pre, explicit, calibrated),
        calibrated_size=calibrated,
        config=pre.config.model_copy(update={"size": size, "layout": pre.layout}).model_dump(mode="json",
                                                                                            exclude_none=True))
    return PreprocessConfig.model_validate(record.config), record


def _size_source(spec: TensorSpec, pre: Preprocessor, explicit: PreprocessConfig | None,
                 calibrated: tuple[int, int] | None) -> str:
    if spec.is_static or all(isinstance(d, int) and d > 0 for d in spec.shape[1:]):
        return "the model's static shape"
    if explicit is not None and explicit.size is not None:
        return "preprocess.size (--size or --config)"
    if calibrated is not None and pre.size.source == "preprocess.size":
        return "the calibration table"
    return pre.size.source


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


def _load_calibration(calibration: Any, info: Any, identity: Any = None) -> Any:
    """A CalibrationTable from a table object or file, checked against the model. A table of the fp16 model
    ``identity`` whose fp32 copy ``info`` is (same tensors) is taken for the copy."""

    if isinstance(calibration, str | Path):
        calibration = load_table(Path(calibration), model_sha256=(identity or info).sha256)
    if identity is not None and getattr(calibration, "model_sha256", None) == identity.sha256:
        return calibration.model_copy(update={"model_sha256": info.sha256})
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


def _calibrate(model: Path, info: Any, options: BuildOptions, report: Callable[[str], None], show_bar: bool,
               identity: Any = None) -> Any:
    if options.calibration is not None:
        return _load_calibration(options.calibration, info, identity)
    if not options.calibration_data:
        raise ModelError(
            f"{model}: int8 needs calibration: give a calibration table (--calibration, model.calibration, "
            "from `lepton-edge calibrate`) or calibration data (--calibration-data, model.calibration_data: "
            "an image folder, a video or a .npy/.npz recording)"
        )

    report(f"calibrating from {options.calibration_data}")
    return calibrate(model, options.calibration_data, preprocess=options.preprocess, progress=show_bar,
                     inputs=options.inputs, **options.calibration_options.model_dump(exclude_none=True))


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


def build_artifact(model: str | Path, out_dir: str | Path, options: BuildOptions | None = None, *,
                   progress: ProgressArg = True) -> Manifest:
    """Build the engine of ``model`` for ``options.target`` at ``options.precision`` into the artifact ``out_dir``.

    See :func:`_build_artifact`. An int8 engine that fails the fidelity gate is built again with its most sensitive
    layers in float when ``options.mixed_precision`` is auto (:func:`build_mixed_precision`).
    """
    options = whole_sequences(options or BuildOptions())
    model = Path(model)
    with _batched_source(model, options.batch) as (batched, original), \
            _float32_source(batched, options.precision) as (source, identity):
        identity = original or identity
        try:
            return _build_artifact(source, out_dir, options, progress=progress, identity=identity)
        except FidelityGateError as failure:
            if options.mixed_precision == "off" or failure.table is None:
                raise
            return build_mixed_precision(source, Path(out_dir), options, failure, progress, identity=identity)


@contextlib.contextmanager
def _batched_source(model: Path, batch: int | str | None) -> Iterator[tuple[Path, Any]]:
    """(the model the build starts from, the model the artifact records as its source): with ``batch``, a copy of
    ``model`` whose image input has that batch axis (:func:`~lepton_edge.engines.batching.set_batch`, ModelError
    naming the node when the graph hard-codes its batch), recorded as ``model``; else ``model`` itself (None)."""
    if batch is None:
        yield model, None
        return
    with tempfile.TemporaryDirectory(prefix="lepton-batch-") as scratch:
        copy = Path(scratch) / model.name
        capability = set_batch(model, copy, batch)  # type: ignore[arg-type]
        log.info("%s: batch %s: %s", model.name, batch, capability.reason)
        yield copy, inspect_onnx(model)


@contextlib.contextmanager
def _float32_source(model: Path, precision: str) -> Iterator[tuple[Path, Any]]:
    """(the model int8 is calibrated and quantized from, the model the artifact records as its source): an fp16
    model's fp32 copy (``engines.float16``) for int8, the model itself otherwise (source identity None)."""
    if precision != "int8":
        yield model, None
        return
    with tempfile.TemporaryDirectory(prefix="lepton-fp32-") as scratch:
        copy = Path(scratch) / model.name
        if not write_float32_copy(model, copy):
            yield model, None
            return
        log.info("%s: fp16 model: int8 is calibrated and quantized from its fp32 copy (same weights)", model.name)
        yield copy, inspect_onnx(model)


def _build_artifact(model: str | Path, out_dir: str | Path, options: BuildOptions | None = None, *,
                    progress: ProgressArg = True, keep_float: Sequence[str] = (),
                    mixed: MixedPrecisionInfo | None = None, identity: Any = None) -> Manifest:
    """Build the engine of ``model`` for ``options.target`` at ``options.precision`` into the artifact ``out_dir``.

    int8 needs ``options.calibration`` (a CalibrationTable or a table file made for this model) or
    ``options.calibration_data`` to calibrate from, unless the model is already quantized (Q/DQ). With
    ``options.validation_data`` the accuracy gate runs: the build fails, leaving no artifact, when the
    engine loses more than ``options.max_accuracy_drop`` points against the fp32 model. fp16 is refused for
    onnxruntime targets (CPU kernels run fp16 slower than fp32). Writing is atomic; a failed build leaves a
    previous artifact at ``out_dir`` untouched.
    int8 engines also pass the label-free fidelity gate (``options.fidelity``, see :func:`fidelity_data`).
    ``identity`` (a ModelInfo) is the model the manifest records as the source when ``model`` is its fp32 copy.
    """

    options = options or BuildOptions()
    target, precision = options.target, options.precision
    model, out_dir = Path(model), Path(out_dir)
    _check_precision(model, target, precision)
    report = _reporter(progress, model)
    info = inspect_onnx(model)
    _check_target_runs(model, info, target)
    check_feedable(model, info, options.inputs, target=target, profiles=options.trt.profiles,
                   data=[options.calibration_data, options.validation_data])
    _prepare_out_dir(out_dir)
    env = current_environment(target, options.trt.device)
    if options.calibration is None:  # no table that could give the size: refuse a model without one now
        resolve_build_preprocess(model, info, options.preprocess)
    table = _int8_table(model, info, options, report, progress is True, identity)
    preprocess, record = resolve_build_preprocess(model, info, options.preprocess, table)
    options = options.model_copy(update={"preprocess": preprocess})
    if record is not None:
        report(f"input {record.input} {record.size[0]}x{record.size[1]} ({record.size_source})")
    with staging_dir(out_dir) as staged:
        if target == "tensorrt":
            engine_file = TRT_ENGINE
            builder, profiles = _build_tensorrt(model, info, staged, precision, table, options.trt, env, report,
                                                record, keep_float=keep_float)
        else:
            engine_file, profiles = ONNX_ENGINE, []
            builder = _build_onnxruntime(model, info, staged / engine_file, table, report, keep_float)
        builder.batch = options.batch
        engine_path = staged / engine_file
        manifest = _manifest(identity or info, options, engine_path, table, env, builder, profiles)
        manifest.preprocess = record
        if options.validation_data is not None:
            report(f"accuracy gate on {options.validation_data}")
            manifest.accuracy = run_gate(model, engine_path, manifest, options)
        if precision == "int8" and options.fidelity:
            manifest.fidelity = _fidelity_gate(model, info, table, engine_path, manifest, options, report)
            manifest.mixed_precision = mixed
        manifest.fingerprint = compute_fingerprint(manifest)
        write_manifest(staged, manifest)
        publish(staged, out_dir)
    report(f"wrote {out_dir} ({precision}, {target}, fingerprint {manifest.fingerprint[:12]})")
    return manifest


def _check_precision(model: Path, target: str, precision: str) -> None:
    check_target(target)
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"precision must be fp32, fp16 or int8 for a build, got {precision!r}")
    if precision == "fp16" and target != "tensorrt":
        raise ConfigError(
            f"{model}: fp16 is not built for {target}: onnxruntime's CPU kernels compute fp16 models by "
            "converting to fp32, so they run slower than the fp32 model. Use fp32 or int8 on onnxruntime, "
            "or target tensorrt for fp16"
        )


def _check_target_runs(model: Path, info: Any, target: str) -> None:
    """Fail before any work when ``target`` cannot run ``model``: TensorRT missing, or onnxruntime lacking an op."""
    if target == "tensorrt":
        import_tensorrt()  # BackendUnavailable, saying what to install
        return
    missing = unsupported_ops(info, "onnxruntime-cpu")
    if missing:
        raise ModelError(f"{model}: {explain_unsupported(missing)}")


def _int8_table(model: Path, info: Any, options: BuildOptions, report: Callable[[str], None],
                show_bar: bool, identity: Any = None) -> Any:
    """The calibration table an int8 build quantizes with; None for other precisions and Q/DQ models."""
    if options.precision != "int8":
        return None
    if info.has_qdq:
        report("model is already quantized (Q/DQ): using its own scales")
        return None
    table = _calibrate(model, info, options, report, show_bar, identity)
    if getattr(table, "samples", 1) <= 0:
        raise ModelError(f"{model}: the calibration set is empty (0 samples); give calibration data with "
                         "images the model sees in production")
    return table


def _build_onnxruntime(model: Path, info: Any, dest: Path, table: Any, report: Callable[[str], None],
                       keep_float: Sequence[str] = ()) -> BuilderInfo:
    """The onnxruntime engine at ``dest``: quantized with ``table``, else the model itself."""
    builder = BuilderInfo()
    builder.optimization_level = "all"
    if table is not None:
        report("quantizing (QDQ, per channel)")
        quantize_qdq(model, table, dest, per_channel=True, keep_float=keep_float)
        builder.int8_mode, builder.per_channel = "qdq", True
    else:
        _copy_onnx(model, info, dest)
    return builder


def _manifest(info: Any, options: BuildOptions, engine_path: Path, table: Any, env: dict[str, Any],
              builder: BuilderInfo, profiles: list[dict[str, list[list[int]]]]) -> Manifest:
    """The staged engine's manifest (``info``: the source model), without accuracy and fingerprint."""
    source = SourceModel(name=info.path.name, sha256=info.sha256, opset=info.opset,
                         inputs=[tensor_info(s) for s in info.inputs],
                         outputs=[tensor_info(s) for s in info.outputs], metadata=dict(info.metadata))
    calibration_info = None
    if table is not None:
        calibration_info = CalibrationInfo(table_sha256=table_sha256(table), method=str(table.method),
                                           samples=int(table.samples),
                                           dataset_sha256=getattr(table, "dataset_sha256", None))
    return Manifest(
        lepton_edge_version=__version__,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        source_model=source, target=options.target, precision=options.precision,
        engine=EngineInfo(file=engine_path.name, sha256=sha256_file(engine_path), size=engine_path.stat().st_size),
        calibration=calibration_info, runtime=RuntimeInfo(**env["runtime"]), device=DeviceInfo(**env["device"]),
        profiles=profiles, builder=builder, fingerprint="",
    )


def _compare_staged(model: Path, engine_path: Path, manifest: Manifest, data: str | Path, samples: int | None,
                    options: BuildOptions) -> CompareReport:
    """Compare the staged engine with the fp32 model on ``data``."""
    backend = create_backend(engine_path, backend_config_for(manifest.target, warmup_runs=0))
    backend.load()
    try:
        backend.metadata = {**manifest.source_model.metadata, **backend.metadata}
        return compare(model, backend, data, samples=samples, preprocess=options.preprocess,
                       candidate_name=manifest.precision, inputs=options.inputs)
    finally:
        backend.close()


def run_gate(model: Path, engine_path: Path, manifest: Manifest, options: BuildOptions) -> AccuracyInfo:
    """Compare the staged engine with the fp32 model on the validation data; ModelError when it drops too much."""
    report = _compare_staged(model, engine_path, manifest, Path(options.validation_data),
                             options.validation_samples, options)
    accuracy_gate(report, options.max_accuracy_drop)
    return AccuracyInfo(metric=report.metric, reference=report.reference_value, value=report.candidate_value,
                        drop=report.drop, max_drop=options.max_accuracy_drop, samples=report.samples,
                        data_sha256=report.data_sha256)


# ----------------------------------------------------------------------------------------------
# The fidelity gate: int8 against the fp32 model, no labels needed
# ----------------------------------------------------------------------------------------------

MIN_HELD_OUT = 16
"""Fewest calibration items left unused by calibration for the fidelity gate to compare on them."""


class FidelityGateError(ModelError):
    """The engine's outputs stray too far from the fp32 model's (see :func:`check_fidelity`); carries what
    mixed precision needs to try again."""

    fidelity: FidelityReport | None = None
    table: Any = None
    options: BuildOptions | None = None


@dataclass
class FidelityData:
    """What the fidelity gate compares on: a path ``compare`` reads, and how it relates to calibration."""

    path: str
    description: str
    held_out: bool


def _fidelity_gate(model: Path, info: Any, table: Any, engine_path: Path, manifest: Manifest,
                   options: BuildOptions, report: Callable[[str], None]) -> FidelityInfo | None:
    """Run the fidelity gate on the staged int8 engine; None (logged) when there is no data to run it on."""
    with tempfile.TemporaryDirectory(prefix="lepton-fidelity-") as scratch:
        data = fidelity_data(info, table, options, Path(scratch))
        if data is None:
            log.warning("%s: no calibration or validation data to run the int8 fidelity gate on; the engine is "
                        "not checked against the fp32 model", model.name)
            return None
        report(f"fidelity gate on {data.description}")
        compared = _compare_staged(model, engine_path, manifest, data.path, options.fidelity_samples, options)
    fidelity = compared.fidelity
    required = fidelity_minimums(fidelity.task, options)
    try:
        check_fidelity(fidelity, required, data)
    except FidelityGateError as failure:
        failure.table, failure.options = table, options
        raise
    report(f"fidelity: {format_fidelity(fidelity)}")
    value = fidelity.value if np.isfinite(fidelity.value) else None
    kept = fidelity.boxes_kept if fidelity.boxes_kept is not None and np.isfinite(fidelity.boxes_kept) else None
    return FidelityInfo(task=fidelity.task, metric=fidelity.metric, value=value, boxes_kept=kept,
                        reference_boxes=fidelity.reference_boxes, max_rel_error=fidelity.max_rel_error,
                        required=required, samples=fidelity.samples, data=data.description,
                        held_out=data.held_out, data_sha256=compared.data_sha256)


def fidelity_minimums(task: str, options: BuildOptions) -> dict[str, float]:
    """The minimums the gate applies for ``task``, keyed like :func:`fidelity_measures`; segment, pose and obb
    models are gated on their boxes, as detectors."""
    if task in DETECTION_TASKS:
        return {"map": options.min_fidelity_map, "boxes_kept": options.min_boxes_kept}
    if task == "classify":
        return {"top1_agreement": options.min_top1_agreement}
    return {"output_agreement": options.min_output_agreement}


def fidelity_measures(fidelity: FidelityReport) -> dict[str, float]:
    """The measured values the minimums apply to."""
    if fidelity.task in DETECTION_TASKS:
        return {"map": fidelity.value, "boxes_kept": float(fidelity.boxes_kept)}
    if fidelity.task == "classify":
        return {"top1_agreement": fidelity.value}
    return {"output_agreement": fidelity.value}


def format_fidelity(fidelity: FidelityReport) -> str:
    """One line: every measured value, e.g. ``map 0.9967, boxes_kept 0.9992 (300 samples)``."""
    measured = ", ".join(f"{name} {value:.4f}" for name, value in fidelity_measures(fidelity).items())
    return f"{measured} ({fidelity.samples} samples)"


def check_fidelity(fidelity: FidelityReport, required: dict[str, float], data: FidelityData) -> None:
    """Raise FidelityGateError naming every measure below its minimum, by how much, and what to try."""
    measured = fidelity_measures(fidelity)
    if fidelity.task in DETECTION_TASKS and not fidelity.reference_boxes:
        log.warning("fidelity gate: the fp32 model detects nothing on %s; fidelity cannot be judged there",
                    data.description)
        return
    short = [f"{name} {measured[name]:.4f} < required {least:.4f} (short by {least - measured[name]:.4f})"
             for name, least in required.items() if not measured[name] >= least]
    if short:
        error = FidelityGateError(
            f"int8 engine fails the fidelity gate against the fp32 model on {data.description} "
            f"({fidelity.samples} samples, no labels): {'; '.join(short)}. Try another calibration method "
            "(--calibration-method minmax, entropy or percentile) or more calibration samples, keep sensitive "
            "layers in float (--mixed-precision auto, --max-float-layers N), build fp32/fp16, or accept it knowingly "
            "with --no-fidelity-gate (BuildOptions.fidelity false)"
        )
        error.fidelity = fidelity
        raise error


def fidelity_data(info: Any, table: Any, options: BuildOptions, scratch: Path) -> FidelityData | None:
    """The data the fidelity gate compares on: calibration items calibration did not use when there are at least
    MIN_HELD_OUT, else the validation data, else the calibration data itself (logged: not held out)."""
    calibration = _calibration_dataset(table, options)
    if calibration is not None and table is not None:
        held = _held_out(info, table, calibration, options, scratch)
        if held is not None:
            return held
    if options.validation_data is not None:
        return FidelityData(str(options.validation_data), f"validation data {options.validation_data}", True)
    if calibration is None:
        return None
    log.warning("fidelity gate: %s has too few items beyond those calibration used (%d needed); comparing on "
                "calibration items, which are not held out", calibration, MIN_HELD_OUT)
    feeds = _feeds(info, calibration, options)
    indices = np.arange(min(feeds.total, options.fidelity_samples))
    path = _materialize(feeds, indices, scratch) or str(calibration)
    return FidelityData(path, f"calibration data {calibration} (not held out)", False)


def _calibration_dataset(table: Any, options: BuildOptions) -> str | None:
    """The calibration data set: the one given, else the table's own when it is still there unchanged."""
    if options.calibration_data:
        return options.calibration_data
    dataset = getattr(table, "dataset", None)
    if not dataset:
        return None
    try:
        same = dataset_manifest(dataset)["sha256"] == table.dataset_sha256
    except LeptonError:
        return None
    return dataset if same else None


def _feeds(info: Any, dataset: str, options: BuildOptions) -> Feeds:
    kind, path = dataset_path(dataset)
    return Feeds(kind, path, info.inputs, dict(info.metadata), options.preprocess, inputs_config=options.inputs,
                 outputs=info.outputs)


def _held_out(info: Any, table: Any, dataset: str, options: BuildOptions, scratch: Path) -> FidelityData | None:
    """The calibration items ``table`` was not measured on, as data ``compare`` reads; None when too few."""
    try:
        if dataset_manifest(dataset)["sha256"] != table.dataset_sha256:
            return None  # calibrated from other data: every item here may be unseen, but we cannot tell
        feeds = _feeds(info, dataset, options)
    except LeptonError:
        return None
    used = select_samples(feeds.total, int(table.samples), int(table.seed), sequence=feeds.stateful)
    unused = np.setdiff1d(np.arange(feeds.total), used)
    if len(unused) < MIN_HELD_OUT:
        return None
    path = _materialize(feeds, unused[:options.fidelity_samples], scratch)
    if path is None:
        return None
    return FidelityData(path, f"{min(len(unused), options.fidelity_samples)} held-out items of {dataset} "
                        f"(of {len(unused)} not used for calibration)", True)


def _materialize(feeds: Feeds, indices: np.ndarray, scratch: Path) -> str | None:
    """The items at ``indices`` as data ``compare`` reads: a folder of links to the images, or the recorded inputs
    (a .npy for one, a .npz of one array per input for several); None for a video (not split)."""
    if feeds.kind in ("folder", "image"):
        folder = scratch / "images"
        folder.mkdir()
        for i in indices:
            (folder / feeds.files[int(i)].name).symlink_to(feeds.files[int(i)].resolve())
        return str(folder)
    return feeds.materialize(indices, scratch)


def _build_tensorrt(model: Path, info: Any, staged: Path, precision: str, table: Any, options: TrtOptions,
                    env: dict[str, Any], report: Callable[[str], None],
                    record: PreprocessRecord | None = None,
                    keep_float: Sequence[str] = ()) -> tuple[BuilderInfo, list]:
    source = model
    cache = None
    int8_mode = None
    if table is not None and options.int8_mode == "qdq":
        report("quantizing (QDQ) for explicit int8")
        source = quantize_qdq(model, table, staged / "qdq.onnx", per_channel=True, keep_float=keep_float,
                              symmetric=True)
        int8_mode = "qdq"
    elif table is not None:
        version = env["runtime"]["tensorrt"] or "8.6.1"
        cache = staged / "calibration.cache"
        write_tensorrt_cache(table, cache, trt_version=trt_version_code(version))
        int8_mode = "legacy-cache"
    elif precision == "int8":
        int8_mode = "qdq"
    if options.profiles is not None:
        profiles = options.profiles
        _check_size_in_profiles(model, record, profiles)
    else:
        opt_batch = 1 if options.dla_core is not None else options.opt_batch or 1
        max_batch = 1 if options.dla_core is not None else max(
            default_max_batch(options.max_batch, info.metadata), opt_batch if options.max_batch is None else 1)
        profiles = _default_profiles(info.inputs, record, max_batch, opt_batch)
    if options.dla_core is not None:
        _check_fixed_profiles(model, profiles)
    try:
        plan, facts = build_engine(source, precision=precision, calibration_cache=cache,
                                   float_layers=list(keep_float) if cache is not None else [],
                                   timing_cache=options.timing_cache, workspace_mb=options.workspace_mb,
                                   dla_core=options.dla_core, profiles=profiles, progress=report,
                                   device=options.device)
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


# ----------------------------------------------------------------------------------------------
# Mixed precision: the most sensitive layers in float until the fidelity gate passes
# ----------------------------------------------------------------------------------------------

MIXED_METHOD = ("layers ranked by the output error of the model with only that layer int8 (onnxruntime QDQ, "
                "held-out calibration items first); fewest top-ranked layers kept in float for the fidelity gate "
                "to pass, found by doubling then bisection on onnxruntime QDQ engines")


def build_mixed_precision(model: Path, out_dir: Path, options: BuildOptions, failure: FidelityGateError,
                          progress: ProgressArg = True, *, identity: Any = None) -> Manifest:
    """After ``failure`` (the all-int8 engine failed the fidelity gate): rank the layers, find the fewest top ones
    whose float copy passes, and build the artifact with them in float; FidelityGateError when ``max_float_layers``
    are not enough. The calibration table of the first attempt is reused."""
    started = time.monotonic()
    report = _reporter(progress, model)
    table, gated = failure.table, failure.options or options
    info = inspect_onnx(model)
    before = fidelity_measures(failure.fidelity)
    report(f"int8 fails the fidelity gate ({format_fidelity(failure.fidelity)}); ranking layers for mixed precision")
    quantizer = QdqQuantizer(model, table)
    ranking = SensitivityAnalysis(quantizer, _sensitivity_feeds(model, info, table, gated)).rank(
        progress=progress is True)
    limit = float_layer_limit(len(ranking.layers), options.max_float_layers)
    with tempfile.TemporaryDirectory(prefix="lepton-mixed-") as scratch:
        data = fidelity_data(info, table, gated, Path(scratch))
        if data is None:
            raise failure
        search = FloatLayerSearch(
            lambda count: _mixed_trial(model, info, quantizer, ranking, count, data, gated, Path(scratch), report),
            limit)
        best = search.run()
    if best is None:
        raise _mixed_failure(failure, ranking, limit, search.trials, gated)
    kept = [FloatLayer(name=s.layer.name, nodes=list(s.layer.nodes), error=s.error) for s in ranking.top(best.layers)]
    mixed = MixedPrecisionInfo(
        method=MIXED_METHOD, layers=len(ranking.layers), limit=limit, kept=kept, int8_error=ranking.int8_error,
        samples=ranking.samples, before=before, after=best.measured, trials=len(search.trials),
        seconds=round(time.monotonic() - started, 1))
    report(f"mixed precision: {best.layers} of {len(ranking.layers)} layers in float "
           f"({', '.join(k.name for k in kept[:5])}{', ...' if len(kept) > 5 else ''})")
    again = options.model_copy(update={"calibration": table})
    return _build_artifact(model, out_dir, again, progress=progress, keep_float=ranking.nodes(best.layers),
                           mixed=mixed, identity=identity)


def _sensitivity_feeds(model: Path, info: Any, table: Any, options: BuildOptions) -> list[dict[str, np.ndarray]]:
    """Up to ``options.sensitivity_samples`` calibration items as model feeds: those calibration did not use first."""
    dataset = _calibration_dataset(table, options)
    if dataset is None:
        raise ModelError(f"{model}: mixed precision ranks layers on calibration items and the calibration data "
                         f"{getattr(table, 'dataset', None)!r} is gone or changed; give --calibration-data")
    feeds = _feeds(info, dataset, options)
    used = select_samples(feeds.total, int(table.samples), int(table.seed))
    unused = np.setdiff1d(np.arange(feeds.total), used)
    chosen = np.sort(np.concatenate([unused, used])[:options.sensitivity_samples])
    return [{name: np.array(value, copy=True) for name, value in feed.items()} for feed in feeds.feeds(chosen)]


def _mixed_trial(model: Path, info: Any, quantizer: QdqQuantizer, ranking: SensitivityRanking, count: int,
                 data: FidelityData, options: BuildOptions, scratch: Path, report: Callable[[str], None]) -> Trial:
    """The fidelity gate's verdict on the onnxruntime QDQ engine with the ``count`` most sensitive layers in float."""
    path = quantizer.write(scratch / "mixed.onnx", ranking.nodes(count), check=False)
    backend = create_backend(path, backend_config_for("onnxruntime-cpu", warmup_runs=0))
    backend.load()
    try:
        backend.metadata = {**info.metadata, **backend.metadata}
        compared = compare(model, backend, data.path, samples=options.fidelity_samples,
                           preprocess=options.preprocess, candidate_name="int8", inputs=options.inputs)
    finally:
        backend.close()
    fidelity = compared.fidelity
    measured = fidelity_measures(fidelity)
    required = fidelity_minimums(fidelity.task, options)
    passed = (fidelity.task in DETECTION_TASKS and not fidelity.reference_boxes) or all(
        measured[name] >= least for name, least in required.items())
    report(f"mixed precision: {count} layer(s) in float: {format_fidelity(fidelity)} -> "
           f"{'passes' if passed else 'fails'}")
    return Trial(count, passed, {name: float(value) for name, value in measured.items()})


def _mixed_failure(failure: FidelityGateError, ranking: SensitivityRanking, limit: int, trials: list[Trial],
                   options: BuildOptions) -> FidelityGateError:
    """The error when ``limit`` layers in float are not enough: by how much, and what to try."""
    last = max(trials, key=lambda t: t.layers) if trials else None
    required = fidelity_minimums(failure.fidelity.task, options)
    if not ranking.layers:
        short = "the model has no quantized layer to keep in float"
    elif last is None:
        short = "no layer may be kept in float (--max-float-layers 0)"
    else:
        short = "; ".join(f"{name} {last.measured[name]:.4f} < required {least:.4f} (short by "
                          f"{least - last.measured[name]:.4f})" for name, least in required.items()
                          if not last.measured[name] >= least) or "fails"
    more = min(len(ranking.layers), max(2 * limit, 1))
    error = FidelityGateError(
        f"int8 engine fails the fidelity gate even with mixed precision: with the {limit} most sensitive of "
        f"{len(ranking.layers)} layers in float, {short} (all-int8: {format_fidelity(failure.fidelity)}). Try "
        f"--max-float-layers {more}, another calibration method (--calibration-method minmax, entropy or "
        "percentile) or more calibration samples, build fp32/fp16, or accept it knowingly with --no-fidelity-gate")
    error.fidelity, error.table, error.options = failure.fidelity, failure.table, failure.options
    return error
