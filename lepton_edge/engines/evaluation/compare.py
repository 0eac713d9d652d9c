"""Compare a candidate engine with its fp32 reference; the accuracy gate.

Both models see the same inputs: images through the runtime's own :class:`Preprocessor` (configured from
the reference model's metadata), recorded tensors as they are. The data is a labelled held-out set
(``datasets.load_labelled``) or anything the runtime reads as a source (an image or folder, a video, a
``.npy``/``.npz`` recording). The report has, per output, cosine similarity and absolute and relative error;
label-free fidelity (``fidelity.py``: mAP@0.5 against the reference's own detections and the boxes kept,
top-1 agreement, thresholded agreement); and, with labels, the task metric of both models: top-1 accuracy
for classifiers, mAP@0.5 for detectors (through the runtime's detection postprocessor at confidence 0.001).
"""

from __future__ import annotations

import hashlib
import logging
import math
import statistics
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.config.pipeline import (
    BackendConfig,
    DetectConfig,
    InputsConfig,
    ObbConfig,
    OnnxRuntimeBackendConfig,
    PoseConfig,
    PreprocessConfig,
    SegmentConfig,
    SourceConfig,
)
from lepton_edge.core.errors import ConfigError, ModelError, SourceError
from lepton_edge.engines.artifacts import backend_config_for, open_artifact, read_manifest
from lepton_edge.engines.evaluation.accuracy import mean_average_precision, top1_accuracy
from lepton_edge.engines.evaluation.datasets import load_labelled
from lepton_edge.engines.evaluation.fidelity import (
    DETECTION_TASKS,
    FidelityReport,
    OutputDiff,
    OutputErrors,
    classification_report,
    detection_report,
    raw_report,
)
from lepton_edge.runtime.assembly import preprocess_from_metadata
from lepton_edge.runtime.backends import create_backend
from lepton_edge.runtime.backends.base import Backend
from lepton_edge.runtime.input_size import ARTIFACT_PREPROCESS_KEY, feed_shape
from lepton_edge.runtime.inputs import InputState, fill_recorded, plan_inputs
from lepton_edge.runtime.labels import labels_from_metadata
from lepton_edge.runtime.postprocess import create_postprocessor, infer_task
from lepton_edge.runtime.postprocess.classify import class_vector
from lepton_edge.runtime.preprocess import Preprocessor, Transform
from lepton_edge.runtime.sources import Source, create_source

__all__ = [
    "CompareReport",
    "FidelityReport",
    "OutputDiff",
    "accuracy_gate",
    "compare",
    "compare_many",
    "measure_throughput",
    "open_engine",
    "sample_feeds",
]

log = logging.getLogger(__name__)

EVAL_CONF_THRESHOLD = 0.001
EVAL_MAX_DETECTIONS = 100
METRIC_NAMES = {"classify": "top-1", **{task: "mAP@0.5" for task in DETECTION_TASKS}}
DECODERS = {"detect": DetectConfig, "segment": SegmentConfig, "pose": PoseConfig, "obb": ObbConfig}
"""Each detection-family task's decoder config, run at the evaluation threshold."""
LABELLED_FORMATS = "labelled data (.npz with 'labels' or 'boxes', shapes .json; docs/build.md)"


@dataclass
class CompareReport:
    """Result of :func:`compare`. Metric values are fractions (0..1); ``drop`` is in points (x100).

    Without labels (``labelled`` False) the metric values are NaN and ``fidelity`` is the verdict.
    """

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
    """Classifiers with labels: fraction of samples where both models give the same top-1 class."""
    outputs: list[OutputDiff] = field(default_factory=list)
    fidelity: FidelityReport | None = None
    """The candidate against the reference's own outputs; computed with or without labels."""
    labelled: bool = True

    @property
    def drop(self) -> float:
        """Points the candidate loses against the reference (negative when it is better)."""
        return (self.reference_value - self.candidate_value) * 100.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["drop"] = self.drop
        if not self.labelled:
            out.update(reference_value=None, candidate_value=None, drop=None)
        return out

    def format(self) -> str:
        """A human-readable table."""
        lines = [
            f"reference {self.reference_name}: {self.reference}",
            f"candidate {self.candidate_name}: {self.candidate}",
            f"data: {self.data} ({self.samples} samples, {self.task}{'' if self.labelled else ', no labels'})",
        ]
        if self.labelled:
            lines.append(f"{self.metric}: reference {self.reference_value:.4f}  candidate "
                         f"{self.candidate_value:.4f}  drop {self.drop:+.2f} points")
        if self.agreement is not None:
            lines.append(f"top-1 agreement: {self.agreement:.4f}")
        if self.fidelity is not None:
            lines.append(self.fidelity.format())
        lines.append(f"{'output':<24} {'cosine mean':>12} {'cosine min':>12} {'max abs err':>12} "
                     f"{'mean abs err':>12} {'max rel err':>12} {'mean rel err':>12} {'agreement':>10}")
        for o in self.outputs:
            lines.append(f"{o.name:<24} {o.cosine_mean:>12.6f} {o.cosine_min:>12.6f} {o.max_abs_error:>12.6g} "
                         f"{o.mean_abs_error:>12.6g} {o.max_rel_error:>12.6g} {o.mean_rel_error:>12.6g} "
                         f"{o.agreement:>10.4f}")
        return "\n".join(lines)


