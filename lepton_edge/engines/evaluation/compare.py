"""Compare a candidate engine with its fp32 reference on labelled held-out data; the accuracy gate.

Both models see the same preprocessed inputs (the runtime's own :class:`Preprocessor`, configured from
the reference model's metadata). The report has, per output, the cosine similarity and the largest
absolute difference, and the task metric against the labels for both models: top-1 accuracy (plus
the agreement of the two) for classifiers, mAP@0.5 for detectors (through the runtime's detection
postprocessor at confidence 0.001).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.config.pipeline import BackendConfig, DetectConfig, OnnxRuntimeBackendConfig, PreprocessConfig
from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.engines.artifacts import backend_config_for, open_artifact, read_manifest
from lepton_edge.engines.evaluation.accuracy import mean_average_precision, top1_accuracy
from lepton_edge.engines.evaluation.datasets import load_labelled
from lepton_edge.runtime.assembly import preprocess_from_metadata
from lepton_edge.runtime.backends import create_backend
from lepton_edge.runtime.backends.base import Backend
from lepton_edge.runtime.labels import labels_from_metadata
from lepton_edge.runtime.postprocess import create_postprocessor, infer_task
from lepton_edge.runtime.postprocess.classify import class_vector
from lepton_edge.runtime.preprocess import Preprocessor

log = logging.getLogger(__name__)

EVAL_CONF_THRESHOLD = 0.001
EVAL_MAX_DETECTIONS = 100
METRIC_NAMES = {"classify": "top-1", "detect": "mAP@0.5"}


@dataclass
class OutputDiff:
    """How far one candidate output is from the reference output, over all samples."""

    name: str
    cosine_mean: float
    cosine_min: float
    max_abs_error: float


@dataclass
class CompareReport:
    """Result of :func:`compare`. Metric values are fractions (0..1); ``drop`` is in points (x100)."""

    reference: str
    candidate: str
    reference_name: str
    candidate_name: str
    data: str
    data_sha256: str
    task: str
    samples: int
    metric: str
    reference_value: float
    candidate_value: float
    agreement: float | None = None
    """Classifiers: fraction of samples where both models give the same top-1 class."""
    outputs: list[OutputDiff] = field(default_factory=list)

    @property
    def drop(self) -> float:
        """Points the candidate loses against the reference (negative when it is better)."""
        return (self.reference_value - self.candidate_value) * 100.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["drop"] = self.drop
        return out

    def format(self) -> str:
        """A human-readable table."""
        lines = [
            f"reference {self.reference_name}: {self.reference}",
            f"candidate {self.candidate_name}: {self.candidate}",
            f"data: {self.data} ({self.samples} samples, {self.task})",
            f"{self.metric}: reference {self.reference_value:.4f}  candidate {self.candidate_value:.4f}  "
            f"drop {self.drop:+.2f} points",
        ]
        if self.agreement is not None:
            lines.append(f"top-1 agreement: {self.agreement:.4f}")
        lines.append(f"{'output':<24} {'cosine mean':>12} {'cosine min':>12} {'max abs err':>12}")
        for o in self.outputs:
            lines.append(f"{o.name:<24} {o.cosine_mean:>12.6f} {o.cosine_min:>12.6f} {o.max_abs_error:>12.6g}")
        return "\n".join(lines)


def accuracy_gate(report: CompareReport, max_drop: float) -> None:
    """Raise ModelError when the candidate loses more than ``max_drop`` points against the reference."""
    if not math.isfinite(report.reference_value) or not math.isfinite(report.candidate_value):
        raise ModelError(
            f"{report.data}: {report.metric} is undefined on this data (no labelled objects?); the accuracy "
            "gate needs labelled samples: check the validation data"
        )
    if report.drop > max_drop + 1e-9:
        raise ModelError(
            f"{report.candidate_name} {report.metric} is {report.candidate_value:.3f}, {report.drop:.1f} points "
            f"below {report.reference_name} {report.reference_value:.3f}; allowed drop {max_drop:g}. "
            f"(data: {report.data}, {report.samples} samples). Try another calibration method or more "
            "calibration samples, a larger max_accuracy_drop, or a higher precision."
        )


# ----------------------------------------------------------------------------------------------
# Running models
# ----------------------------------------------------------------------------------------------

@dataclass
class _Opened:
    backend: Backend
    name: str
    where: str
    owned: bool


def _open(model: Path | Backend, name: str | None, backend_config: BackendConfig | None) -> _Opened:
    """A loaded backend for an artifact dir, an ONNX file, or an already loaded Backend."""
    if isinstance(model, Backend):
        return _Opened(model.load(), name or model.name, getattr(model, "model_path", model.name), False)
    path = Path(model)
    if path.is_dir():
        manifest = read_manifest(path)
        config = backend_config or backend_config_for(manifest.target, warmup_runs=0)
        backend = open_artifact(path, config, in_pipeline=False)
        return _Opened(backend, name or manifest.precision, str(path), True)
    if not path.is_file():
        raise ModelError(f"{path}: model not found (expected an ONNX file or an artifact directory)")

    config = backend_config or OnnxRuntimeBackendConfig(warmup_runs=0)
    return _Opened(create_backend(path, config).load(), name or path.name, str(path), True)


def open_engine(path: str | Path) -> Backend:
    """A loaded backend for an artifact directory or an ONNX file; the caller closes it."""
    return _open(Path(path), None, None).backend


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(-1).astype(np.float64)
    b = b.reshape(-1).astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


class _Tally:
    """Per-output differences and task predictions of one model against the reference."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.cosines: list[list[float]] = [[] for _ in names]
        self.max_abs = [0.0] * len(names)
        self.predictions: list[Any] = []

    def add(self, ref: list[np.ndarray], got: list[np.ndarray]) -> None:
        for i, (r, g) in enumerate(zip(ref, got, strict=True)):
            r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
            if r64.shape != g64.shape:
                raise ModelError(
                    f"output {self.names[i]!r} has shape {list(g64.shape)} in the candidate but "
                    f"{list(r64.shape)} in the reference; they are not the same model"
                )
            self.cosines[i].append(_cosine(r64, g64))
            if r64.size:
                self.max_abs[i] = max(self.max_abs[i], float(np.max(np.abs(r64 - g64))))

    def diffs(self) -> list[OutputDiff]:
        return [
            OutputDiff(name, float(np.mean(c)) if c else float("nan"), float(np.min(c)) if c else float("nan"),
                       self.max_abs[i])
            for i, (name, c) in enumerate(zip(self.names, self.cosines, strict=True))
        ]


