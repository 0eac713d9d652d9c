"""compare / accuracy_gate / measure_throughput on real onnxruntime with real models and data."""

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lepton_edge.cli import compare as compare_command
from lepton_edge.config.pipeline import OnnxRuntimeBackendConfig
from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.engines.calibration import calibrate, quantize_qdq
from lepton_edge.engines.evaluation.compare import (
    CompareReport,
    accuracy_gate,
    compare,
    compare_many,
    measure_throughput,
)
from lepton_edge.engines.evaluation.datasets import write_detection_npz
from lepton_edge.runtime.backends import create_backend

REPO = Path(__file__).resolve().parents[3]
DIGITS = REPO / "models" / "digits_classifier.onnx"
DIGITS_HELDOUT = REPO / "models" / "digits_heldout.npz"
DIGITS_CALIBRATION = REPO / "calibration" / "digits.npy"

# Two objects, same place in every 64x64 image: class 0 and class 1 (xyxy).
TRUTH_BOXES = np.array([[8, 8, 24, 24], [36, 30, 60, 54]], np.float32)
TRUTH_CLASSES = np.array([0, 1], np.int64)


def constant_detector(path: Path, boxes: np.ndarray, classes: np.ndarray, num_classes: int = 2) -> Path:
    """A YOLOv8-layout detector that reports the same ``boxes`` (xyxy, input pixels) whatever the image.

    It still reads its input (a zero-weighted mean), so it runs like any image model.
    """
    anchors = 8
    out = np.zeros((1, 4 + num_classes, anchors), np.float32)
    for i, (box, cls) in enumerate(zip(boxes, classes, strict=True)):
        out[0, :4, i] = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]]
        out[0, 4 + cls, i] = 0.9
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
            helper.make_node("Add", ["table", "nothing"], ["output0"]),
        ],
        "constant_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + num_classes, anchors])],
        [numpy_helper.from_array(np.zeros(1, np.float32), "zero"), numpy_helper.from_array(out, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"lepton.task": "detect", "lepton.layout": "yolov8", "lepton.labels": json.dumps(["a", "b"]),
            "lepton.preprocess": json.dumps({"size": [64, 64], "resize": "stretch", "color": "rgb"})}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def detection_data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("det") / "heldout.npz"
    return write_detection_npz(path, images, [(TRUTH_BOXES, TRUTH_CLASSES)] * len(images))


@pytest.fixture(scope="module")
def digits_int8(tmp_path_factory) -> Path:
    table = calibrate(DIGITS, DIGITS_CALIBRATION, method="minmax", samples=32, progress=False)
    return quantize_qdq(DIGITS, table, tmp_path_factory.mktemp("q") / "digits.int8.onnx")


def test_model_against_itself_is_identical():
    report = compare(DIGITS, DIGITS, DIGITS_HELDOUT, samples=60)
    assert report.task == "classify" and report.metric == "top-1" and report.samples == 60
    assert report.reference_value == report.candidate_value > 0.9
    assert report.drop == 0.0 and report.agreement == 1.0
    [logits] = report.outputs
    assert logits.name == "logits"
    assert logits.cosine_min == pytest.approx(1.0) and logits.max_abs_error == 0.0


def test_int8_candidate_on_digits(digits_int8):
    report = compare(DIGITS, digits_int8, DIGITS_HELDOUT)
    assert report.samples == 450
    assert report.candidate_name == "digits.int8.onnx"
    # Top-1 of both against the labels, computed here independently of compare.
    labels = np.load(DIGITS_HELDOUT)["labels"]
    assert report.reference_value == pytest.approx(_top1(DIGITS, labels))
    assert report.candidate_value == pytest.approx(_top1(digits_int8, labels))
    assert report.agreement > 0.95
    assert 0.99 < report.outputs[0].cosine_mean < 1.0
    assert report.outputs[0].max_abs_error > 0
    assert report.drop == pytest.approx((report.reference_value - report.candidate_value) * 100)


def _top1(model: Path, labels: np.ndarray) -> float:
    images = np.load(DIGITS_HELDOUT)["images"].astype(np.float32) / 255.0
    with create_backend(model, OnnxRuntimeBackendConfig(warmup_runs=0)) as backend:
        logits = backend.infer({"input": images[:, None]})[0]
    return float(np.mean(logits.argmax(1) == labels))


def test_candidate_may_be_a_loaded_backend(digits_int8):
    backend = create_backend(digits_int8, OnnxRuntimeBackendConfig(warmup_runs=0)).load()
    try:
        report = compare(DIGITS, backend, DIGITS_HELDOUT, samples=20, candidate_name="int8")
        assert report.candidate_name == "int8"
        backend.infer({"input": np.zeros((1, 1, 8, 8), np.float32)})  # the caller's backend stays open
    finally:
        backend.close()


def test_detector_map_and_output_differences(tmp_path, detection_data):
    reference = constant_detector(tmp_path / "ref.onnx", TRUTH_BOXES, TRUTH_CLASSES)
    shifted = TRUTH_BOXES.copy()
    shifted[1] += 16  # class 1 box now overlaps its object with IoU < 0.5
    candidate = constant_detector(tmp_path / "cand.onnx", shifted, TRUTH_CLASSES)
    report = compare(reference, candidate, detection_data)
    assert report.task == "detect" and report.metric == "mAP@0.5" and report.samples == 6
    assert report.reference_value == pytest.approx(1.0)
    assert report.candidate_value == pytest.approx(0.5)  # class 0 still perfect, class 1 never found
    assert report.drop == pytest.approx(50.0)
    assert report.agreement is None
    assert report.outputs[0].max_abs_error == pytest.approx(16.0)
    assert report.outputs[0].cosine_mean < 1.0
    with pytest.raises(ModelError) as err:
        accuracy_gate(report, 1.0)
    assert "cand.onnx mAP@0.5 is 0.500, 50.0 points below fp32 1.000; allowed drop 1" in str(err.value)


def test_compare_many_runs_each_candidate(tmp_path, detection_data, digits_int8):
    reference = constant_detector(tmp_path / "ref.onnx", TRUTH_BOXES, TRUTH_CLASSES)
    missing_one = constant_detector(tmp_path / "one.onnx", TRUTH_BOXES[:1], TRUTH_CLASSES[:1])
    reports = compare_many(reference, {"same": reference, "one": missing_one}, detection_data)
    assert reports["same"].candidate_value == pytest.approx(1.0)
    assert reports["one"].candidate_value == pytest.approx(0.5)
    assert reports["same"].reference_value == reports["one"].reference_value


def test_wrong_task_data_is_refused(tmp_path, detection_data):
    with pytest.raises(ConfigError, match="detection set but the reference model is a classify model"):
        compare(DIGITS, DIGITS, detection_data)


def test_different_models_are_refused(tmp_path, detection_data):
    reference = constant_detector(tmp_path / "ref.onnx", TRUTH_BOXES, TRUTH_CLASSES)
    three = constant_detector(tmp_path / "three.onnx", TRUTH_BOXES, TRUTH_CLASSES, num_classes=3)
    with pytest.raises(ModelError, match="not the same model"):
        compare(reference, three, detection_data)


def test_missing_candidate(tmp_path):
    with pytest.raises(ModelError, match="model not found"):
        compare(DIGITS, tmp_path / "nope.onnx", DIGITS_HELDOUT)


def _report(reference: float, candidate: float, metric: str = "mAP@0.5") -> CompareReport:
    return CompareReport(reference="fp32.onnx", candidate="int8", reference_name="fp32", candidate_name="int8",
                         data="heldout.json", data_sha256="0" * 64, task="detect", samples=300, metric=metric,
                         reference_value=reference, candidate_value=candidate)


def test_gate_message_and_boundaries():
    with pytest.raises(ModelError) as err:
        accuracy_gate(_report(0.895, 0.872), 1.0)
    assert str(err.value).startswith("int8 mAP@0.5 is 0.872, 2.3 points below fp32 0.895; allowed drop 1.")
    accuracy_gate(_report(0.895, 0.885), 1.0)  # exactly 1.0 point: allowed
    accuracy_gate(_report(0.5, 0.9), 0.0)  # better than the reference
    with pytest.raises(ModelError, match="undefined"):
        accuracy_gate(_report(float("nan"), float("nan")), 1.0)


def test_measure_throughput_interleaves_rounds(digits_int8):
    fp32 = create_backend(DIGITS, OnnxRuntimeBackendConfig(warmup_runs=0)).load()
    int8 = create_backend(digits_int8, OnnxRuntimeBackendConfig(warmup_runs=0)).load()
    try:
        rates = measure_throughput({"fp32": fp32, "int8": int8}, rounds=3, round_s=0.02)
    finally:
        fp32.close()
        int8.close()
    assert set(rates) == {"fp32", "int8"}
    assert all(r["rounds"] == 3 and r["fps"] > 0 for r in rates.values())


def test_cli_compare_json_with_bench_and_gate(capsys, digits_int8):
    parser = argparse.ArgumentParser()
    compare_command.add_arguments(parser)
    args = parser.parse_args(["--reference", str(DIGITS), "--candidate", str(digits_int8), "--data",
                              str(DIGITS_HELDOUT), "--samples", "50", "--bench", "--rounds", "2", "--json",
                              "--max-drop", "100"])
    assert compare_command.run(args) == 0
    out = capsys.readouterr().out
    result = json.loads(out[: out.rindex("}") + 1])
    assert result["report"]["samples"] == 50 and result["report"]["metric"] == "top-1"
    assert result["bench"]["ratio"] == pytest.approx(result["bench"]["candidate"]["fps"]
                                                     / result["bench"]["reference"]["fps"])
    assert "accuracy gate passed" in out


def test_cli_compare_gate_failure(tmp_path, detection_data):
    reference = constant_detector(tmp_path / "ref.onnx", TRUTH_BOXES, TRUTH_CLASSES)
    candidate = constant_detector(tmp_path / "one.onnx", TRUTH_BOXES[:1], TRUTH_CLASSES[:1])
    parser = argparse.ArgumentParser()
    compare_command.add_arguments(parser)
    args = parser.parse_args(["--reference", str(reference), "--candidate", str(candidate), "--data",
                              str(detection_data), "--max-drop", "1"])
    with pytest.raises(ModelError, match=r"50\.0 points below"):
        compare_command.run(args)
