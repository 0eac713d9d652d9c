"""Calibration: run the fp32 model over a sample of a data set and record every activation's range."""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from pathlib import Path

import numpy as np

from lepton_edge import __version__
from lepton_edge.config.pipeline import InputsConfig, PreprocessConfig
from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.engines.calibration.choice import choose_ranges, full_range_tensors, warn_clipped
from lepton_edge.engines.calibration.progress import ProgressBar
from lepton_edge.engines.calibration.samples import Feeds, dataset_manifest, dataset_path, select_samples
from lepton_edge.engines.calibration.statistics import TensorStats
from lepton_edge.engines.calibration.table import METHODS, CalibrationTable, Method
from lepton_edge.engines.onnx_tools import ModelInfo, inspect_onnx

log = logging.getLogger(__name__)


def _load_with_shapes(model_path: Path):  # -> onnx.ModelProto
    """The model with its weights and inferred value types (the same inference the QDQ quantizer runs)."""
    import onnx
    from onnxruntime.quantization.quant_utils import save_and_reload_model_with_shape_infer

    model = onnx.load(str(model_path))
    try:
        return save_and_reload_model_with_shape_infer(model)
    except Exception as e:  # onnx raises several types for models its shape inference cannot handle
        raise ModelError(f"{model_path}: ONNX shape inference failed on this model: {e}") from None


def activation_tensors(model) -> list[str]:  # model: onnx.ModelProto with inferred value_info
    """Float tensors flowing between nodes (inputs and outputs included), weights excluded, in graph order."""
    from onnx import TensorProto

    types = {}
    for vi in (*model.graph.value_info, *model.graph.output, *model.graph.input):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    weights = {t.name for t in model.graph.initializer}
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    names: dict[str, None] = {}
    candidates = [vi.name for vi in model.graph.input]
    for node in model.graph.node:
        candidates += [*node.input, *node.output]
    candidates += [vi.name for vi in model.graph.output]
    for name in candidates:
        if name and name not in weights and types.get(name) in floats:
            names[name] = None
    return list(names)


def _session(model, outputs: list[str], folder: Path):  # -> onnxruntime.InferenceSession
    """A session on ``model`` that also returns every tensor in ``outputs`` (no graph optimisation, so
    every named tensor exists)."""
    import onnx
    import onnxruntime as ort

    graph_outputs = {o.name for o in model.graph.output}
    value_infos = {vi.name: vi for vi in (*model.graph.value_info, *model.graph.output)}
    for name in outputs:
        if name not in graph_outputs:
            model.graph.output.append(value_infos[name])
    path = folder / "augmented.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="augmented.onnx.data", size_threshold=1024)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises several unrelated types for bad models
        raise ModelError(f"onnxruntime cannot load the model for calibration: {str(e).strip()[:500]}") from None


def _check_arguments(method: str, samples: int, percentile: float) -> None:
    if method not in METHODS:
        raise ConfigError(f"calibration method {method!r} is unknown; use one of {', '.join(METHODS)}")
    if not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples must be a whole number of at least 1, got {samples!r}")
    if method == "percentile" and not (0 < percentile <= 100):
        raise ConfigError(f"percentile must be in (0, 100], got {percentile!r} (99.99 is typical)")


