"""The engine cache: the runtime's model config resolved to a verified, built-once artifact.

``model.precision: as-is`` runs ``model.path`` as given (an ONNX file, or an artifact directory that is
verified before loading). Any other precision builds the engine from the ONNX model on first use and
keeps it in the cache folder; later starts reuse it after checking it against this machine.

One cache slot per (model sha256, target, precision, calibration, validation data): the slot name
holds a hash of these. The environment (runtime versions, GPU) is *not* part of the slot: it is
checked against the slot's manifest on every resolve, and an upgrade rebuilds the slot in place, with
a log line naming the fields that changed. Builds run under an exclusive ``flock`` per slot, so two
processes starting together build once; the second waits and reuses the result.

``precision: auto`` builds every candidate for the target (onnxruntime: fp32, int8; TensorRT: fp32,
fp16, int8), gates each on the validation data, measures them here in interleaved rounds and keeps the
fastest that passed; every measurement is recorded in the chosen manifest. int8 is a candidate only
with validation data (its accuracy must be checked) and calibration; fp16 without validation data is
accepted (its loss is negligible for the models this runtime targets).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_edge.config.device import DeviceConfig, load_config
from lepton_edge.config.pipeline import BackendConfig, ModelConfig, PreprocessConfig, TensorRTBackendConfig
from lepton_edge.core.errors import ConfigError, LeptonError, ModelError
from lepton_edge.engines.artifacts import (
    ARTIFACT_METADATA_KEY,
    AccuracyInfo,
    CandidateMeasurement,
    Manifest,
    Measurements,
    ProgressArg,
    backend_config_for,
    describe_artifact,
    is_artifact,
    open_artifact,
    read_manifest,
    target_for_backend,
    verify_artifact,
    write_manifest,
)
from lepton_edge.engines.builder import TrtOptions, build_artifact, publish
from lepton_edge.engines.calibration import dataset_manifest
from lepton_edge.engines.evaluation.compare import accuracy_gate, compare_many, measure_throughput
from lepton_edge.engines.onnx_tools import describe_model, inspect_onnx, unsupported_ops
from lepton_edge.runtime.assembly import require_workload
from lepton_edge.runtime.backends import create_backend
from lepton_edge.runtime.backends.base import Backend

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
AUTO_CANDIDATES = {"tensorrt": ("fp32", "fp16", "int8")}
DEFAULT_AUTO_CANDIDATES = ("fp32", "int8")
STALE_STAGING_S = 3600.0


def default_cache_dir() -> Path:
    """``$CACHE_DIRECTORY/engines`` under systemd (``CacheDirectory=``), else ``~/.cache/lepton-edge/engines``."""
    systemd = os.environ.get("CACHE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0]) / "engines"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lepton-edge" / "engines"


def data_fingerprint(spec: str | Path) -> str:
    """sha256 identifying a data set: a file's content, a folder's files (names and content), else the text."""
    path = Path(spec)
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(b"file\n")
        _hash_file(digest, path)
    elif path.is_dir():
        digest.update(b"dir\n")
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{item.relative_to(path).as_posix()}\n".encode())
            _hash_file(digest, item)
    else:
        digest.update(f"uri\n{spec}".encode())
    return digest.hexdigest()


def _hash_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)


def cache_key(model_cfg: ModelConfig, target: str, model_sha256: str) -> str:
    """sha256 of what decides the cache slot (the environment is verified separately, see the module doc)."""
    precision = model_cfg.precision
    identity: dict[str, Any] = {
        "cache_format": CACHE_FORMAT, "model_sha256": model_sha256, "target": target, "precision": precision,
        "trt_options": TrtOptions().model_dump(mode="json") if target == "tensorrt" else None,
    }
    if precision in ("int8", "auto"):
        if model_cfg.calibration is not None:
            identity["calibration_table"] = data_fingerprint(model_cfg.calibration)
        elif model_cfg.calibration_data:
            identity["calibration_data"] = dataset_manifest(model_cfg.calibration_data)["sha256"]
    if precision in ("int8", "auto", "fp16") and model_cfg.validation_data is not None:
        identity["validation_data"] = data_fingerprint(model_cfg.validation_data)
        identity["max_accuracy_drop"] = model_cfg.max_accuracy_drop
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def slot_name(model: Path, precision: str, target: str, key: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.stem)[:64] or "model"
    return f"{stem}-{precision}-{target}-{key[:16]}"


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on ``lock_path``; yields whether another process held it first."""
    with open(lock_path, "a+b") as f:
        waited = False
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = True
            log.info("another process is building %s; waiting for it", lock_path.with_suffix(""))
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield waited
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove_stale_staging(cache_dir: Path, name: str) -> None:
    """Staging folders left by a build that was killed (older than an hour)."""
    cutoff = time.time() - STALE_STAGING_S
    for leftover in cache_dir.glob(f".{name}.*"):
        with contextlib.suppress(OSError):
            if leftover.is_dir() and leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)


