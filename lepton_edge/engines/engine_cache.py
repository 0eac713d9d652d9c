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

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_edge.config.device import DeviceConfig
from lepton_edge.config.pipeline import BackendConfig, ModelConfig, PreprocessConfig, TensorRTBackendConfig
from lepton_edge.core.errors import ConfigError, LeptonError, ModelError
from lepton_edge.engines.artifacts import (
    Manifest,
    ProgressArg,
    is_artifact,
    open_artifact,
    target_for_backend,
    verify_artifact,
)
from lepton_edge.engines.auto import build
from lepton_edge.engines.calibration import dataset_manifest
from lepton_edge.engines.onnx_tools import inspect_onnx
from lepton_edge.engines.options import BuildOptions, TrtOptions
from lepton_edge.runtime.assembly import require_workload
from lepton_edge.runtime.backends import create_backend
from lepton_edge.runtime.backends.base import Backend

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
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


def cache_key(model_cfg: ModelConfig, target: str, model_sha256: str,
              preprocess: PreprocessConfig | None = None) -> str:
    """sha256 of what decides the cache slot (the environment is verified separately, see the module doc).

    The preprocessing the config sets (size, normalisation, ...) is part of it: the engine is calibrated, gated and
    (TensorRT) profiled for it. A config that sets none keeps the slot it had before preprocessing counted.
    """
    precision = model_cfg.precision
    identity: dict[str, Any] = {
        "cache_format": CACHE_FORMAT, "model_sha256": model_sha256, "target": target, "precision": precision,
        # max_batch is always its default here; left out so that slots keep their names
        "trt_options": TrtOptions().model_dump(mode="json", exclude={"max_batch", "device"})
        if target == "tensorrt" else None,
    }
    max_batch = _max_batch(model_cfg)
    if target == "tensorrt" and max_batch is not None:  # set: the profile's largest batch (unset keeps the slot)
        identity["max_batch"] = max_batch
    explicit = preprocess.model_dump(mode="json", exclude_unset=True) if preprocess is not None else {}
    if explicit:
        identity["preprocess"] = explicit
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


def _build_slot(model: Path, entry: Path, model_cfg: ModelConfig, target: str, progress: ProgressArg,
                preprocess: PreprocessConfig | None, device: int = 0) -> Manifest:
    gated = model_cfg.precision != "fp32"  # the fp32 engine is the reference itself: nothing to gate
    options = BuildOptions(target=target, precision=model_cfg.precision, calibration=model_cfg.calibration,
                           calibration_data=model_cfg.calibration_data,
                           validation_data=model_cfg.validation_data if gated else None,
                           max_accuracy_drop=model_cfg.max_accuracy_drop, preprocess=preprocess,
                           inputs=model_cfg.inputs, trt=TrtOptions(device=device, max_batch=_max_batch(model_cfg)))
    return build(model, entry, options, progress=progress)


def _max_batch(model_cfg: ModelConfig) -> int | None:
    """``model.batch.max_batch``: the largest batch a TensorRT profile takes (None: the build's default)."""
    batch = getattr(model_cfg, "batch", None)
    return getattr(batch, "max_batch", None)


def resolve(model_cfg: ModelConfig, backend_cfg: BackendConfig, *, progress: ProgressArg = True,
            force: bool = False, preprocess: PreprocessConfig | None = None) -> Resolution:
    """Resolve ``model_cfg`` for ``backend_cfg``: the ONNX/artifact path for ``as-is``, else the cache slot,
    built when missing, corrupt or made for another environment (``force`` rebuilds it anyway). ``preprocess``
    (the config's section) is what a build calibrates, gates, profiles and records; the fields it sets pick the slot.

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
    key = cache_key(model_cfg, target, info.sha256, preprocess)
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
            problems = verify_artifact(entry, device_index=getattr(backend_cfg, "device", 0))
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
            _build_slot(path, entry, model_cfg, target, progress, preprocess, getattr(backend_cfg, "device", 0))
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


def open_model(model_cfg: ModelConfig, backend_cfg: BackendConfig, *, in_pipeline: bool = True,
               preprocess: PreprocessConfig | None = None) -> Backend:
    """The loaded backend for ``model_cfg``.

    Artifacts are verified before loading; a cached engine that still fails to load is rebuilt once. An artifact's
    backend carries what it recorded (preprocessing and input size) in its metadata, under
    ``lepton.artifact.preprocess`` (:data:`~lepton_edge.runtime.input_size.ARTIFACT_PREPROCESS_KEY`).
    """
    return open_resolved(resolve(model_cfg, backend_cfg, preprocess=preprocess), model_cfg, backend_cfg, in_pipeline,
                         preprocess=preprocess)


def load_backend(config: DeviceConfig, *, in_pipeline: bool = True) -> Backend:
    """The loaded backend for the config's model: the file as given (``precision: as-is``, or an artifact
    directory, verified against this machine), or the engine built for the precision from the engine cache."""
    require_workload(config)
    assert config.model is not None
    return open_model(config.model, config.backend, in_pipeline=in_pipeline, preprocess=config.preprocess)


def open_resolved(resolution: Resolution, model_cfg: ModelConfig, backend_cfg: BackendConfig,
                   in_pipeline: bool, *, preprocess: PreprocessConfig | None = None) -> Backend:
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
        rebuilt = resolve(model_cfg, backend_cfg, force=True, preprocess=preprocess)
        return open_artifact(rebuilt.path, backend_cfg, in_pipeline=in_pipeline)