def accuracy_gate(report: CompareReport, max_drop: float) -> None:
    """Raise ModelError when the candidate loses more than ``max_drop`` points against the reference."""
    if not report.labelled:
        raise ModelError(
            f"{report.data}: the accuracy gate needs {LABELLED_FORMATS}; this data has no labels, so only the "
            "fidelity figures are reported"
        )
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
# Reading data: labelled sets, or anything the runtime reads as a source
# ----------------------------------------------------------------------------------------------

@dataclass
class _Samples:
    """Frames with their labels (None without) and how they reach the model."""

    items: Iterator[tuple[np.ndarray, Any]]
    kind: str
    """"image": preprocessed like the runtime does; "tensor": recorded tensors, fed as they are."""
    task: str | None
    """The labelled set's task; None for unlabelled data."""
    sha256: str
    close: Callable[[], None]


LABELLED_SUFFIXES = frozenset({".json", ".yaml", ".yml"})
DATA_YAML_NAMES = ("data.yaml", "data.yml")


def _is_labelled(path: Path) -> bool:
    """A .json or .yaml set (``data.yaml:val`` too), a folder holding a data.yaml, or a .npz holding labels or
    boxes; anything else (a .npz without them is a tensor recording) is read as a source."""
    if path.is_dir():
        return any((path / name).is_file() for name in DATA_YAML_NAMES)
    base, colon, _ = str(path).rpartition(":")
    suffix = Path(base if colon and not path.exists() else path).suffix.lower()
    if suffix in LABELLED_SUFFIXES:
        return True
    if suffix != ".npz" or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return bool({"labels.npy", "boxes.npy"} & set(archive.namelist()))


def _open_samples(data: str, samples: int | None) -> _Samples:
    if _is_labelled(Path(data)):
        dataset = load_labelled(data)
        return _Samples(dataset.take(samples), "image", dataset.task, dataset.sha256, lambda: None)
    source = _open_source(data)
    if not source.finite and samples is None:
        source.close()
        raise ConfigError(f"{data}: a live or endless source; give the number of samples to compare (--samples N)")
    return _Samples(_frames(source, samples), source.kind, None, _content_sha256(data), source.close)


def _open_source(data: str) -> Source:
    try:
        source = create_source(SourceConfig(uri=data))
        source.open()
    except SourceError as e:
        raise ConfigError(f"{data}: neither {LABELLED_FORMATS} nor a source the runtime can read: {e}") from None
    return source


def _frames(source: Source, samples: int | None) -> Iterator[tuple[np.ndarray, None]]:
    count = 0
    while samples is None or count < samples:
        frame = source.read()
        if frame is None:
            return
        count += 1
        yield frame, None


