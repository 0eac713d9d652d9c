"""Layer sensitivity: one layer at a time quantized, ranked by the damage to the model's final outputs."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lepton_edge.engines.calibration import calibrate
from lepton_edge.engines.calibration.qdq import QdqQuantizer
from lepton_edge.engines.calibration.sensitivity import SensitivityAnalysis, output_error, quantized_layers
from lepton_edge.engines.mixed_precision import FloatLayerSearch, Trial, float_layer_limit

WIDTH = 16


def planted_model(path: Path) -> Path:
    """x -> MatMul -> Sub (channel 0 raised by 1000) -> t -> MatMul (ignores channel 0) -> Relu -> MatMul -> y.

    ``t`` holds small useful values beside one huge constant channel: quantizing ``t`` for the second MatMul gives
    it a uint8 step near 4 and flattens every useful value, so the second layer is the one whose quantization
    destroys the output (the first layer's MatMul quantizes only its inputs, and Sub is left float)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) * 0.5
    offset = np.zeros(WIDTH, np.float32)
    offset[0] = -1000.0
    w2 = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) * 0.5
    w2[0, :] = 0.0
    w3 = rng.standard_normal((WIDTH, 4)).astype(np.float32) * 0.5
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("Sub", ["h", "offset"], ["t"], name="first_offset"),
        helper.make_node("MatMul", ["t", "w2"], ["u"], name="planted"),
        helper.make_node("Relu", ["u"], ["r"], name="planted_relu"),
        helper.make_node("MatMul", ["r", "w3"], ["y"], name="last"),
    ]
    graph = helper.make_graph(
        nodes, "planted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(offset, "offset"),
         numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(w3, "w3")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.fixture
def planted(tmp_path):
    model = planted_model(tmp_path / "planted.onnx")
    x = np.random.default_rng(1).standard_normal((48, 1, WIDTH)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    table = calibrate(model, tmp_path / "x.npy", method="minmax", samples=32, progress=False)
    feeds = [{"x": x[i]} for i in range(40, 48)]
    return QdqQuantizer(model, table), feeds


def test_layers_group_a_weighted_node_with_the_nodes_after_it(planted):
    quantizer, _ = planted
    layers = quantized_layers(quantizer.model, quantizer.tail)
    assert [layer.nodes for layer in layers] == [("first", "first_offset"), ("planted", "planted_relu"),
                                                 ("last",)]


def test_ranking_finds_the_planted_layer(planted):
    quantizer, feeds = planted
    ranking = SensitivityAnalysis(quantizer, feeds).rank(progress=False)
    assert ranking.layers[0].layer.name == "planted"
    assert ranking.layers[0].error > 10 * max(s.error for s in ranking.layers[1:])
    assert ranking.int8_error >= ranking.layers[0].error * 0.5
    assert ranking.nodes(1) == ["planted", "planted_relu"]
    assert ranking.samples == 8


def test_keeping_the_planted_layer_in_float_restores_the_output(planted, tmp_path):
    quantizer, feeds = planted

    def error(keep):
        path = quantizer.write(tmp_path / "q.onnx", keep)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        reference = ort.InferenceSession(str(quantizer.model_path), providers=["CPUExecutionProvider"])
        return output_error([reference.run(None, f) for f in feeds], [session.run(None, f) for f in feeds])

    assert error([]) > 0.5
    assert error(["planted", "planted_relu"]) < 0.1 * error([])
    written = quantizer.write(tmp_path / "kept.onnx", ["planted", "planted_relu"])
    meta = {p.key: p.value for p in onnx.load(str(written)).metadata_props}
    assert '"mixed_precision_nodes": ["planted", "planted_relu"]' in meta["lepton.quantization"]


def test_output_error_is_scale_free_per_feature():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 640, (5, 1, 4, 100))
    scores = rng.uniform(0, 0.05, (5, 1, 2, 100))
    reference = [[np.concatenate([b, s], axis=1)] for b, s in zip(boxes, scores, strict=True)]
    crushed = [[np.concatenate([b, 0 * s], axis=1)] for b, s in zip(boxes, scores, strict=True)]
    shifted = [[np.concatenate([b + 1.0, s], axis=1)] for b, s in zip(boxes, scores, strict=True)]
    assert output_error(reference, reference) == 0.0
    assert output_error(reference, crushed) > 10 * output_error(reference, shifted)


def test_search_finds_the_fewest_layers_by_doubling_and_bisection():
    tried = []

    def trial(count):
        tried.append(count)
        return Trial(count, count >= 5, {"map": count / 10})

    search = FloatLayerSearch(trial, limit=16)
    assert search.run().layers == 5
    assert tried == [1, 2, 4, 8, 6, 5]


def test_search_respects_the_limit():
    tried = []
    search = FloatLayerSearch(lambda count: tried.append(count) or Trial(count, count >= 9, {}), limit=6)
    assert search.run() is None
    assert tried == [1, 2, 4, 6] and max(tried) <= 6
    assert FloatLayerSearch(lambda count: Trial(count, True, {}), limit=0).run() is None


def test_default_limit_is_a_quarter_rounded_up():
    assert float_layer_limit(63, None) == 16
    assert float_layer_limit(3, None) == 1
    assert float_layer_limit(63, 100) == 63 and float_layer_limit(63, 4) == 4
