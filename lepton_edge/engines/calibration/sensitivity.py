"""Sensitivity: how much each quantized layer of an int8 model spoils the model's final outputs.

Method: one layer at a time quantized. For each layer, onnxruntime's ``quantize_static`` quantizes the model with
every *other* layer's nodes in ``nodes_to_exclude`` (through :class:`~lepton_edge.engines.calibration.qdq.QdqQuantizer`,
the same call and ranges as the build), the result runs on a few held-out calibration items, and its outputs are
compared with the fp32 model's: the layer's sensitivity is that output error, the damage its quantization alone does
(its weights, its input and the tensors inside it). The all-int8 model's error is measured too.

Why not the converse, "each layer kept in float in the full int8 model": tried on the YOLOv8n-sized model, no single
layer removed more than 0.05% of the all-int8 error (each of 63 layers adds a little and the border tensors of a
float layer stay quantized), so that ranking was noise; quantizing one layer alone measures its own damage against a
clean float background (the established partial-quantization analysis), at the same cost: one quantization and one
session per layer.

A *layer* is a weighted node (Conv, ConvTranspose, MatMul, Gemm) with the nodes after it up to the next weighted
node (each joins the layer of the node producing its first input): a YOLOv8 Conv with its SiLU (Sigmoid, Mul), the
Split and Concat of a C2f. Ranking layers instead of nodes makes YOLOv8n 63 candidates instead of ~230, about two
minutes on two cores with 8 samples (quantization takes ~1 s of each step). Layers without a node the quantizer
handles are not ranked; nor is the decode tail, always float.

Output error (:func:`output_error`): per output feature (along the output's smallest non-batch axis: a detector's 4
box rows and 80 score rows, a classifier's classes, a segmenter's mask coefficients), the RMS difference over that
feature's spread in the fp32 outputs, averaged over features and outputs. It is scale-free, so box coordinates in
pixels do not drown 0..1 class scores, which decide what a detector reports.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lepton_edge.core.errors import ModelError
from lepton_edge.engines.calibration.progress import ProgressBar
from lepton_edge.engines.calibration.qdq import QdqQuantizer

log = logging.getLogger(__name__)

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
"""Op types that start a layer."""

SPREAD_FLOOR = 1e-3
"""A feature's spread counts as at least this share of the output's largest spread (constant features)."""

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Layer:
    """Nodes kept in float together; named after its first node."""

    name: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's effect: the output ``error`` of the model with only this layer quantized."""

    layer: Layer
    error: float


@dataclass
class SensitivityRanking:
    """Every ranked layer, most sensitive (largest error) first."""

    int8_error: float
    """Output error of the all-int8 model."""
    layers: list[LayerSensitivity]
    samples: int
    seconds: float

    def top(self, count: int) -> list[LayerSensitivity]:
        return self.layers[:count]

    def nodes(self, count: int) -> list[str]:
        """The nodes of the ``count`` most sensitive layers, for ``nodes_to_exclude``."""
        return [node for entry in self.top(count) for node in entry.layer.nodes]


def quantizable_ops() -> frozenset[str]:
    """Op types onnxruntime's quantize_static quantizes in QDQ format by default."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return frozenset(QLinearOpsRegistry) | frozenset(QDQRegistry)


def quantized_layers(model, skip: Sequence[str] = ()) -> list[Layer]:  # model: onnx.ModelProto, nodes named
    """The model's layers (see the module docstring) in graph order, without the nodes in ``skip``."""
    weights = {t.name for t in model.graph.initializer}
    producer = {out: node.name for node in model.graph.node for out in node.output if out}
    op_type = {node.name: node.op_type for node in model.graph.node}
    skipped = set(skip)
    layer_of: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for node in model.graph.node:  # topologically sorted
        if node.name in skipped:
            continue
        data = [name for name in node.input if name and name not in weights]
        parent = producer.get(data[0]) if data else None
        if node.op_type in WEIGHTED_OPS or parent not in layer_of:
            layer_of[node.name] = node.name
            members[node.name] = [node.name]
        else:
            layer_of[node.name] = layer_of[parent]
            members[layer_of[parent]].append(node.name)
    ops = quantizable_ops()
    return [Layer(name, tuple(nodes)) for name, nodes in members.items()
            if any(op_type[n] in ops for n in nodes)]