@dataclass
class Resolution:
    """Where a model config's engine is, and how it got there."""

    path: Path
    built: bool
    """True when this call built (or rebuilt) the engine."""
    reason: str
    """``as-is``, ``hit``, ``miss`` or ``mismatch: <fields>``."""
    waited: bool = False
    """True when another process held the slot's lock (and probably built it) first."""


def _build_slot(model: Path, entry: Path, model_cfg: ModelConfig, target: str, progress: ProgressArg) -> Manifest:
    common: dict[str, Any] = {
        "target": target, "calibration": model_cfg.calibration, "calibration_data": model_cfg.calibration_data,
        "validation_data": model_cfg.validation_data, "max_accuracy_drop": model_cfg.max_accuracy_drop,
        "progress": progress,
    }
    if model_cfg.precision == "auto":
        return build_auto(model, entry, **common)
    if model_cfg.precision == "fp32":
        common["validation_data"] = None  # the reference itself: nothing to gate
    return build_artifact(model, entry, precision=model_cfg.precision, **common)  # type: ignore[arg-type]


def resolve(model_cfg: ModelConfig, backend_cfg: BackendConfig, *, progress: ProgressArg = True,
            force: bool = False) -> Resolution:
    """Resolve ``model_cfg`` for ``backend_cfg``: the ONNX/artifact path for ``as-is``, else the cache slot,
    built when missing, corrupt or made for another environment (``force`` rebuilds it anyway).

    Raises ModelError when no usable engine exists and none can be built, naming what mismatched and
    what to set.
    """

    path = Path(model_cfg.path)
    precision = model_cfg.precision
    if precision == "as-is":
        return Resolution(path, False, "as-is")
    if path.is_dir():
        raise ConfigError(
            f"{path}: model.precision {precision!r} builds an engine from an ONNX model, but model.path is a "
            "directory (a built artifact?). Set model.precision: as-is to run the artifact, or point model.path "
            "at the .onnx file"
        )
    info = inspect_onnx(path)
    target = target_for_backend(backend_cfg)
    key = cache_key(model_cfg, target, info.sha256)
    cache_dir = Path(model_cfg.cache_dir) if model_cfg.cache_dir else default_cache_dir()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{cache_dir}: cannot create the engine cache folder ({e}); set model.cache_dir to a "
                          "writable folder") from None
    name = slot_name(path, precision, target, key)
    entry = cache_dir / name
    with _exclusive(cache_dir / f"{name}.lock") as waited:
        problems: list[str] = []
        reason = "miss"
        if entry.exists():
            problems = verify_artifact(entry)
            if not problems and not force:
                log.info("engine cache hit: %s", entry)
                return Resolution(entry, False, "hit", waited)
            if problems:
                log.warning("cached engine %s does not match this machine (%s); rebuilding", entry,
                            "; ".join(problems))
                reason = "mismatch: " + "; ".join(problems)
            else:
                reason = "forced"
        _remove_stale_staging(cache_dir, name)
        log.info("building %s engine of %s for %s into the cache (%s)", precision, path, target, reason)
        try:
            _build_slot(path, entry, model_cfg, target, progress)
        except LeptonError as e:
            stale = f" The cached engine {entry} does not match: {'; '.join(problems)}." if problems else ""
            raise ModelError(
                f"{path}: no usable {precision} engine for {target} in the cache and it cannot be built.{stale}\n"
                f"Build error: {e}\nFix the cause above, or set model.precision: fp32 (or as-is) to run the "
                "ONNX model directly."
            ) from None
        return Resolution(entry, True, reason, waited)