def _content_sha256(data: str) -> str:
    """sha256 of a file's bytes, of a folder's file names and bytes (name order), else of the URI itself."""
    digest = hashlib.sha256()
    path = Path(data)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        digest.update(data.encode())
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class _Feeder:
    """Fills the model's per-frame inputs (``buffers``: the image, or the recorded arrays) from one frame, the way
    the runtime does; returns the geometry. Constants and state are added per model (:class:`InputState`)."""

    def __init__(self, backend: Backend, kind: str, preprocess: PreprocessConfig | None,
                 inputs: InputsConfig | None = None) -> None:
        self.plan = plan_inputs(backend.inputs, backend.outputs, inputs, source="image" if kind == "image" else
                                "tensor", where=backend.name)
        self.pre: Preprocessor | None = None
        self.buffers: dict[str, np.ndarray] = {}
        if kind == "image":
            assert self.plan.image is not None
            spec = self.plan.image
            config = preprocess_from_metadata(preprocess or PreprocessConfig(), backend.metadata)
            self.pre = Preprocessor(spec, config, metadata=backend.metadata)
            self.buffers[spec.name] = self.pre.new_buffer()
        else:
            for name in self.plan.recorded:
                spec = self.plan.specs[name]
                shape = feed_shape(spec, backend.metadata) or tuple(
                    d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
                self.buffers[name] = np.zeros(shape, spec.dtype)

    @property
    def buffer(self) -> np.ndarray:
        """The first per-frame input (one-input models: the only one)."""
        return next(iter(self.buffers.values()))

    def __call__(self, frame: np.ndarray | dict[str, np.ndarray]) -> Transform:
        if self.pre is not None and self.plan.image is not None:
            return self.pre(frame, self.buffers[self.plan.image.name])
        fill_recorded(self.plan, frame, self.buffers)
        height, width = frame.shape[:2] if isinstance(frame, np.ndarray) and frame.ndim >= 2 else (1, 1)
        return Transform.identity(width, height)


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


class _Tally:
    """Per-output differences and task predictions of one model against the reference."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.errors = [OutputErrors(name) for name in names]
        self.predictions: list[Any] = []

    def add(self, ref: list[np.ndarray], got: list[np.ndarray]) -> None:
        for i, (r, g) in enumerate(zip(ref, got, strict=True)):
            if np.shape(r) != np.shape(g):
                raise ModelError(
                    f"output {self.names[i]!r} has shape {list(np.shape(g))} in the candidate but "
                    f"{list(np.shape(r))} in the reference; they are not the same model"
                )
            self.errors[i].add(r, g)

    def diffs(self) -> list[OutputDiff]:
        return [errors.diff() for errors in self.errors]


def _postprocessor(task: str, reference: Backend, backend: Backend) -> Callable[[list[np.ndarray], Any], Any]:
    if task == "classify":
        return lambda outputs, transform: np.array(class_vector(outputs[0]))
    if task == "raw":
        return lambda outputs, transform: None
    metadata = {**reference.metadata, **backend.metadata}
    config = DECODERS[task](type=task, conf_threshold=EVAL_CONF_THRESHOLD, max_detections=EVAL_MAX_DETECTIONS)
    return create_postprocessor(config, backend.outputs, metadata, labels_from_metadata(metadata))


def _check_task(task: str, reference: Backend, data_path: str) -> None:
    model_task = infer_task(reference.outputs, reference.metadata)
    if model_task != task and model_task != "raw":
        kinds = {"classify": "classification", "detect": "detection"}
        raise ConfigError(
            f"{data_path}: this is a {kinds[task]} set but the reference model is a {model_task} model; "
            "give held-out data of the model's task"
        )


def _task(inputs: _Samples, reference: Backend, data_path: str) -> str:
    """The reference model's own task when the data has no labels or detection labels (a segmenter, pose or obb
    model is decoded as what it is and scored on its boxes), else the labelled set's, checked against the model."""
    model_task = infer_task(reference.outputs, reference.metadata)
    if inputs.task is None or (inputs.task == "detect" and model_task in DETECTION_TASKS):
        return model_task
    _check_task(inputs.task, reference, data_path)
    return inputs.task


def _metric(task: str, predictions: list[Any], labels: list[Any]) -> float:
    if task == "classify":
        return top1_accuracy(np.array(predictions), np.array(labels))
    num_classes = 1 + max(
        [int(c.max()) for _, c in labels if len(c)] + [int(d.class_ids.max()) for d in predictions if len(d)] + [0]
    )
    return mean_average_precision(predictions, labels, num_classes)["map"]


def _fidelity(task: str, reference: list[Any], tally: _Tally) -> FidelityReport:
    outputs = tally.diffs()
    if task in DETECTION_TASKS:
        return detection_report(reference, tally.predictions, outputs, task=task)
    if task == "classify":
        return classification_report(reference, tally.predictions, outputs)
    return raw_report(outputs, len(reference))


@dataclass
class _Run:
    """Everything one pass over the data collects."""

    task: str
    reference: list[Any]
    labels: list[Any]
    tallies: dict[str, _Tally]