def _feature_axis(shape: tuple[int, ...]) -> int | None:
    """The axis of one sample's output that indexes its features: the smallest non-batch axis longer than 1."""
    axes = range(1, len(shape)) if len(shape) >= 2 else range(len(shape))
    sized = [(shape[a], a) for a in axes if shape[a] > 1]
    return min(sized)[1] if sized else None


def _feature_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over features of RMS(candidate - reference) / spread(reference); arrays are ``[samples, *shape]``."""
    if not reference.size:
        return 0.0
    axis = _feature_axis(reference.shape[1:])
    if axis is None:
        ref, cand = reference.reshape(1, -1), candidate.reshape(1, -1)
    else:
        ref = np.moveaxis(reference, axis + 1, 0).reshape(reference.shape[axis + 1], -1)
        cand = np.moveaxis(candidate, axis + 1, 0).reshape(reference.shape[axis + 1], -1)
    spread = ref.std(axis=1)
    floor = max(SPREAD_FLOOR * float(spread.max()), 1e-12)
    rms = np.sqrt(np.mean((cand - ref) ** 2, axis=1))
    value = float(np.mean(rms / np.maximum(spread, floor)))
    return value if np.isfinite(value) else float("inf")


def output_error(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """Scale-free error of ``candidate``'s outputs against ``reference``'s, one list of outputs per sample
    (see the module docstring); 0 when equal."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"output_error: {len(reference)} reference and {len(candidate)} candidate samples")
    errors = []
    for index in range(len(reference[0])):
        ref = np.stack([np.asarray(sample[index], np.float64) for sample in reference])
        cand = np.stack([np.asarray(sample[index], np.float64) for sample in candidate])
        errors.append(_feature_error(ref, cand))
    return float(np.mean(errors))


def _session(path: Path):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises several unrelated types
        raise ModelError(f"{path}: onnxruntime cannot load the model to rank layers: {str(e).strip()[:300]}") from None


def _outputs(path: Path, feeds: list[Feed]) -> list[list[np.ndarray]]:
    session = _session(path)
    try:
        return [session.run(None, feed) for feed in feeds]
    finally:
        del session


class SensitivityAnalysis:
    """Ranks the layers of one model quantized by ``quantizer`` on ``feeds`` (model input name -> array)."""

    def __init__(self, quantizer: QdqQuantizer, feeds: list[Feed]) -> None:
        if not feeds:
            raise ModelError(f"{quantizer.model_path}: no samples to rank the int8 layers on")
        self.quantizer, self.feeds = quantizer, feeds
        self.layers = quantized_layers(quantizer.model, quantizer.tail)

    def rank(self, *, progress: bool = True) -> SensitivityRanking:
        """Quantize and run the model once per layer with only that layer int8; most sensitive layer first."""
        started = time.monotonic()
        reference = _outputs(self.quantizer.model_path, self.feeds)
        with tempfile.TemporaryDirectory(prefix="lepton-sensitivity-") as tmp:
            int8_error = self._error(reference, Path(tmp), ())
            bar = ProgressBar(len(self.layers), f"ranking {len(self.layers)} int8 layers", progress)
            measured = []
            try:
                every = [node for layer in self.layers for node in layer.nodes]
                for layer in self.layers:
                    alone = set(layer.nodes)
                    error = self._error(reference, Path(tmp), [node for node in every if node not in alone])
                    measured.append(LayerSensitivity(layer, error))
                    bar.step()
            finally:
                bar.close()
        order = sorted(range(len(measured)), key=lambda i: (-measured[i].error, i))
        ranking = SensitivityRanking(int8_error, [measured[i] for i in order], len(self.feeds),
                                     time.monotonic() - started)
        log.debug("sensitivity: int8 error %.4g; top layers %s", int8_error,
                  [(s.layer.name, round(s.error, 4)) for s in ranking.top(5)])
        return ranking

    def _error(self, reference: list[list[np.ndarray]], folder: Path, keep_float: Sequence[str]) -> float:
        path = self.quantizer.write(folder / "variant.onnx", keep_float, check=False)
        return output_error(reference, _outputs(path, self.feeds))