def resolve_model(model_cfg: ModelConfig, backend_cfg: BackendConfig) -> Path:
    """The path to run for ``model_cfg``: the ONNX file or artifact for ``as-is``, else the cached artifact."""
    return resolve(model_cfg, backend_cfg).path


def open_model(model_cfg: ModelConfig, backend_cfg: BackendConfig, *, in_pipeline: bool = True) -> Backend:
    """The loaded backend for ``model_cfg``.

    Artifacts are verified before loading; a cached engine that still fails to load is rebuilt once.
    """
    return _open_resolved(resolve(model_cfg, backend_cfg), model_cfg, backend_cfg, in_pipeline)


def load_backend(config: DeviceConfig, *, in_pipeline: bool = True) -> Backend:
    """The loaded backend for the config's model: the file as given (``precision: as-is``, or an artifact
    directory, verified against this machine), or the engine built for the precision from the engine cache."""
    require_workload(config)
    assert config.model is not None
    return open_model(config.model, config.backend, in_pipeline=in_pipeline)


def _open_resolved(resolution: Resolution, model_cfg: ModelConfig, backend_cfg: BackendConfig,
                   in_pipeline: bool) -> Backend:
    path = resolution.path
    if not is_artifact(path):
        if isinstance(backend_cfg, TensorRTBackendConfig) and path.suffix.lower() == ".onnx":
            raise ConfigError(
                f"{path}: backend tensorrt runs built engines, not ONNX files. Set model.precision (fp32, fp16, "
                "int8 or auto) to build and cache the engine from this model, or point model.path at an "
                "artifact from `lepton-edge build --target tensorrt`"
            )
        return create_backend(path, backend_cfg, in_pipeline=in_pipeline).load()
    try:
        return open_artifact(path, backend_cfg, in_pipeline=in_pipeline)
    except ModelError as e:
        if resolution.reason == "as-is" or resolution.built:
            raise
        log.warning("cached engine %s failed to load (%s); rebuilding it", path, e)
        rebuilt = resolve(model_cfg, backend_cfg, force=True)
        return open_artifact(rebuilt.path, backend_cfg, in_pipeline=in_pipeline)


# ----------------------------------------------------------------------------------------------
# precision: auto
# ----------------------------------------------------------------------------------------------

