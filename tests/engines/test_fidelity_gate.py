"""The int8 fidelity gate: on by default, label-free, recorded in the manifest, fails broken engines."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from lepton_edge.engines import builder
from lepton_edge.engines.artifacts import read_manifest
from lepton_edge.engines.auto import build_auto
from lepton_edge.engines.builder import FidelityGateError, build_artifact
from lepton_edge.engines.options import BuildOptions

ROOT = Path(__file__).resolve().parents[2]
DETECTOR = ROOT / "models" / "shapes_detector.onnx"
CLASSIFIER = ROOT / "models" / "digits_classifier.onnx"
SHAPES = str(ROOT / "calibration" / "shapes")
DIGITS = str(ROOT / "calibration" / "digits.npy")


def _scale_output(path: Path, tensor: str, factor: float) -> None:
    """Multiply ``tensor`` by ``factor`` for every consumer (and the graph output) of an ONNX file, in place."""
    model = onnx.load(str(path))
    scaled = f"{tensor}_scaled"
    for node in model.graph.node:
        node.input[:] = [scaled if name == tensor else name for name in node.input]
    for output in model.graph.output:
        if output.name == tensor:
            raise AssertionError("scale an inner tensor")
    model.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "fidelity_test_factor"))
    model.graph.node.append(helper.make_node("Mul", [tensor, "fidelity_test_factor"], [scaled]))
    onnx.save(_toposort(model), str(path))


def _toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    known = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        ready = [n for n in pending if all(name in known for name in n.input)]
        assert ready, "graph has a cycle"
        for node in ready:
            ordered.append(node)
            known.update(node.output)
            pending.remove(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


@pytest.fixture
def crushed_scores(monkeypatch):
    """The quantizer makes a detector whose class scores (the last Sigmoid) are scaled by 0.1."""
    original = builder.quantize_qdq

    def quantize(model, table, dest, **kwargs):
        out = original(model, table, dest, **kwargs)
        _scale_output(Path(out), "/Sigmoid_output_0", 0.1)
        return out

    monkeypatch.setattr(builder, "quantize_qdq", quantize)


@pytest.fixture
def flipped_classes(monkeypatch):
    """The quantizer makes a classifier whose logits are negated (every top-1 changes)."""
    original = builder.quantize_qdq

    def quantize(model, table, dest, **kwargs):
        out = original(model, table, dest, **kwargs)
        proto = onnx.load(str(out))
        logits = proto.graph.output[0].name
        for node in proto.graph.node:
            node.output[:] = [f"{logits}_raw" if name == logits else name for name in node.output]
        proto.graph.node.append(helper.make_node("Neg", [f"{logits}_raw"], [logits]))
        onnx.save(proto, str(out))
        return out

    monkeypatch.setattr(builder, "quantize_qdq", quantize)


def int8(data: str, **kwargs) -> BuildOptions:
    return BuildOptions(precision="int8", calibration_data=data, **kwargs)


def test_detector_int8_passes_and_records_fidelity(tmp_path):
    manifest = build_artifact(DETECTOR, tmp_path / "a", int8(SHAPES), progress=False)
    fidelity = read_manifest(tmp_path / "a").fidelity
    assert fidelity == manifest.fidelity
    assert fidelity.task == "detect" and fidelity.reference_boxes > 0
    assert fidelity.value >= 0.90 and fidelity.boxes_kept >= 0.90
    assert fidelity.required == {"map": 0.90, "boxes_kept": 0.90}
    assert not fidelity.held_out  # the 64 images are all calibrated on (default 128 samples)
    assert "not held out" in fidelity.data


def test_classifier_int8_gates_on_held_out_items(tmp_path):
    manifest = build_artifact(CLASSIFIER, tmp_path / "a", int8(DIGITS), progress=False)
    assert manifest.fidelity.held_out and manifest.fidelity.task == "classify"
    assert manifest.fidelity.value >= 0.97
    assert manifest.fidelity.samples == 64  # 72 of 200 items unused by the 128 calibration samples


def test_crushed_scores_fail_the_gate(tmp_path, crushed_scores):
    with pytest.raises(FidelityGateError) as failure:
        build_artifact(DETECTOR, tmp_path / "a", int8(SHAPES, mixed_precision="off"), progress=False)
    message = str(failure.value)
    assert "boxes_kept 0.0000 < required 0.9000 (short by 0.9000)" in message
    assert "--no-fidelity-gate" in message and "calibration method" in message and "--mixed-precision auto" in message
    assert not (tmp_path / "a").exists()


def test_flipped_classes_fail_the_gate(tmp_path, flipped_classes):
    with pytest.raises(FidelityGateError, match=r"top1_agreement 0\.\d+ < required 0\.9700"):
        build_artifact(CLASSIFIER, tmp_path / "a", int8(DIGITS, mixed_precision="off"), progress=False)


def test_gate_can_be_turned_off(tmp_path, crushed_scores):
    manifest = build_artifact(DETECTOR, tmp_path / "a", int8(SHAPES, fidelity=False), progress=False)
    assert manifest.fidelity is None and manifest.precision == "int8"


def test_fp32_builds_have_no_fidelity_gate(tmp_path):
    assert build_artifact(CLASSIFIER, tmp_path / "a", BuildOptions(), progress=False).fidelity is None


def test_auto_skips_an_int8_candidate_failing_the_gate(tmp_path, flipped_classes):
    options = int8(DIGITS, validation_data=ROOT / "models" / "digits_heldout.npz", validation_samples=50,
                   max_accuracy_drop=100.0)  # the accuracy gate lets it through; fidelity must not
    manifest = build_auto(CLASSIFIER, tmp_path / "a", options, rounds=1, round_s=0.01, progress=False)
    assert manifest.precision == "fp32"
    int8_result = next(c for c in manifest.measurements.candidates if c.precision == "int8")
    assert not int8_result.passed and int8_result.note.startswith("failed the fidelity gate")
