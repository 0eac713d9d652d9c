"""Label-free fidelity: the metric functions on hand-made outputs, and compare on unlabelled data."""

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from lepton_edge.cli import compare as compare_command
from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.core.results import Detections
from lepton_edge.engines.evaluation.compare import accuracy_gate, compare
from lepton_edge.engines.evaluation.fidelity import (
    DEFAULT_CONF_THRESHOLD,
    OutputErrors,
    boxes_kept,
    classification_agreement,
    detection_fidelity,
    thresholded_agreement,
)
from lepton_edge.runtime.sources.shapes import random_sample

REPO = Path(__file__).resolve().parents[3]
SHAPES = REPO / "models" / "shapes_detector.onnx"
DIGITS = REPO / "models" / "digits_classifier.onnx"
DIGITS_HELDOUT = REPO / "models" / "digits_heldout.npz"

# Per image: two confident objects (classes 0 and 1) and three low-scoring stray boxes.
OBJECTS = np.array([[10, 10, 50, 50], [100, 80, 160, 150]], np.float32)
STRAYS = np.array([[200, 10, 230, 40], [10, 200, 40, 230], [250, 250, 290, 290]], np.float32)


def _detections(boxes: np.ndarray, scores: list[float], classes: list[int]) -> Detections:
    return Detections(boxes, np.array(scores, np.float32), np.array(classes, np.int64))


def _reference(images: int = 4) -> list[Detections]:
    boxes = np.concatenate([OBJECTS, STRAYS])
    return [_detections(boxes, [0.9, 0.8, 0.05, 0.04, 0.03], [0, 1, 0, 1, 0]) for _ in range(images)]


def test_identical_detections_are_fully_faithful():
    reference = _reference()
    found = detection_fidelity(reference, reference)
    assert found.map == pytest.approx(1.0)
    assert found.boxes_kept == 1.0 and found.reference_boxes == 8  # 2 confident boxes x 4 images
    assert DEFAULT_CONF_THRESHOLD == 0.25


def test_scores_capped_below_the_threshold_keep_nothing():
    # An int8 build whose score output saturates: every score is clipped to 0.1, strays listed first.
    boxes = np.concatenate([STRAYS, OBJECTS])
    capped = [_detections(boxes, [0.1] * 5, [0, 1, 0, 0, 1]) for _ in range(4)]
    found = detection_fidelity(_reference(), capped)
    assert found.boxes_kept == 0.0
    assert boxes_kept(_reference(), capped) == (0, 8)
    assert found.map < 0.5  # the ranking is gone: strays tie with, and come before, the objects


def test_shifted_boxes_lower_fidelity():
    reference = _reference()
    shifted = []
    for ref in reference:
        boxes = ref.boxes.copy()
        boxes[1] += 40  # the class 1 object moves: IoU with its reference box < 0.5
        shifted.append(_detections(boxes, list(ref.scores), list(ref.class_ids)))
    found = detection_fidelity(reference, shifted)
    assert found.boxes_kept == 0.5
    assert found.map == pytest.approx(0.5)  # class 0 perfect, class 1 never found


def test_wrong_class_is_not_kept():
    reference = _reference(1)
    relabelled = [_detections(reference[0].boxes, list(reference[0].scores), [1, 0, 0, 1, 0])]
    assert boxes_kept(reference, relabelled) == (0, 2)


def test_reference_without_confident_boxes_is_undefined():
    quiet = [_detections(STRAYS, [0.1, 0.1, 0.1], [0, 0, 0])]
    found = detection_fidelity(quiet, quiet)
    assert np.isnan(found.map) and np.isnan(found.boxes_kept) and found.reference_boxes == 0


def test_classification_agreement_and_top5_overlap():
    reference = [np.array([0.1, 0.5, 0.2, 0.05, 0.05, 0.04, 0.06]), np.array([0.7, 0.1, 0.1, 0.0, 0.0, 0.05, 0.05])]
    assert classification_agreement(reference, reference) == (1.0, 1.0)
    swapped = [reference[0], reference[1][::-1].copy()]  # second sample: top-1 changes, top-5 partly kept
    top1, overlap = classification_agreement(reference, swapped)
    assert top1 == 0.5
    assert 0.5 < overlap < 1.0
    with pytest.raises(ValueError, match="same number"):
        classification_agreement(reference, reference[:1])


def test_thresholded_agreement_of_raw_outputs():
    probabilities = np.array([0.1, 0.4, 0.6, 0.9])
    assert thresholded_agreement(probabilities, probabilities) == 1.0
    assert thresholded_agreement(probabilities, probabilities * 0.5) == 0.5  # 0.6 and 0.9 fall below 0.5
    logits = np.array([-2.0, -0.1, 0.3, 4.0])
    assert thresholded_agreement(logits, logits + 0.2) == 0.75  # sign: -0.1 becomes positive