def build_auto(
    model: str | Path,
    out_dir: str | Path,
    *,
    target: str = "onnxruntime-cpu",
    calibration: Any = None,
    calibration_data: str | None = None,
    calibration_options: dict[str, Any] | None = None,
    validation_data: str | Path | None = None,
    validation_samples: int | None = None,
    max_accuracy_drop: float = 1.0,
    preprocess: PreprocessConfig | None = None,
    trt_options: TrtOptions | None = None,
    rounds: int = 5,
    round_s: float = 0.1,
    progress: ProgressArg = True,
) -> Manifest:
    """Build every candidate precision of ``target``, gate and measure them here, keep the fastest that passes.

    Candidates: fp32 and int8 for onnxruntime, plus fp16 for TensorRT. int8 needs ``validation_data``
    (the gate) and calibration; without them it is skipped and the reason recorded. Speed is measured
    in ``rounds`` interleaved rounds of ``round_s`` seconds per candidate (median). The chosen artifact,
    with every candidate's measurement, is published at ``out_dir``.
    """

    model, out_dir = Path(model), Path(out_dir)
    info = inspect_onnx(model)
    candidates = AUTO_CANDIDATES.get(target, DEFAULT_AUTO_CANDIDATES)
    notes: dict[str, str] = {}
    if "int8" in candidates and validation_data is None:
        notes["int8"] = "skipped: int8 needs validation data for the accuracy gate (model.validation_data)"
    elif "int8" in candidates and calibration is None and not calibration_data and not info.has_qdq:
        notes["int8"] = "skipped: int8 needs calibration (model.calibration or model.calibration_data)"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.auto-", dir=out_dir.parent))
    try:
        built: dict[str, Path] = {}
        for precision in candidates:
            if precision in notes:
                continue
            try:
                build_artifact(model, work / precision, target=target, precision=precision, calibration=calibration,
                               calibration_data=calibration_data, calibration_options=calibration_options,
                               preprocess=preprocess, trt_options=trt_options, progress=progress)
                built[precision] = work / precision
            except LeptonError as e:
                if precision == "fp32":
                    raise
                notes[precision] = f"build failed: {e}"
                log.warning("precision auto: %s candidate failed to build: %s", precision, e)
        reports: dict[str, Any] = {}
        if validation_data is not None:
            others = {p: d for p, d in built.items() if p != "fp32"}
            if others:
                reports = compare_many(model, others, Path(validation_data), samples=validation_samples,
                                       preprocess=preprocess)
            for precision, report in reports.items():
                try:
                    accuracy_gate(report, max_accuracy_drop)
                except ModelError as e:
                    notes[precision] = f"failed the accuracy gate: {e}"
        backends = {}
        try:
            for precision, directory in built.items():
                backends[precision] = open_artifact(directory, backend_config_for(target, warmup_runs=1),
                                                    in_pipeline=False)
            rates = measure_throughput(backends, rounds=rounds, round_s=round_s)
        finally:
            for backend in backends.values():
                backend.close()
        results = []
        for precision in candidates:
            report = reports.get(precision)
            reference = next(iter(reports.values()), None)
            accuracy = report.candidate_value if report else (
                reference.reference_value if precision == "fp32" and reference else None)
            results.append(CandidateMeasurement(
                precision=precision, fps=rates.get(precision, {}).get("fps"), accuracy=accuracy,
                drop=report.drop if report else (0.0 if accuracy is not None else None),
                passed=precision in built and precision not in notes, note=notes.get(precision)))
        passed = [r for r in results if r.passed]
        chosen = max(passed, key=lambda r: r.fps or 0.0)
        summary = ", ".join(f"{r.precision} {r.fps:.1f}/s" if r.fps else f"{r.precision} ({r.note})" for r in results)
        log.info("precision auto for %s on %s: %s -> %s", model.name, target, summary, chosen.precision)
        directory = built[chosen.precision]
        manifest = read_manifest(directory)
        report = reports.get(chosen.precision)
        if report is not None:
            manifest.accuracy = AccuracyInfo(metric=report.metric, reference=report.reference_value,
                                             value=report.candidate_value, drop=report.drop,
                                             max_drop=max_accuracy_drop, samples=report.samples,
                                             data_sha256=report.data_sha256)
        manifest.measurements = Measurements(
            method=f"interleaved rounds of {round_s:g} s per candidate, median inferences/s, one input, "
                   "this machine", rounds=rounds, candidates=results, chosen=chosen.precision)
        write_manifest(directory, manifest)
        if out_dir.exists() and any(out_dir.iterdir()) and not is_artifact(out_dir):
            raise ConfigError(f"{out_dir}: exists and is not an artifact directory; refusing to replace it")
        publish(directory, out_dir)
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# CLI: build, inspect
# ----------------------------------------------------------------------------------------------

EPILOG_BUILD = """examples:
  lepton-edge build --model models/digits_classifier.onnx --out out/artifacts/digits-fp32
  lepton-edge build --model models/shapes_detector.onnx --precision int8 --calibration-data calibration/shapes \\
      --validation calibration/shapes_heldout.json --out out/artifacts/shapes-int8
  lepton-edge build --model models/shapes_detector.onnx --precision auto --calibration calib/shapes.json \\
      --validation calibration/shapes_heldout.json --out out/artifacts/shapes-auto
  lepton-edge build --model det.onnx --target tensorrt --precision fp16 --timing-cache out/timing.cache \\
      --out out/artifacts/det-fp16
  lepton-edge build --verify-config /etc/lepton-edge/device.yaml   # boot-time: resolve through the cache

The artifact directory holds the engine and manifest.json (see docs/build.md). int8 needs --calibration
(a table from `lepton-edge calibrate`) or --calibration-data; --validation runs the accuracy gate and
fails the build when the drop exceeds --max-accuracy-drop points.
"""

EPILOG_INSPECT = """examples:
  lepton-edge inspect out/artifacts/shapes-int8     # manifest, and whether it matches this machine
  lepton-edge inspect models/shapes_detector.onnx   # inputs, outputs, opset, metadata, operators
  lepton-edge inspect out/artifacts/shapes-int8 --json

Exit status 1 when an artifact does not match this machine (each mismatched field is listed).
"""


