"""Dynamic input shapes: one size resolution (config, model, metadata) for the preprocessor, buffers and warm-up."""

import json
import logging

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lepton_edge.config.device import parse_config
from lepton_edge.config.pipeline import OnnxRuntimeBackendConfig, PreprocessConfig
from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.core.results import Classification
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.assembly import build_pipeline, preprocess_from_metadata
from lepton_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from lepton_edge.runtime.input_size import (
    ARTIFACT_PREPROCESS_KEY,
    feed_shape,
    resolve_input_size,
    size_from_metadata,
)
from lepton_edge.runtime.pipeline import ModelBundle
from lepton_edge.runtime.preprocess import Preprocessor
from lepton_edge.runtime.sinks.base import Sink

NAMES = [f"class{i}" for i in range(8)]
ULTRALYTICS = {"imgsz": "[32, 48]", "stride": "4", "task": "classify", "names": str(dict(enumerate(NAMES)))}
"""Ultralytics-style metadata: imgsz is [height, width]."""


def yolo_like(path, *, shape=("batch", 3, "height", "width"), metadata=None):
    """A tiny YOLO-style neck: two stride-2 convs, a 2x upsample and a Concat with the first conv's output.

    Like a real ``dynamic=True`` export it runs at any multiple of 4, but at 1x1 the upsampled branch is 2x2
    while the other is 1x1 and the Concat fails. Ends in a mean-pooled 8-class vector.
    """
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.2).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) * 0.2).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["p1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p1", "w2"], ["p2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["p2", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Concat", ["p1", "up"], ["neck"], axis=1),
        helper.make_node("ReduceMean", ["neck"], ["logits"], axes=[2, 3], keepdims=0),
    ]
    batch = shape[0]
    graph = helper.make_graph(
        nodes, "yolo_like",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class ListSink(Sink):
    name = "list"

    def __init__(self) -> None:
        super().__init__(1024)
        self.results = []

    def write(self, result) -> None:
        self.results.append(result)


@pytest.fixture
def fed(monkeypatch):
    """Every input shape onnxruntime is given, warm-up included."""
    shapes = []
    real = OnnxRuntimeBackend._infer

    def spy(self, feeds):
        shapes.append(tuple(feeds["images"].shape))
        return real(self, feeds)

    monkeypatch.setattr(OnnxRuntimeBackend, "_infer", spy)
    return shapes


def load(path, runs=2):
    return OnnxRuntimeBackend(path, OnnxRuntimeBackendConfig(warmup_runs=runs, intra_op_threads=1)).load()


def device_config(model, uri, **extra):
    return parse_config({"model": {"path": str(model)}, "source": {"uri": uri}, **extra}, "test")


def image_folder(path, count=3):
    path.mkdir()
    for i in range(count):
        cv2.imwrite(str(path / f"{i:03d}.png"), np.full((60, 80, 3), (40 * i, 90, 200), np.uint8))
    return path


def test_the_model_reproduces_the_size_one_crash(tmp_path):
    backend = load(yolo_like(tmp_path / "dyn.onnx", metadata=ULTRALYTICS), runs=0)
    try:
        with pytest.raises(Exception, match=r"(?i)concat"):
            backend.infer({"images": np.zeros((1, 3, 1, 1), np.float32)})
        (out,) = backend.infer({"images": np.zeros((2, 3, 24, 40), np.float32)})  # any multiple of 4 works
        assert out.shape == (2, 8)
    finally:
        backend.close()


def test_dynamic_model_loads_and_warms_up_at_the_metadata_size(tmp_path, fed):
    backend = load(yolo_like(tmp_path / "dyn.onnx", metadata=ULTRALYTICS), runs=2)
    try:
        assert backend.inputs[0].shape == ("batch", 3, "height", "width")
        assert fed == [(1, 3, 32, 48)] * 2, "warm-up feeds batch 1 at imgsz [h=32, w=48], not 1x1"
        assert backend.warmed_shapes == {"images": (1, 3, 32, 48)}
    finally:
        backend.close()


def test_dynamic_model_without_size_loads_then_asks_for_preprocess_size(tmp_path, fed):
    model = yolo_like(tmp_path / "dyn.onnx", metadata={"task": "classify"})
    backend = load(model)
    assert fed == [] and backend.warmed_shapes is None, "warm-up waits for the size the pipeline feeds"
    with pytest.raises(ConfigError, match=r"input 'images'.*dynamic spatial size.*set preprocess\.size"):
        build_pipeline(device_config(model, str(image_folder(tmp_path / "imgs"))), backend)


def test_config_size_overrides_metadata_for_buffers_and_warm_up(tmp_path, fed):
    model = yolo_like(tmp_path / "dyn.onnx", metadata=ULTRALYTICS)
    backend = load(model)
    cfg = device_config(model, str(image_folder(tmp_path / "imgs")), preprocess={"size": [64, 40]})
    pipeline = build_pipeline(cfg, backend)
    try:
        assert pipeline.preprocessor.shape == (1, 3, 40, 64)
        assert pipeline.preprocessor.size.source == "preprocess.size"
        buffers = [pipeline.model.pool.get() for _ in range(3)]
        assert {b["images"].shape for b in buffers} == {(1, 3, 40, 64)}
        assert fed == [(1, 3, 32, 48)] * 2 + [(1, 3, 40, 64)] * 2, "warmed again at the size the pipeline feeds"
        assert backend.warmed_shapes == {"images": (1, 3, 40, 64)}
    finally:
        pipeline.model.close()


def test_full_pipeline_runs_on_a_dynamic_model(tmp_path, fed):
    model = yolo_like(tmp_path / "dyn.onnx", metadata=ULTRALYTICS)
    sink = ListSink()
    pipeline = build_pipeline(device_config(model, str(image_folder(tmp_path / "imgs"))), load(model),
                              extra_sinks=[sink])
    assert pipeline.preprocessor.size.source == "model metadata imgsz"
    stats = pipeline.run()
    assert stats["results"] == 3 and stats["drops"] == {}
    for result in sink.results:
        assert isinstance(result.output, Classification)
        assert set(result.output.labels) <= set(NAMES) and len(result.output.class_ids) == 5
    assert set(fed) == {(1, 3, 32, 48)}, "warm-up and every frame at the metadata size, warmed once"
    assert len(fed) == 2 + 3


def test_static_model_is_unchanged(tmp_path, fed):
    model = yolo_like(tmp_path / "static.onnx", shape=(1, 3, 16, 24), metadata={**ULTRALYTICS, "imgsz": "[640, 640]"})
    backend = load(model)
    sink = ListSink()
    pipeline = build_pipeline(device_config(model, str(image_folder(tmp_path / "imgs"))), backend,
                              extra_sinks=[sink])
    assert pipeline.preprocessor.shape == (1, 3, 16, 24), "a static shape wins over metadata"
    assert pipeline.preprocessor.size.source == "model"
    pipeline.run()
    assert len(sink.results) == 3
    assert fed == [(1, 3, 16, 24)] * (2 + 3), "warmed once at load, at the static shape"
    with pytest.raises(ModelError, match="does not match input"):
        Preprocessor(backend.inputs[0], PreprocessConfig(size=(32, 32)), metadata=backend.metadata)


def test_tensor_source_buffers_use_the_resolved_size(tmp_path, fed):
    backend = load(yolo_like(tmp_path / "dyn.onnx", metadata=ULTRALYTICS), runs=1)
    bundle = ModelBundle(backend, None, lambda outputs, transform: outputs)
    try:
        assert bundle.pool.get()["images"].shape == (1, 3, 32, 48)
        assert fed == [(1, 3, 32, 48)], "not warmed twice at the same shape"
    finally:
        bundle.close()


def spec(shape):
    return TensorSpec("images", tuple(shape), np.dtype(np.float32))


@pytest.mark.parametrize("metadata, want", [
    ({"imgsz": "[32, 48]"}, ((48, 32), "imgsz")),
    ({"imgsz": "640"}, ((640, 640), "imgsz")),
    ({"imgsz": "(320, 256)"}, ((256, 320), "imgsz")),
    ({"imgsz": "[32, 48]", "lepton.preprocess": '{"size": [64, 16]}'}, ((64, 16), "lepton.preprocess")),
    ({"lepton.preprocess": '{"color": "bgr"}', "imgsz": "[8, 8]"}, ((8, 8), "imgsz")),
    ({}, None),
    ({"imgsz": "[0, 640]"}, None),
    ({"imgsz": "__import__('os')"}, None),
])
def test_size_from_metadata(metadata, want):
    assert size_from_metadata(metadata) == want


def test_bad_imgsz_is_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert size_from_metadata({"imgsz": "[99999, 640]"}) is None
    assert "imgsz" in caplog.text


def test_resolution_order_and_errors():
    meta = {"imgsz": "[32, 48]", "stride": "16"}
    assert resolve_input_size(spec([1, 3, "h", "w"]), size=(64, 80), metadata=meta).source == "preprocess.size"
    got = resolve_input_size(spec([1, 3, "h", "w"]), metadata=meta)
    assert (got.width, got.height, got.source) == (48, 32, "model metadata imgsz")
    got = resolve_input_size(spec([1, 3, 64, "w"]), metadata=meta)
    assert (got.width, got.height) == (48, 64), "a fixed dimension wins over the metadata"
    got = resolve_input_size(spec(["n", 32, 32, 3]), metadata=meta)
    assert (got.width, got.height, got.source) == (32, 32, "model"), "only the batch is dynamic: the model's size"
    with pytest.raises(ConfigError, match=r"preprocess\.size 40x32 is not a multiple of the model's stride 16"):
        resolve_input_size(spec([1, 3, "h", "w"]), size=(40, 32), metadata=meta)
    with pytest.raises(ConfigError, match=r"input 'images' has dynamic spatial size \[1, 3, h, w\].*preprocess\.size"):
        resolve_input_size(spec([1, 3, "h", "w"]), metadata={"imgsz": "oops"})


def test_feed_shape():
    meta = {"imgsz": "[32, 48]"}
    assert feed_shape(spec([2, 3, 8, 8]), meta) == (2, 3, 8, 8)
    assert feed_shape(spec([None, 3, 8, 8])) == (1, 3, 8, 8)
    assert feed_shape(spec(["n", 3, "h", "w"]), meta) == (1, 3, 32, 48)
    assert feed_shape(spec(["n", "h", "w", 3]), meta) == (1, 32, 48, 3)
    assert feed_shape(spec(["n", 3, "h", "w"])) is None
    assert feed_shape(spec(["n", "c", "h", "w"]), meta) is None
    assert feed_shape(spec(["n", 16])) == (1, 16)


# -- what a built artifact records ranks below the config and above the model's metadata ------------------------

RECORD = {ARTIFACT_PREPROCESS_KEY: json.dumps({"size": [64, 40], "resize": "stretch", "color": "bgr"})}


def test_the_artifact_record_ranks_above_the_model_metadata():
    meta = {**ULTRALYTICS, "lepton.preprocess": '{"size": [16, 16], "mean": [0.5]}', **RECORD}
    assert size_from_metadata(meta) == ((64, 40), ARTIFACT_PREPROCESS_KEY)
    got = resolve_input_size(spec([1, 3, "h", "w"]), metadata=meta)
    assert (got.width, got.height, got.source) == (64, 40, "the artifact's record")
    assert feed_shape(spec(["n", 3, "h", "w"]), meta) == (1, 3, 40, 64), "warm-up at the size it was built for"
    merged = preprocess_from_metadata(PreprocessConfig(), meta)
    assert (merged.size, merged.resize, merged.color, merged.mean) == ((64, 40), "stretch", "bgr", (0.5,)), \
        "the record first, then lepton.preprocess for what it leaves unset"


def test_explicit_config_beats_the_artifact_record(caplog):
    explicit = PreprocessConfig(size=(32, 32), resize="letterbox")
    with caplog.at_level(logging.WARNING):
        merged = preprocess_from_metadata(explicit, RECORD)
    assert (merged.size, merged.resize, merged.color) == ((32, 32), "letterbox", "bgr")
    assert "differs from the size the artifact was built for (64x40)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        preprocess_from_metadata(PreprocessConfig(size=(64, 40)), RECORD)
    assert "differs" not in caplog.text


def test_pipeline_on_an_artifact_like_backend_feeds_the_recorded_size(tmp_path, fed):
    backend = load(yolo_like(tmp_path / "dyn.onnx", metadata=ULTRALYTICS), runs=1)
    backend.metadata.update(RECORD)  # what engines.artifacts.open_artifact adds
    pipeline = build_pipeline(device_config(tmp_path / "dyn.onnx", str(image_folder(tmp_path / "imgs"))), backend)
    try:
        assert pipeline.preprocessor.shape == (1, 3, 40, 64)
        assert pipeline.preprocessor.config.resize == "stretch"
    finally:
        backend.close()
    explicit = load(yolo_like(tmp_path / "dyn.onnx", metadata=ULTRALYTICS), runs=0)
    explicit.metadata.update(RECORD)
    cfg = device_config(tmp_path / "dyn.onnx", str(tmp_path / "imgs"), preprocess={"size": [48, 32]})
    pipeline = build_pipeline(cfg, explicit)
    try:
        assert pipeline.preprocessor.shape == (1, 3, 32, 48), "the config's size beats the artifact's"
    finally:
        explicit.close()