def test_output_errors_absolute_relative_and_agreement():
    errors = OutputErrors("probs")
    reference = np.array([0.2, 0.8, 0.6, 0.0])
    errors.add(reference, reference * 0.5)
    diff = errors.diff()
    assert diff.max_abs_error == pytest.approx(0.4) and diff.mean_abs_error == pytest.approx(0.2)
    assert diff.max_rel_error == pytest.approx(0.5) and diff.mean_rel_error == pytest.approx(0.5)
    assert diff.threshold == 0.5 and diff.agreement == 0.5
    assert diff.cosine_min == pytest.approx(1.0)  # scaling leaves the cosine untouched


# ----------------------------------------------------------------------------------------------
# compare on unlabelled data
# ----------------------------------------------------------------------------------------------

def scaled_scores(path: Path, factor: float = 0.1) -> Path:
    """The shapes detector with its class-score Sigmoid output multiplied by ``factor`` (a broken build)."""
    model = onnx.load(str(SHAPES))
    nodes = list(model.graph.node)
    [concat] = [i for i, n in enumerate(nodes) if list(n.output) == ["output0"]]
    [scores] = [name for name in nodes[concat].input if name == "/Sigmoid_output_0"]
    nodes[concat].input[list(nodes[concat].input).index(scores)] = "scaled_scores"
    nodes.insert(concat, helper.make_node("Mul", [scores, "score_factor"], ["scaled_scores"]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "score_factor"))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    for seed in range(6):
        image, _, _ = random_sample(seed, 320, 240)
        cv2.imwrite(str(folder / f"{seed:03d}.png"), image)
    return folder


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    return scaled_scores(tmp_path_factory.mktemp("broken") / "scores_x0.1.onnx")


def test_detector_against_itself_on_unlabelled_frames(frames):
    report = compare(SHAPES, SHAPES, frames)
    assert not report.labelled and report.task == "detect" and report.samples == 6
    assert np.isnan(report.reference_value) and report.agreement is None
    fidelity = report.fidelity
    assert fidelity.value == pytest.approx(1.0) and fidelity.boxes_kept == 1.0
    assert fidelity.reference_boxes > 6 and fidelity.threshold == 0.25
    assert report.outputs[0].max_abs_error == 0.0
    with pytest.raises(ModelError, match="accuracy gate needs labelled data"):
        accuracy_gate(report, 1.0)


def test_fidelity_catches_what_cosine_misses(frames, broken):
    report = compare(SHAPES, broken, frames)
    [output] = report.outputs
    assert output.cosine_min > 0.9999  # box coordinates dominate the output: cosine sees nothing wrong
    assert output.max_rel_error < 0.01
    assert report.fidelity.boxes_kept == 0.0  # yet no reference box survives the decoder's threshold
    # Scaling keeps the ranking, so mAP at a low threshold alone would not notice either.
    assert report.fidelity.value == pytest.approx(1.0)


def test_labelled_data_gives_fidelity_too(tmp_path):
    report = compare(DIGITS, DIGITS, DIGITS_HELDOUT, samples=40)
    assert report.labelled and report.metric == "top-1"
    assert report.fidelity.metric == "top-1 agreement" and report.fidelity.value == 1.0
    assert report.fidelity.top5_overlap == 1.0 and report.agreement == 1.0


def test_classifier_on_a_tensor_recording(tmp_path):
    images = np.load(DIGITS_HELDOUT)["images"][:30].astype(np.float32)[:, None] / 255.0
    recording = tmp_path / "digits.npy"
    np.save(recording, images)
    report = compare(DIGITS, DIGITS, recording)
    assert not report.labelled and report.task == "classify" and report.samples == 30
    assert report.fidelity.value == 1.0 and report.fidelity.top5_overlap == 1.0
    assert report.agreement is None


def test_unreadable_data_is_refused(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    with pytest.raises(ConfigError, match=r"neither labelled data .* nor a source the runtime can read"):
        compare(SHAPES, SHAPES, notes)
    with pytest.raises(ConfigError, match="nor a source the runtime can read"):
        compare(SHAPES, SHAPES, tmp_path / "missing")


def test_cli_compare_without_labels(capsys, frames, broken):
    parser = argparse.ArgumentParser()
    compare_command.add_arguments(parser)
    args = parser.parse_args(["--reference", str(SHAPES), "--candidate", str(broken), "--data", str(frames)])
    assert compare_command.run(args) == 0
    out = capsys.readouterr().out
    assert "no labels" in out and "boxes kept 0.0% of" in out and "mAP@0.5 vs reference" in out
    args = parser.parse_args(["--reference", str(SHAPES), "--candidate", str(broken), "--data", str(frames),
                              "--json", "--samples", "2"])
    assert compare_command.run(args) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["labelled"] is False and report["drop"] is None and report["samples"] == 2
    assert report["fidelity"]["boxes_kept"] == 0.0 and report["outputs"][0]["cosine_min"] > 0.9999