def _state_of(backend: Backend, kind: str, inputs: InputsConfig | None) -> InputState:
    return InputState(plan_inputs(backend.inputs, backend.outputs, inputs,
                                  source="image" if kind == "image" else "tensor", where=backend.name))


def _run(task: str, inputs: _Samples, ref: Backend, cands: dict[str, _Opened],
         preprocess: PreprocessConfig | None, model_inputs: InputsConfig | None = None) -> _Run:
    """Both models on every sample: reference predictions, labels, and each candidate's tally.

    Each model keeps its own constants and state (``model_inputs``): a stateful candidate runs on its own fed-back
    state, so its errors accumulate as they would on the device."""
    feed = _Feeder(ref, inputs.kind, preprocess, model_inputs)
    ref_state = _state_of(ref, inputs.kind, model_inputs)
    cand_states = {key: _state_of(c.backend, inputs.kind, model_inputs) for key, c in cands.items()}
    ref_post = _postprocessor(task, ref, ref)
    posts = {key: _postprocessor(task, ref, c.backend) for key, c in cands.items()}
    run = _Run(task, [], [], {key: _Tally([s.name for s in ref.outputs]) for key in cands})
    for frame, label in inputs.items:
        transform = feed(frame)
        ref_out = ref.infer(ref_state.feeds(feed.buffers))
        ref_state.update(ref_out)
        run.reference.append(ref_post(ref_out, transform))
        run.labels.append(label)
        for key, cand in cands.items():
            specs = {s.name: s for s in cand.backend.inputs}
            buffers = {name: b if b.dtype == specs[name].dtype else b.astype(specs[name].dtype)
                       for name, b in feed.buffers.items()}
            state = cand_states[key]
            out = cand.backend.infer(state.feeds(buffers))
            state.update(out)
            run.tallies[key].add(ref_out, out)
            run.tallies[key].predictions.append(posts[key](out, transform))
    return run


def _reports(run: _Run, inputs: _Samples, reference: Path, reference_name: str, data: str,
             cands: dict[str, _Opened]) -> dict[str, CompareReport]:
    labelled = inputs.task is not None
    nan = float("nan")
    ref_value = _metric(run.task, run.reference, run.labels) if labelled else nan
    reports = {}
    for key, cand in cands.items():
        tally = run.tallies[key]
        fidelity = _fidelity(run.task, run.reference, tally)
        reports[key] = CompareReport(
            reference=str(reference), candidate=cand.where, reference_name=reference_name,
            candidate_name=cand.name, data=data, data_sha256=inputs.sha256, task=run.task,
            samples=len(run.labels), metric=METRIC_NAMES.get(run.task, "none"), reference_value=ref_value,
            candidate_value=_metric(run.task, tally.predictions, run.labels) if labelled else nan,
            agreement=fidelity.agreement if labelled and run.task == "classify" else None,
            outputs=tally.diffs(), fidelity=fidelity, labelled=labelled,
        )
    return reports


def compare_many(
    reference: Path,
    candidates: dict[str, Path | Backend],
    data: str | Path,
    *,
    samples: int | None = None,
    preprocess: PreprocessConfig | None = None,
    backend_config: BackendConfig | None = None,
    reference_name: str = "fp32",
    inputs: InputsConfig | None = None,
) -> dict[str, CompareReport]:
    """:func:`compare` for several candidates in one pass over the data (the reference runs once)."""

    model_inputs = inputs
    inputs = _open_samples(str(data), samples)
    opened: list[_Opened] = []
    try:
        ref = _open(Path(reference), reference_name, None)
        opened.append(ref)
        cands = {key: _open(value, key, backend_config) for key, value in candidates.items()}
        opened.extend(cands.values())
        task = _task(inputs, ref.backend, str(data))
        run = _run(task, inputs, ref.backend, cands, _with_recorded(preprocess, cands), model_inputs)
        if not run.labels:
            raise ConfigError(f"{data}: no samples to compare (samples={samples})")
        return _reports(run, inputs, reference, reference_name, str(data), cands)
    finally:
        inputs.close()
        for o in opened:
            if o.owned:
                o.backend.close()