def _parse_profile(text: str) -> tuple[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``images:1x3x320x320:1x3x320x320:4x3x320x320`` -> (name, (min, opt, max))."""
    parts = text.split(":")
    if len(parts) < 4:
        raise ConfigError(f"--profile {text!r}: expected NAME:MIN:OPT:MAX with shapes like 1x3x320x320")
    name = ":".join(parts[:-3])
    try:
        shapes = tuple(tuple(int(d) for d in s.lower().split("x")) for s in parts[-3:])
    except ValueError:
        raise ConfigError(f"--profile {text!r}: shapes must be integers joined by x, e.g. 1x3x320x320") from None
    return name, shapes  # type: ignore[return-value]


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="ONNX model to build from")
    p.add_argument("--out", type=Path, help="artifact directory to write (replaced atomically)")
    p.add_argument("--target", default="onnxruntime-cpu",
                   help="onnxruntime-cpu (default), onnxruntime-<provider> or tensorrt")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8", "auto"],
                   help="engine precision; auto measures the candidates here and keeps the fastest that passes")
    p.add_argument("--calibration", type=Path, help="calibration table (JSON from `lepton-edge calibrate`)")
    p.add_argument("--calibration-data", help="calibrate from this data: image folder, video, .npy/.npz")
    p.add_argument("--calibration-method", help="calibration method when calibrating here (minmax, entropy, "
                   "percentile)")
    p.add_argument("--calibration-samples", type=int, help="calibration samples when calibrating here")
    p.add_argument("--validation", type=Path, help="labelled held-out data for the accuracy gate (.npz or "
                   "shapes .json)")
    p.add_argument("--validation-samples", type=int, help="use only the first N validation samples")
    p.add_argument("--max-accuracy-drop", type=float, default=1.0,
                   help="largest allowed drop in points of top-1 or mAP@0.5 (default 1.0)")
    p.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT builder workspace (MiB)")
    p.add_argument("--dla-core", type=int, help="TensorRT: run on this DLA core (Jetson)")
    p.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file (read and updated)")
    p.add_argument("--int8-mode", choices=["qdq", "legacy-cache"], default="qdq",
                   help="TensorRT int8: explicit Q/DQ model (default) or implicit calibration from a cache")
    p.add_argument("--profile", action="append", default=[],
                   help="TensorRT optimization profile for a dynamic input: NAME:MIN:OPT:MAX, shapes like "
                   "1x3x320x320 (repeat for more inputs)")
    p.add_argument("--verify-config", type=Path, metavar="DEVICE_YAML",
                   help="resolve the config's model through the engine cache (build if needed) and exit 0 "
                   "when it is ready; for a boot-time oneshot unit")


def cli_build(args: argparse.Namespace) -> int:
    """``lepton-edge build``: one artifact, or ``--verify-config`` for a device config."""
    if args.verify_config:
        config = load_config(args.verify_config)
        if config.model is None:  # idle: the workload (and its model) arrives later through the agent
            print(f"ready: {args.verify_config} is idle (no model to build)")
            return 0
        resolution = resolve(config.model, config.backend)
        backend = _open_resolved(resolution, config.model, config.backend, in_pipeline=False)
        try:
            info = json.loads(backend.metadata.get(ARTIFACT_METADATA_KEY, "{}"))
        finally:
            backend.close()
        detail = f" (precision {info['precision']}, fingerprint {info['fingerprint'][:12]})" if info else ""
        print(f"ready: {resolution.path}{detail} [{resolution.reason}]")
        return 0
    if not args.model or not args.out:
        raise ConfigError("lepton-edge build needs --model MODEL.onnx and --out DIR (or --verify-config FILE)")
    profiles = None
    if args.profile:
        profiles = [dict(_parse_profile(p) for p in args.profile)]
    trt_options = TrtOptions(workspace_mb=args.workspace_mb, dla_core=args.dla_core,
                             timing_cache=args.timing_cache, profiles=profiles, int8_mode=args.int8_mode)
    calibration_options = {"method": args.calibration_method, "samples": args.calibration_samples}
    common: dict[str, Any] = {
        "target": args.target, "calibration": args.calibration, "calibration_data": args.calibration_data,
        "calibration_options": calibration_options, "validation_data": args.validation,
        "validation_samples": args.validation_samples, "max_accuracy_drop": args.max_accuracy_drop,
        "trt_options": trt_options,
    }
    started = time.perf_counter()
    if args.precision == "auto":
        manifest = build_auto(args.model, args.out, **common)
    else:
        manifest = build_artifact(args.model, args.out, precision=args.precision, **common)
    print(f"built {args.out} in {time.perf_counter() - started:.1f} s")
    print(_format_manifest(manifest))
    return 0


def _format_manifest(m: Manifest) -> str:
    lines = [
        f"target:      {m.target}",
        f"precision:   {m.precision}",
        f"fingerprint: {m.fingerprint}",
        f"source:      {m.source_model.name} (sha256 {m.source_model.sha256[:16]}, opset {m.source_model.opset})",
        f"engine:      {m.engine.file} ({m.engine.size} bytes, sha256 {m.engine.sha256[:16]})",
    ]
    for spec in m.source_model.inputs:
        lines.append(f"input:       {spec.name} {spec.shape} {spec.dtype}")
    for spec in m.source_model.outputs:
        lines.append(f"output:      {spec.name} {spec.shape} {spec.dtype}")
    if m.calibration:
        lines.append(f"calibration: {m.calibration.method}, {m.calibration.samples} samples "
                     f"(table {m.calibration.table_sha256[:16]})")
    if m.accuracy:
        a = m.accuracy
        lines.append(f"accuracy:    {a.metric} {a.value:.4f} vs fp32 {a.reference:.4f} (drop {a.drop:+.2f} points, "
                     f"allowed {a.max_drop:g}, {a.samples} samples)")
    if m.measurements:
        for c in m.measurements.candidates:
            fps = f"{c.fps:.1f}/s" if c.fps is not None else "-"
            mark = "*" if c.precision == m.measurements.chosen else " "
            lines.append(f"candidate: {mark} {c.precision:<5} {fps:>10}  {'passed' if c.passed else c.note}")
    runtime = ", ".join(f"{k} {v}" for k, v in m.runtime.model_dump().items() if v)
    lines.append(f"runtime:     {runtime}")
    device = m.device
    lines.append(f"device:      {device.gpu_name or device.cpu} ({', '.join(device.instruction_sets) or '-'})")
    return "\n".join(lines)


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="artifact directory or ONNX model")
    p.add_argument("--json", action="store_true", help="print JSON")


def cli_inspect(args: argparse.Namespace) -> int:
    """``lepton-edge inspect``: an artifact (and whether it matches this machine) or an ONNX model."""
    path = args.path
    if path.is_dir():
        info = describe_artifact(path)
        mismatches = info["mismatches"]
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(f"artifact:    {path}")
            print(_format_manifest(read_manifest(path)))
            if mismatches:
                print("matches this machine: NO")
                for problem in mismatches:
                    print(f"  - {problem}")
            else:
                print("matches this machine: yes")
        return 1 if mismatches else 0

    model = inspect_onnx(path)
    described = describe_model(model)
    described["unsupported_ops"] = {"onnxruntime-cpu": unsupported_ops(model, "onnxruntime-cpu")}
    if args.json:
        print(json.dumps(described, indent=2, default=str))
        return 0
    print(f"model:       {path} ({described['size_bytes']} bytes, sha256 {model.sha256[:16]})")
    print(f"opset:       {model.opset} (ir {model.ir_version}, producer {model.producer or '-'})")
    for spec in described["inputs"]:
        print(f"input:       {spec['name']} {spec['shape']} {spec['dtype']}")
    for spec in described["outputs"]:
        print(f"output:      {spec['name']} {spec['shape']} {spec['dtype']}")
    print(f"quantized:   {'yes (Q/DQ)' if model.has_qdq else 'no'}")
    print(f"operators:   {', '.join(f'{op} x{n}' for op, n in sorted(model.ops.items()))}")
    missing = described["unsupported_ops"]["onnxruntime-cpu"]
    print(f"onnxruntime: {'cannot run ' + ', '.join(missing) if missing else 'all operators supported'}")
    for key, value in model.metadata.items():
        print(f"metadata:    {key} = {value[:100]}")
    return 0
