"""Classification: softmax, the already-probabilities case, top-k and output shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lepton_edge.config.pipeline import ClassifyConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.postprocess.classify import ClassificationPostprocessor, is_probability_vector, softmax, top_k
from lepton_edge.runtime.preprocess import Transform

IDENTITY = Transform.identity(8, 8)
LABELS = ("cat", "dog", "fox", "owl")


def cfg(**kw) -> ClassifyConfig:
    return ClassifyConfig(type="classify", **kw)


def hand_softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_logits_get_softmax_and_top_k_best_first():
    logits = [1.0, 3.0, 2.0, 0.0]
    result = top_k(np.array([logits], np.float32), cfg(top_k=3), LABELS)
    probs = hand_softmax(logits)
    assert result.class_ids.tolist() == [1, 2, 0]
    np.testing.assert_allclose(result.scores, [probs[1], probs[2], probs[0]], rtol=1e-6)
    assert [result.label(int(c)) for c in result.class_ids] == ["dog", "fox", "cat"]
    assert result.to_dict()["classes"][0] == {"label": "dog", "class_id": 1, "score": round(probs[1], 4)}


def test_softmax_is_numerically_stable():
    probs = softmax(np.array([1000.0, 1001.0, -1000.0], np.float32))
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs, [1 / (1 + math.e), math.e / (1 + math.e), 0.0], atol=1e-6)


def test_probabilities_are_kept_when_softmax_is_auto():
    probs = np.array([[0.1, 0.6, 0.3]], np.float32)
    result = top_k(probs, cfg(top_k=2))
    assert result.class_ids.tolist() == [1, 2]
    np.testing.assert_allclose(result.scores, [0.6, 0.3])
    # Forced softmax changes them.
    forced = top_k(probs, cfg(top_k=1, softmax=True))
    np.testing.assert_allclose(forced.scores, [hand_softmax([0.1, 0.6, 0.3])[1]], rtol=1e-6)


def test_softmax_false_reports_raw_values():
    result = top_k(np.array([[2.5, -1.0, 7.0]], np.float32), cfg(top_k=2, softmax=False))
    assert result.class_ids.tolist() == [2, 0]
    np.testing.assert_allclose(result.scores, [7.0, 2.5])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.5, 0.5005], True),  # sum within 1e-3
        ([0.5, 0.502], False),  # sum 1.002: logits that happen to be small
        ([1.2, -0.2], False),  # sums to 1 but outside [0, 1]
        ([0.0, 0.0, 1.0], True),
        ([0.2, 0.3], False),
    ],
)
def test_probability_vector_detection(values, expected):
    assert is_probability_vector(np.array(values, np.float32)) is expected


@pytest.mark.parametrize("shape", [(4,), (1, 4), (1, 4, 1, 1)])
def test_output_shapes_are_squeezed(shape):
    logits = np.array([0.0, 5.0, 1.0, 2.0], np.float32).reshape(shape)
    post = ClassificationPostprocessor(cfg(top_k=2), [TensorSpec("out", shape, np.dtype(np.float32))], LABELS)
    result = post([logits], IDENTITY)
    assert result.class_ids.tolist() == [1, 3]


def test_top_k_larger_than_class_count_and_float16():
    result = top_k(np.array([[0.0, 2.0, 1.0]], np.float16), cfg(top_k=10))
    assert result.class_ids.tolist() == [1, 2, 0]
    assert result.scores.dtype == np.float32
    assert float(result.scores.sum()) == pytest.approx(1.0, abs=1e-6)


def test_top_k_on_many_classes_matches_full_sort():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 1000)).astype(np.float32)
    result = top_k(logits, cfg(top_k=5))
    assert result.class_ids.tolist() == np.argsort(-logits[0])[:5].tolist()
    assert np.all(np.diff(result.scores) <= 0)


def test_bad_shapes_raise_model_error():
    with pytest.raises(ModelError, match=r"one class axis .* got shape \(1, 2, 3\)"):
        top_k(np.zeros((1, 2, 3), np.float32), cfg())
    with pytest.raises(ModelError, match=r"exactly one model output, got 2: a \[1, 10\], b \[1, 4\]"):
        ClassificationPostprocessor(cfg(), [TensorSpec("a", (1, 10), np.dtype(np.float32)),
                                            TensorSpec("b", (1, 4), np.dtype(np.float32))])
    with pytest.raises(ModelError, match=r"out \[1, 84, 8400\] has more than one class axis"):
        ClassificationPostprocessor(cfg(), [TensorSpec("out", (1, 84, 8400), np.dtype(np.float32))])