def calibrate(
    model_path: Path,
    dataset: str | Path,
    *,
    method: Method = "entropy",
    samples: int = 128,
    seed: int = 0,
    percentile: float = 99.99,
    preprocess: PreprocessConfig | None = None,
    progress: bool = True,
    inputs: InputsConfig | None = None,
) -> CalibrationTable:
    """Measure activation ranges of ``model_path`` on ``samples`` items of ``dataset``.

    Bounded activations (Sigmoid, Softmax, ...) and the graph outputs keep their observed range under every
    method; other tensors that ``method`` clips far are listed in the table's ``clipped`` (see ``choice``).

    Items are chosen with ``numpy.random.default_rng(seed)`` among all items in reading order, so the
    same inputs give the same table (only ``created_at`` differs). Images and video frames go through
    the runtime's Preprocessor configured as the runtime does (``preprocess`` merged with the model's
    ``lepton.preprocess`` metadata); tensors recorded at the model input go in unchanged. Raises
    ConfigError/SourceError for unusable data sets and ModelError for unusable models.

    ``inputs`` (``model.inputs``) gives constants and state: a stateful model runs the first ``samples`` items in
    order with its state fed back, so the state inputs are calibrated on the values they take when running.
    """
    _check_arguments(method, samples, percentile)
    model_path = Path(model_path)
    info = inspect_onnx(model_path)
    if info.has_qdq:
        raise ModelError(f"{model_path}: the model is already quantized (it has QuantizeLinear/DequantizeLinear "
                         "nodes); calibrate the fp32 model instead")
    manifest = dataset_manifest(dataset)
    feeds, indices = _sample_feeds(dataset, info, preprocess, samples, seed, inputs)
    model = _load_with_shapes(model_path)
    tensors = activation_tensors(model)
    full_range = full_range_tensors(model)  # before _observe, which adds every tensor to the graph's outputs
    input_names = [s.name for s in info.inputs]
    computed = [t for t in tensors if t not in input_names]
    if not computed:
        raise ModelError(f"{model_path}: the model has no float activations to calibrate")
    stats = {name: TensorStats(histogram=method != "minmax") for name in tensors}
    bar = ProgressBar(len(indices), f"calibrating {model_path.name} ({method})", progress)
    input_shapes = _observe(model, computed, feeds, indices, stats, bar)
    _warn_nonfinite(stats)
    chosen = choose_ranges(stats, full_range, method, percentile)
    warn_clipped(chosen, method)
    return CalibrationTable(
        lepton_edge_version=__version__,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        model_sha256=info.sha256,
        model_name=model_path.name,
        method=method,
        percentile=float(percentile) if method == "percentile" else None,
        samples=len(indices),
        seed=seed,
        dataset=str(dataset),
        dataset_sha256=manifest["sha256"],
        preprocess=feeds.effective_preprocess(),
        input_shapes=input_shapes,
        ranges=chosen.ranges,
        clipped=chosen.clipped,
    )


def _sample_feeds(dataset: str | Path, info: ModelInfo, preprocess: PreprocessConfig | None, samples: int,
                  seed: int, inputs: InputsConfig | None = None) -> tuple[Feeds, np.ndarray]:
    """The data set's feeds and the indices of the ``samples`` items chosen with ``seed`` (all, when fewer; the
    first ``samples`` for a stateful model)."""
    kind, path = dataset_path(dataset)
    feeds = Feeds(kind, path, info.inputs, info.metadata, preprocess, inputs_config=inputs, outputs=info.outputs)
    indices = select_samples(feeds.total, samples, seed, sequence=feeds.stateful)
    if feeds.total < samples:
        log.warning("%s holds %d item(s), fewer than the %d samples asked for; using all of them",
                    path, feeds.total, samples)
    return feeds, indices


def _observe(model, computed: list[str], feeds: Feeds, indices: np.ndarray, stats: dict[str, TensorStats],
             bar: ProgressBar) -> dict[str, list[int]]:  # model: onnx.ModelProto
    """Run ``model`` on the feeds at ``indices``, adding every input and ``computed`` tensor to ``stats``;
    returns the first feed's input shapes."""
    input_shapes: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="lepton-calibrate-") as tmp:
        session = _session(model, computed, Path(tmp))
        try:
            for feed in feeds.feeds(indices):
                if not input_shapes:
                    input_shapes = {name: [int(d) for d in array.shape] for name, array in feed.items()}
                try:
                    values = session.run(computed, feed)
                except Exception as e:  # onnxruntime raises several unrelated types
                    raise ConfigError(
                        f"{feeds.path}: the model cannot run on this data (input shapes "
                        f"{ {n: list(a.shape) for n, a in feed.items()} }): {str(e).strip()[:300]}"
                    ) from None
                for name, array in feed.items():
                    if name in stats:
                        stats[name].update(array)
                for name, value in zip(computed, values, strict=True):
                    stats[name].update(value)
                feeds.update(dict(zip(computed, values, strict=True)))
                bar.step()
        finally:
            bar.close()
            del session
    return input_shapes


def _warn_nonfinite(stats: dict[str, TensorStats]) -> None:
    for name, s in stats.items():
        if s.nonfinite:
            log.warning("tensor %r produced %d NaN/inf value(s) on the calibration data; they were ignored",
                        name, s.nonfinite)
