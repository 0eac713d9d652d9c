"""``precision: auto``: build every candidate precision, gate and measure them here, keep the fastest that passes.

int8 is a candidate only with validation data (its accuracy must be checked) and calibration; fp16
without validation data is accepted (its loss is negligible for the models this runtime targets).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lepton_edge.core.errors import ConfigError, LeptonError, ModelError
from lepton_edge.engines.artifacts import (
    AccuracyInfo,
    CandidateMeasurement,
    Manifest,
    Measurements,
    ProgressArg,
    backend_config_for,
    is_artifact,
    open_artifact,
    read_manifest,
    write_manifest,
)
from lepton_edge.engines.builder import build_artifact, publish
from lepton_edge.engines.evaluation.compare import accuracy_gate, compare_many, measure_throughput
from lepton_edge.engines.onnx_tools import inspect_onnx
from lepton_edge.engines.options import BuildOptions

log = logging.getLogger(__name__)

AUTO_CANDIDATES = {"tensorrt": ("fp32", "fp16", "int8")}
DEFAULT_AUTO_CANDIDATES = ("fp32", "int8")


def build(model: str | Path, out_dir: str | Path, options: BuildOptions, *, progress: ProgressArg = True) -> Manifest:
    """The artifact ``options`` asks for: :func:`build_auto` for precision auto, else :func:`build_artifact`."""
    if options.precision == "auto":
        return build_auto(model, out_dir, options, progress=progress)
    return build_artifact(model, out_dir, options, progress=progress)


def build_auto(model: str | Path, out_dir: str | Path, options: BuildOptions | None = None, *, rounds: int = 5,
               round_s: float = 0.1, progress: ProgressArg = True) -> Manifest:
    """Build every candidate precision of ``options.target``, gate and measure them here, keep the fastest that
    passes (``options.precision`` is ignored).

    Candidates: fp32 and int8 for onnxruntime, plus fp16 for TensorRT. int8 needs validation data (the
    gate) and calibration; without them it is skipped and the reason recorded. Speed is measured in
    ``rounds`` interleaved rounds of ``round_s`` seconds per candidate (median). The chosen artifact, with
    every candidate's measurement, is published at ``out_dir``.
    """

    options = options or BuildOptions()
    target, validation_data, max_accuracy_drop = options.target, options.validation_data, options.max_accuracy_drop
    model, out_dir = Path(model), Path(out_dir)
    info = inspect_onnx(model)
    candidates = AUTO_CANDIDATES.get(target, DEFAULT_AUTO_CANDIDATES)
    notes: dict[str, str] = {}
    if "int8" in candidates and validation_data is None:
        notes["int8"] = "skipped: int8 needs validation data for the accuracy gate (model.validation_data)"
    elif "int8" in candidates and options.calibration is None and not options.calibration_data and not info.has_qdq:
        notes["int8"] = "skipped: int8 needs calibration (model.calibration or model.calibration_data)"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.auto-", dir=out_dir.parent))
    try:
        built: dict[str, Path] = {}
        for precision in candidates:
            if precision in notes:
                continue
            try:
                candidate = options.model_copy(update={"precision": precision, "validation_data": None})
                build_artifact(model, work / precision, candidate, progress=progress)
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
                reports = compare_many(model, others, Path(validation_data), samples=options.validation_samples,
                                       preprocess=options.preprocess)
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