def _postprocessor(task: str, reference: Backend, backend: Backend) -> Callable[[list[np.ndarray], Any], Any]:
    if task == "classify":
        return lambda outputs, transform: int(np.argmax(class_vector(outputs[0])))
    metadata = {**reference.metadata, **backend.metadata}
    config = DetectConfig(type="detect", conf_threshold=EVAL_CONF_THRESHOLD, max_detections=EVAL_MAX_DETECTIONS)
    return create_postprocessor(config, backend.outputs, metadata, labels_from_metadata(metadata))


def _check_task(task: str, reference: Backend, data_path: str) -> None:
    model_task = infer_task(reference.outputs, reference.metadata)
    if model_task != task and model_task != "raw":
        kinds = {"classify": "classification", "detect": "detection"}
        raise ConfigError(
            f"{data_path}: this is a {kinds[task]} set but the reference model is a {model_task} model; "
            "give held-out data of the model's task"
        )


def _metric(task: str, predictions: list[Any], labels: list[Any]) -> float:
    if task == "classify":
        return top1_accuracy(np.array(predictions), np.array(labels))
    num_classes = 1 + max(
        [int(c.max()) for _, c in labels if len(c)] + [int(d.class_ids.max()) for d in predictions if len(d)] + [0]
    )
    return mean_average_precision(predictions, labels, num_classes)["map"]