def _with_recorded(preprocess: PreprocessConfig | None, cands: dict[str, _Opened]) -> PreprocessConfig | None:
    """``preprocess`` over what a candidate artifact records (the preprocessing and size it was built for), so that
    both models are fed what the candidate was built for unless the caller says otherwise."""
    for cand in cands.values():
        recorded = cand.backend.metadata.get(ARTIFACT_PREPROCESS_KEY)
        if recorded:
            return preprocess_from_metadata(preprocess or PreprocessConfig(), {ARTIFACT_PREPROCESS_KEY: recorded})
    return preprocess


def compare(
    reference: Path,
    candidate: Path | Backend,
    data: str | Path,
    *,
    samples: int | None = None,
    preprocess: PreprocessConfig | None = None,
    backend_config: BackendConfig | None = None,
    candidate_name: str | None = None,
    inputs: InputsConfig | None = None,
) -> CompareReport:
    """Run the fp32 ``reference`` ONNX and ``candidate`` (artifact dir, ONNX file or loaded Backend) on the
    same samples of ``data``; see :class:`CompareReport`.

    ``data`` is a labelled set (then the task metric of both models is measured too) or anything the
    runtime reads as a source: an image or folder of images, a video, a ``.npy``/``.npz`` recording (then
    only fidelity and per-output errors). ``samples`` limits the number of samples (all by default);
    ``backend_config`` is used to open an artifact or ONNX candidate (by default from the artifact's target).
    ``inputs`` (``model.inputs``) feeds models with several inputs: recorded arrays from a .npz, constants, state
    fed back between samples (each model its own).
    """
    key = candidate_name or "candidate"
    reports = compare_many(reference, {key: candidate}, data, samples=samples, preprocess=preprocess,
                           backend_config=backend_config, inputs=inputs)
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

def throughput_feeds(backends: dict[str, Backend], preprocess: PreprocessConfig | None = None) -> dict[str, np.ndarray]:
    """Random inputs of the first backend's inputs at the size the models run at: ``preprocess.size``, else what
    an artifact among ``backends`` records, else the first one's metadata (imgsz, lepton.preprocess); other
    dynamic dimensions 1."""
    first = next(iter(backends.values()))
    recorded = next((b.metadata[ARTIFACT_PREPROCESS_KEY] for b in backends.values()
                     if ARTIFACT_PREPROCESS_KEY in b.metadata), None)
    metadata = {**first.metadata, **({ARTIFACT_PREPROCESS_KEY: recorded} if recorded else {})}
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in first.inputs:
        shape = feed_shape(spec, metadata)
        if len(first.inputs) == 1 and preprocess is not None and preprocess.size is not None:
            shape = Preprocessor(spec, preprocess_from_metadata(preprocess, metadata), metadata=metadata).shape
        shape = shape or tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
        feeds[spec.name] = rng.random(shape).astype(spec.dtype)
    return feeds


def sample_feeds(reference: Path, data: str | Path, *, inputs: InputsConfig | None = None,
                 preprocess: PreprocessConfig | None = None) -> dict[str, np.ndarray]:
    """The first sample of ``data`` as a complete feed of ``reference`` (recorded arrays, constants, zero state):
    what a benchmark of a model with several inputs runs on, at the sizes the data gives."""
    samples = _open_samples(str(data), 1)
    try:
        ref = _open(Path(reference), None, None)
        try:
            feeder = _Feeder(ref.backend, samples.kind, preprocess, inputs)
            frame = next(iter(samples.items), None)
            if frame is None:
                raise ConfigError(f"{data}: no sample to benchmark on")
            feeder(frame[0])
            fed = _state_of(ref.backend, samples.kind, inputs).feeds(feeder.buffers)
            return {spec.name: np.array(fed[spec.name], copy=True) for spec in ref.backend.inputs}  # model order
        finally:
            ref.backend.close()
    finally:
        samples.close()


def measure_throughput(
    backends: dict[str, Backend], *, rounds: int = 5, round_s: float = 0.1, feeds: dict[str, np.ndarray] | None = None
) -> dict[str, dict[str, Any]]:
    """Inferences per second of each backend, measured in interleaved rounds on the same input.

    Every round runs each backend for about ``round_s`` seconds, in turn, so a noisy neighbour slows
    all of them alike; the result per backend is the median of its rounds. ``feeds`` defaults to
    :func:`throughput_feeds` (the size the models run at, not 1x1).
    """
    if not backends:
        return {}
    if feeds is None:
        feeds = throughput_feeds(backends)
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
