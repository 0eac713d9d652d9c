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
from lepton_edge.engines.builder import (
    FidelityData,
    FidelityGateError,
    build_artifact,
    check_fidelity,
    fidelity_minimums,
    publish,
)
from lepton_edge.engines.evaluation.compare import accuracy_gate, compare_many, measure_throughput
from lepton_edge.engines.onnx_tools import ModelInfo, inspect_onnx
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
    model, out_dir = Path(model), Path(out_dir)
    info = inspect_onnx(model)
    candidates = AUTO_CANDIDATES.get(options.target, DEFAULT_AUTO_CANDIDATES)
    notes = _int8_skipped(candidates, options, info)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.auto-", dir=out_dir.parent))
    try:
        built = _build_candidates(model, work, options, candidates, notes, progress)
        reports = _gate_candidates(model, built, options, notes)
        rates = _measure_candidates(built, options.target, rounds, round_s)
        results = _candidate_results(candidates, built, reports, rates, notes)
        passed = [r for r in results if r.passed]
        chosen = max(passed, key=lambda r: r.fps or 0.0)
        summary = ", ".join(f"{r.precision} {r.fps:.1f}/s" if r.fps else f"{r.precision} ({r.note})" for r in results)
        log.info("precision auto for %s on %s: %s -> %s", model.name, options.target, summary, chosen.precision)
        directory = built[chosen.precision]
        measurements = Measurements(
            method=f"interleaved rounds of {round_s:g} s per candidate, median inferences/s, one input, "
                   "this machine", rounds=rounds, candidates=results, chosen=chosen.precision)
        manifest = _record_choice(directory, reports.get(chosen.precision), options.max_accuracy_drop, measurements)
        if out_dir.exists() and any(out_dir.iterdir()) and not is_artifact(out_dir):
            raise ConfigError(f"{out_dir}: exists and is not an artifact directory; refusing to replace it")
        publish(directory, out_dir)
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _int8_skipped(candidates: tuple[str, ...], options: BuildOptions, info: ModelInfo) -> dict[str, str]:
    """Why int8 is not built (``{"int8": reason}``), or {} when it is not offered or can be built."""
    if "int8" not in candidates:
        return {}
    if options.validation_data is None:
        return {"int8": "skipped: int8 needs validation data for the accuracy gate (model.validation_data)"}
    if options.calibration is None and not options.calibration_data and not info.has_qdq:
        return {"int8": "skipped: int8 needs calibration (model.calibration or model.calibration_data)"}
    return {}


def _build_candidates(model: Path, work: Path, options: BuildOptions, candidates: tuple[str, ...],
                      notes: dict[str, str], progress: ProgressArg) -> dict[str, Path]:
    """Build each candidate not in ``notes`` under ``work``; a failed one (fp32 aside: it raises) goes in ``notes``.

    int8 passes the fidelity gate here (with mixed precision unless it is off); one that fails it even so is
    noted and built all-int8 without the gate, so that it is still measured. Every candidate is gated again on
    the validation data (:func:`_gate_candidates`)."""
    built: dict[str, Path] = {}
    for precision in candidates:
        if precision in notes:
            continue
        candidate = options.model_copy(update={"precision": precision, "validation_data": None})
        try:
            try:
                build_artifact(model, work / precision, candidate, progress=progress)
            except FidelityGateError as e:  # even with mixed precision, when allowed
                notes[precision] = f"failed the fidelity gate: {e}"
                log.warning("precision auto: %s candidate fails the fidelity gate: %s", precision, e)
                build_artifact(model, work / precision, candidate.model_copy(update={"fidelity": False}),
                               progress=progress)
            built[precision] = work / precision
        except LeptonError as e:
            if precision == "fp32":
                raise
            notes[precision] = f"build failed: {e}"
            log.warning("precision auto: %s candidate failed to build: %s", precision, e)
    return built


def _gate_candidates(model: Path, built: dict[str, Path], options: BuildOptions,
                     notes: dict[str, str]) -> dict[str, Any]:
    """Compare each built candidate but fp32 with the model; one that fails the accuracy gate, or (int8) the
    fidelity gate on the same data, goes in ``notes``."""
    if options.validation_data is None:
        return {}
    others = {p: d for p, d in built.items() if p != "fp32"}
    reports: dict[str, Any] = {}
    if others:
        reports = compare_many(model, others, Path(options.validation_data), samples=options.validation_samples,
                               preprocess=options.preprocess)
    for precision, report in reports.items():
        try:
            accuracy_gate(report, options.max_accuracy_drop)
        except ModelError as e:
            notes[precision] = f"failed the accuracy gate: {e}"
            continue
        if precision == "int8" and options.fidelity:
            data = FidelityData(str(options.validation_data), f"validation data {options.validation_data}", True)
            try:
                check_fidelity(report.fidelity, fidelity_minimums(report.fidelity.task, options), data)
            except ModelError as e:
                notes[precision] = f"failed the fidelity gate: {e}"
    return reports


def _measure_candidates(built: dict[str, Path], target: str, rounds: int, round_s: float) -> dict[str, Any]:
    """Inferences per second of every built candidate, measured in interleaved rounds."""
    backends = {}
    try:
        for precision, directory in built.items():
            backends[precision] = open_artifact(directory, backend_config_for(target, warmup_runs=1),
                                                in_pipeline=False)
        return measure_throughput(backends, rounds=rounds, round_s=round_s)
    finally:
        for backend in backends.values():
            backend.close()


def _candidate_results(candidates: tuple[str, ...], built: dict[str, Path], reports: dict[str, Any],
                       rates: dict[str, Any], notes: dict[str, str]) -> list[CandidateMeasurement]:
    """Every candidate's speed, accuracy and verdict, in candidate order (fp32 takes the comparisons' reference)."""
    reference = next(iter(reports.values()), None)
    results = []
    for precision in candidates:
        report = reports.get(precision)
        accuracy = report.candidate_value if report else (
            reference.reference_value if precision == "fp32" and reference else None)
        results.append(CandidateMeasurement(
            precision=precision, fps=rates.get(precision, {}).get("fps"), accuracy=accuracy,
            drop=report.drop if report else (0.0 if accuracy is not None else None),
            passed=precision in built and precision not in notes, note=notes.get(precision)))
    return results


def _record_choice(directory: Path, report: Any, max_drop: float, measurements: Measurements) -> Manifest:
    """Add the chosen candidate's accuracy and every candidate's measurement to its manifest."""
    manifest = read_manifest(directory)
    if report is not None:
        manifest.accuracy = AccuracyInfo(metric=report.metric, reference=report.reference_value,
                                         value=report.candidate_value, drop=report.drop, max_drop=max_drop,
                                         samples=report.samples, data_sha256=report.data_sha256)
    manifest.measurements = measurements
    write_manifest(directory, manifest)
    return manifest