def compare_many(
    reference: Path,
    candidates: dict[str, Path | Backend],
    data: Path,
    *,
    samples: int | None = None,
    preprocess: PreprocessConfig | None = None,
    backend_config: BackendConfig | None = None,
    reference_name: str = "fp32",
) -> dict[str, CompareReport]:
    """:func:`compare` for several candidates in one pass over the data (the reference runs once)."""

    dataset = load_labelled(data)
    opened: list[_Opened] = []
    try:
        ref = _open(Path(reference), reference_name, None)
        opened.append(ref)
        cands = {key: _open(value, key, backend_config) for key, value in candidates.items()}
        opened.extend(cands.values())
        _check_task(dataset.task, ref.backend, str(data))
        if len(ref.backend.inputs) != 1:
            raise ModelError(f"{reference}: compare feeds one image input; the model has "
                             f"{[s.name for s in ref.backend.inputs]}")
        pre = Preprocessor(ref.backend.inputs[0], preprocess_from_metadata(preprocess or PreprocessConfig(),
                                                                           ref.backend.metadata),
                           metadata=ref.backend.metadata)
        buffer = pre.new_buffer()
        ref_post = _postprocessor(dataset.task, ref.backend, ref.backend)
        posts = {key: _postprocessor(dataset.task, ref.backend, c.backend) for key, c in cands.items()}
        tallies = {key: _Tally([s.name for s in ref.backend.outputs]) for key in cands}
        ref_predictions: list[Any] = []
        labels: list[Any] = []
        ref_input = ref.backend.inputs[0].name
        for image, label in dataset.take(samples):
            transform = pre(image, buffer)
            ref_out = ref.backend.infer({ref_input: buffer})
            ref_predictions.append(ref_post(ref_out, transform))
            labels.append(label)
            for key, cand in cands.items():
                spec = cand.backend.inputs[0]
                feed = buffer if buffer.dtype == spec.dtype else buffer.astype(spec.dtype)
                out = cand.backend.infer({spec.name: feed})
                tallies[key].add(ref_out, out)
                tallies[key].predictions.append(posts[key](out, transform))
        if not labels:
            raise ConfigError(f"{data}: no samples to compare (samples={samples})")
        ref_value = _metric(dataset.task, ref_predictions, labels)
        reports = {}
        for key, cand in cands.items():
            tally = tallies[key]
            agreement = None
            if dataset.task == "classify":
                agreement = float(np.mean(np.array(tally.predictions) == np.array(ref_predictions)))
            reports[key] = CompareReport(
                reference=str(reference), candidate=cand.where, reference_name=reference_name,
                candidate_name=cand.name, data=str(data), data_sha256=dataset.sha256, task=dataset.task,
                samples=len(labels), metric=METRIC_NAMES[dataset.task], reference_value=ref_value,
                candidate_value=_metric(dataset.task, tally.predictions, labels), agreement=agreement,
                outputs=tally.diffs(),
            )
        return reports
    finally:
        for o in opened:
            if o.owned:
                o.backend.close()


def compare(
    reference: Path,
    candidate: Path | Backend,
    data: Path,
    *,
    samples: int | None = None,
    preprocess: PreprocessConfig | None = None,
    backend_config: BackendConfig | None = None,
    candidate_name: str | None = None,
) -> CompareReport:
    """Run the fp32 ``reference`` ONNX and ``candidate`` (artifact dir, ONNX file or loaded Backend) on the
    same preprocessed samples of the labelled set ``data``; see :class:`CompareReport`.

    ``samples`` limits the number of samples (all by default); ``backend_config`` is used to open an
    artifact or ONNX candidate (by default from the artifact's target).
    """
    key = candidate_name or "candidate"
    reports = compare_many(reference, {key: candidate}, data, samples=samples, preprocess=preprocess,
                           backend_config=backend_config)
    report = reports[key]
    if candidate_name is None and not isinstance(candidate, Backend):
        report.candidate_name = _open_name(Path(candidate))
    return report


def _open_name(path: Path) -> str:
    if path.is_dir():
        return read_manifest(path).precision
    return path.name


# ----------------------------------------------------------------------------------------------
# Throughput, measured side by side
# ----------------------------------------------------------------------------------------------

def measure_throughput(
    backends: dict[str, Backend], *, rounds: int = 5, round_s: float = 0.1, feeds: dict[str, np.ndarray] | None = None
) -> dict[str, dict[str, Any]]:
    """Inferences per second of each backend, measured in interleaved rounds on the same input.

    Every round runs each backend for about ``round_s`` seconds, in turn, so a noisy neighbour slows
    all of them alike; the result per backend is the median of its rounds. ``feeds`` defaults to a
    random tensor of the first backend's input shape (dynamic dims as 1).
    """
    if not backends:
        return {}
    if feeds is None:
        first = next(iter(backends.values()))
        rng = np.random.default_rng(0)
        feeds = {
            s.name: rng.random([d if isinstance(d, int) and d > 0 else 1 for d in s.shape]).astype(s.dtype)
            for s in first.inputs
        }
    per_backend: dict[str, dict[str, np.ndarray]] = {}
    for key, backend in backends.items():
        names = [s.name for s in backend.inputs]
        values = list(feeds.values())
        if len(names) != len(values):
            raise ModelError(f"{key}: expects inputs {names}, the benchmark feeds {list(feeds)}")
        per_backend[key] = {n: v.astype(s.dtype, copy=False)
                            for n, v, s in zip(names, values, backend.inputs, strict=True)}
        backend.infer(per_backend[key])  # warm up outside the timed rounds
    rates: dict[str, list[float]] = {key: [] for key in backends}
    for _ in range(rounds):
        for key, backend in backends.items():
            feed = per_backend[key]
            count, start = 0, time.perf_counter()
            deadline = start + round_s
            while True:
                backend.infer(feed)
                count += 1
                now = time.perf_counter()
                if now >= deadline:
                    break
            rates[key].append(count / (now - start))
    return {key: {"fps": statistics.median(r), "rounds": len(r), "round_s": round_s} for key, r in rates.items()}
