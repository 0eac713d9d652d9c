"""The postprocess factory: task inference, defaults, labels, raw outputs, and a real onnxruntime model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lepton_edge.config.pipeline import ClassifyConfig, DetectConfig, OnnxRuntimeBackendConfig, RawConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.results import Classification, Detections, RawOutputs
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from lepton_edge.runtime.postprocess import (
    ClassificationPostprocessor,
    DetectionPostprocessor,
    RawPostprocessor,
    create_postprocessor,
    infer_task,
)
from lepton_edge.runtime.preprocess import Transform

IDENTITY = Transform.identity(320, 320)


def spec(name: str, *shape, dtype=np.float32) -> TensorSpec:
    return TensorSpec(name, tuple(shape), np.dtype(dtype))


YOLOV8 = [spec("output0", 1, 84, 8400)]
END2END = [spec("output0", 1, 300, 6)]
FOUR = [spec("num_dets", 1, 1, dtype=np.int32), spec("boxes", 1, 100, 4), spec("scores", 1, 100),
        spec("classes", 1, 100, dtype=np.int32)]


@pytest.mark.parametrize(
    ("outputs", "metadata", "task"),
    [
        ([spec("logits", 1, 1000)], {}, "classify"),
        ([spec("logits", "batch", 1000)], {}, "classify"),
        ([spec("prob", 1, 1000, 1, 1)], {}, "classify"),
        ([spec("prob", 1000)], {}, "classify"),
        (YOLOV8, {}, "detect"),
        ([spec("output0", 1, 25200, 85)], {}, "detect"),
        (END2END, {}, "detect"),  # ambiguous layout, but a detector all the same
        (FOUR, {}, "detect"),
        ([spec("out", 1, 1)], {}, "raw"),
        ([spec("depth", 1, 1, 256, 256)], {}, "raw"),
        ([spec("output0", 1, 116, 8400), spec("output1", 1, 32, 160, 160)], {}, "segment"),
        ([spec("output0", 1, 56, 8400)], {"kpt_shape": "[17, 3]"}, "pose"),
        # Metadata wins over shapes.
        ([spec("logits", 1, 1000)], {"lepton.task": "raw"}, "raw"),
        (YOLOV8, {"task": "detect"}, "detect"),
        ([spec("output0", 1, 1000)], {"task": "classify"}, "classify"),
        ([spec("output0", 1, 116, 8400), spec("output1", 1, 32, 160, 160)], {"task": "segment"}, "segment"),
        ([spec("output0", 1, 56, 8400)], {"task": "pose"}, "pose"),
        ([spec("output0", 1, 20, 8400)], {"task": "obb"}, "obb"),
        ([spec("output0", 1, 20, 8400)], {"task": "track"}, "raw"),
        (YOLOV8, {"lepton.task": "obb"}, "obb"),
    ],
)
def test_infer_task(outputs, metadata, task):
    assert infer_task(outputs, metadata) == task


def test_infer_task_rejects_unknown_lepton_task():
    with pytest.raises(ModelError, match=r"lepton\.task='keypoints' is not a known task.*model\.task"):
        infer_task(YOLOV8, {"lepton.task": "keypoints"})


def test_create_defaults_from_task_and_uses_metadata_labels():
    det = create_postprocessor(None, YOLOV8, {"names": "{0: 'person', 1: 'car'}"}, ())
    assert isinstance(det, DetectionPostprocessor) and det.layout == "yolov8"
    assert det.labels == ("person", "car")
    assert det.config == DetectConfig(type="detect")
    cls = create_postprocessor(None, [spec("logits", 1, 3)], {}, ("a", "b", "c"))
    assert isinstance(cls, ClassificationPostprocessor) and cls.labels == ("a", "b", "c")
    raw = create_postprocessor(None, [spec("depth", 1, 1, 4, 4)], {}, ())
    assert isinstance(raw, RawPostprocessor)


def test_configured_labels_win_over_metadata():
    post = create_postprocessor(None, YOLOV8, {"names": "{0: 'person'}"}, ("mine",))
    assert post.labels == ("mine",)


def test_explicit_config_overrides_inference():
    post = create_postprocessor(ClassifyConfig(type="classify", top_k=1), [spec("logits", 1, 3)], {}, ())
    assert post([np.array([[0.0, 9.0, 1.0]], np.float32)], IDENTITY).class_ids.tolist() == [1]
    nms = create_postprocessor(DetectConfig(type="detect", layout="nms"), END2END, {}, ())
    assert isinstance(nms, DetectionPostprocessor) and nms.layout == "nms"


def test_ambiguous_auto_detection_fails_at_creation_with_advice():
    with pytest.raises(ModelError, match=r"output0 \[1, 300, 6\].*postprocess\.layout"):
        create_postprocessor(None, END2END, {}, ())


def test_raw_returns_named_copies():
    specs = [spec("a", 1, 2), spec("b", 3)]
    post = create_postprocessor(RawConfig(type="raw"), specs, {}, ())
    a, b = np.ones((1, 2), np.float32), np.arange(3)
    result = post([a, b], IDENTITY)
    assert isinstance(result, RawOutputs) and list(result.outputs) == ["a", "b"]
    np.testing.assert_array_equal(result.outputs["b"], [0, 1, 2])
    a[...] = 7  # a backend reusing its buffer must not change a result already handed on
    assert result.outputs["a"].tolist() == [[1.0, 1.0]]
    with pytest.raises(ModelError, match=r"expects outputs \['a', 'b'\], got 1"):
        post([a], IDENTITY)


def _constant_model(path, output: np.ndarray, metadata: dict[str, str]) -> None:
    """An ONNX model with one image input whose output is the given constant tensor."""
    node = helper.make_node("Identity", ["const"], ["output0"])
    graph = helper.make_graph(
        [node], "constant",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=[numpy_helper.from_array(output, "const")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


def test_real_onnxruntime_detector_with_ultralytics_metadata(tmp_path):
    # Eight anchors (more than the 4+2 rows, as in any real model), two classes: a car at model
    # [128,144,192,176], a low-scoring person, and empty anchors.
    anchors = np.zeros((8, 6), np.float32)
    anchors[0] = [160, 160, 64, 32, 0.1, 0.9]
    anchors[1] = [40, 40, 10, 10, 0.2, 0.1]
    _constant_model(tmp_path / "det.onnx", anchors.T[None].copy(),
                    {"task": "detect", "names": "{0: 'person', 1: 'car'}", "end2end": "False"})
    config = OnnxRuntimeBackendConfig(warmup_runs=0, intra_op_threads=1)
    with OnnxRuntimeBackend(tmp_path / "det.onnx", config) as backend:
        post = create_postprocessor(None, backend.outputs, backend.metadata, ())
        outputs = backend.infer({"images": np.zeros((1, 3, 8, 8), np.float32)})
    letterbox = Transform(1.6, 1.6, 0.0, 80.0, 200, 100)
    dets = post(outputs, letterbox)
    assert isinstance(dets, Detections)
    assert dets.to_dict() == {"detections": [
        {"label": "car", "class_id": 1, "score": 0.9, "box": [80.0, 40.0, 120.0, 60.0]}
    ]}


def test_real_onnxruntime_classifier(tmp_path):
    _constant_model(tmp_path / "cls.onnx", np.array([[0.5, 2.0, -1.0]], np.float32),
                    {"lepton.labels": '["cat", "dog", "owl"]'})
    config = OnnxRuntimeBackendConfig(warmup_runs=0, intra_op_threads=1)
    with OnnxRuntimeBackend(tmp_path / "cls.onnx", config) as backend:
        post = create_postprocessor(None, backend.outputs, backend.metadata, ())
        outputs = backend.infer({"images": np.zeros((1, 3, 8, 8), np.float32)})
    result = post(outputs, IDENTITY)
    assert isinstance(result, Classification)
    assert [result.label(int(c)) for c in result.class_ids] == ["dog", "cat", "owl"]
    assert float(result.scores.sum()) == pytest.approx(1.0, abs=1e-6)
