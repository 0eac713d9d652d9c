"""Classification: logits or probabilities to the top-k classes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lepton_edge.config.pipeline import ClassifyConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.results import Classification
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.preprocess import Transform

PROBABILITY_SUM_TOLERANCE = 1e-3


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D array (float32 or wider)."""
    shifted = logits - logits.max()
    exp = np.exp(shifted)
    return exp / exp.sum()


def is_probability_vector(values: np.ndarray) -> bool:
    """True when every value is in [0, 1] and they sum to 1 (within 1e-3)."""
    return bool(
        values.size
        and values.min() >= 0.0
        and values.max() <= 1.0
        and abs(float(values.sum(dtype=np.float64)) - 1.0) <= PROBABILITY_SUM_TOLERANCE
    )


def class_vector(output: np.ndarray) -> np.ndarray:
    """The class axis of a ``[1, C]``, ``[C]`` or ``[1, C, 1, 1]`` output as a 1-D float array."""
    values = np.squeeze(output)
    if values.ndim != 1:
        raise ModelError(
            f"classification output must have one class axis ([1, C], [C] or [1, C, 1, 1]), got shape "
            f"{output.shape}; set postprocess.type: raw to receive it unchanged"
        )
    return values.astype(np.float32, copy=False) if values.dtype != np.float64 else values


def top_k(output: np.ndarray, config: ClassifyConfig, labels: tuple[str, ...] = ()) -> Classification:
    """The ``config.top_k`` best classes of one output, best first, as probabilities when softmax applies."""
    values = class_vector(output)
    apply = config.softmax if config.softmax is not None else not is_probability_vector(values)
    probs = softmax(values) if apply else values
    k = min(config.top_k, len(probs))
    best = np.argpartition(-probs, k - 1)[:k]
    best = best[np.argsort(-probs[best], kind="stable")]
    return Classification(best, probs[best], labels)


class ClassificationPostprocessor:
    """Turns the single output of a classifier into a :class:`Classification`."""

    def __init__(
        self, config: ClassifyConfig, outputs: Sequence[TensorSpec], labels: tuple[str, ...] = ()
    ) -> None:
        if len(outputs) != 1:
            shapes = ", ".join(f"{s.name} {s.shape_str}" for s in outputs) or "(no outputs)"
            raise ModelError(
                f"classification needs exactly one model output, got {len(outputs)}: {shapes}; "
                "set postprocess.type: raw to receive them unchanged"
            )
        spec = outputs[0]
        if sum(isinstance(d, int) and d > 1 for d in spec.shape) > 1:
            raise ModelError(
                f"classification output {spec.name} {spec.shape_str} has more than one class axis; expected "
                "[1, C], [C] or [1, C, 1, 1] (set postprocess.type: raw to receive it unchanged)"
            )
        self.config = config
        self.labels = labels

    def __call__(self, outputs: list[np.ndarray], transform: Transform) -> Classification:
        return top_k(outputs[0], self.config, self.labels)
