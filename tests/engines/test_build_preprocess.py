"""Builds record the preprocessing and input size they were calibrated and built for; TensorRT profiles follow it."""

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lepton_edge.cli.inspect import format_manifest
from lepton_edge.config.pipeline import ModelConfig, OnnxRuntimeBackendConfig, PreprocessConfig, TensorRTBackendConfig
from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.engines.artifacts import (
    Manifest,
    compute_fingerprint,
    describe_artifact,
    open_artifact,
    read_manifest,
    verify_artifact,
    write_manifest,
)
from lepton_edge.engines.auto import build
from lepton_edge.engines.builder import build_artifact, default_max_batch
from lepton_edge.engines.engine_cache import cache_key, open_model, resolve
from lepton_edge.engines.evaluation.compare import measure_throughput, open_engine, throughput_feeds
from lepton_edge.engines.onnx_tools import inspect_onnx
from lepton_edge.engines.options import BuildOptions, TrtOptions
from lepton_edge.runtime.input_size import ARTIFACT_PREPROCESS_KEY
from tests.support.fake_cuda import FakeGpu, block_pycuda, install_cuda_python
from tests.support.fake_tensorrt import install_tensorrt

REPO = Path(__file__).resolve().parents[2]
DYNAMIC = REPO / "models" / "ultralytics" / "detect" / "yolo11t-detect_dynamic.onnx"
"""Ultralytics dynamic=True export: input [batch, 3, height, width], metadata imgsz [160, 160], stride 32."""
DIGITS = REPO / "models" / "digits_classifier.onnx"
ORT = OnnxRuntimeBackendConfig(warmup_runs=0)


def without_size(tmp_path: Path) -> Path:
    """The dynamic model with no size anywhere: its imgsz metadata removed."""
    model = onnx.load(str(DYNAMIC))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != "imgsz"]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = tmp_path / "nosize.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture
def fake_trt(monkeypatch):
    gpu = FakeGpu()
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    return install_tensorrt(monkeypatch, "10.3.0", gpu)


def test_manifest_records_the_size_and_preprocessing(tmp_path):
    explicit = PreprocessConfig(size=(224, 192), resize="stretch")
    manifest = build_artifact(DYNAMIC, tmp_path / "a", BuildOptions(preprocess=explicit), progress=False)
    record = manifest.preprocess
    assert record.input == "images" and record.size == (224, 192)
    assert record.size_source == "preprocess.size (--size or --config)" and record.calibrated_size is None
    assert record.config["size"] == [224, 192] and record.config["resize"] == "stretch"
    assert record.config["layout"] == "nchw"
    assert read_manifest(tmp_path / "a").preprocess == record
    default = build_artifact(DYNAMIC, tmp_path / "b", progress=False)
    assert default.preprocess.size == (160, 160) and default.preprocess.size_source == "model metadata imgsz"
    assert default.preprocess.config["resize"] == "letterbox"
    static = build_artifact(DIGITS, tmp_path / "c", progress=False)
    assert static.preprocess.size == (8, 8) and static.preprocess.size_source == "the model's static shape"
    shown = format_manifest(read_manifest(tmp_path / "a"))
    assert "preprocess:  images 224x192 (preprocess.size (--size or --config)), stretch, rgb" in shown
    assert describe_artifact(tmp_path / "a")["preprocess"]["size"] == [224, 192]


def test_open_artifact_hands_the_record_to_the_runtime_and_warms_up_at_it(tmp_path):
    build_artifact(DYNAMIC, tmp_path / "a", BuildOptions(preprocess=PreprocessConfig(size=(224, 224))),
                   progress=False)
    backend = open_artifact(tmp_path / "a", OnnxRuntimeBackendConfig(warmup_runs=1))
    try:
        assert json.loads(backend.metadata[ARTIFACT_PREPROCESS_KEY])["size"] == [224, 224]
        assert backend.warmed_shapes == {"images": (1, 3, 224, 224)}, "warm-up at the size it was built for"
    finally:
        backend.close()


def test_dynamic_size_without_any_size_asks_for_size(tmp_path):
    with pytest.raises(ConfigError, match=r"dynamic height or width and no size.*pass --size WIDTHxHEIGHT"):
        build_artifact(without_size(tmp_path), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    manifest = build_artifact(without_size(tmp_path), tmp_path / "sized",
                              BuildOptions(preprocess=PreprocessConfig(size=(96, 96))), progress=False)
    assert manifest.preprocess.size == (96, 96)


def test_the_record_is_fingerprinted_and_old_manifests_still_verify(tmp_path):
    build_artifact(DIGITS, tmp_path / "a", progress=False)
    data = read_manifest(tmp_path / "a").model_dump()
    data["preprocess"]["size"] = (16, 16)
    write_manifest(tmp_path / "a", Manifest.model_validate(data))
    assert any(p.startswith("fingerprint:") for p in verify_artifact(tmp_path / "a")), "an edited record is caught"
    data["preprocess"] = None  # a manifest written before the record existed
    old = Manifest.model_validate(data)
    old.fingerprint = compute_fingerprint(old)
    write_manifest(tmp_path / "a", old)
    assert verify_artifact(tmp_path / "a") == []


def test_onnxruntime_int8_keeps_the_dynamic_batch_and_size(tmp_path):
    frames = REPO / "models" / "ultralytics" / "frames"
    options = BuildOptions(precision="int8", calibration_data=str(frames), fidelity=False,
                           preprocess=PreprocessConfig(size=(192, 192)),
                           calibration_options={"samples": 2, "method": "minmax"})
    manifest = build_artifact(DYNAMIC, tmp_path / "int8", options, progress=False)
    assert manifest.preprocess.calibrated_size == (192, 192) and manifest.preprocess.size == (192, 192)
    engine = inspect_onnx(tmp_path / "int8" / "model.onnx")
    assert engine.inputs[0].shape == ("batch", 3, "height", "width"), "QDQ quantization froze no dimension"
    backend = open_artifact(tmp_path / "int8", ORT)
    try:
        (out,) = backend.infer({"images": np.zeros((2, 3, 192, 192), np.float32)})
        assert out.shape[0] == 2
    finally:
        backend.close()


# -- TensorRT profiles ---------------------------------------------------------------------------------------

def _profile_calls(trt):
    return [args for call, args in trt.calls if call == "IOptimizationProfile.set_shape"]


def test_tensorrt_profile_from_the_resolved_size_with_a_dynamic_batch(tmp_path, fake_trt):
    options = BuildOptions(target="tensorrt", precision="fp16", preprocess=PreprocessConfig(size=(224, 192)),
                           trt=TrtOptions(max_batch=4))
    manifest = build_artifact(DYNAMIC, tmp_path / "trt", options, progress=False)
    want = [[1, 3, 192, 224], [1, 3, 192, 224], [4, 3, 192, 224]]
    assert manifest.profiles == [{"images": want}]
    assert _profile_calls(fake_trt) == [("images", *(tuple(s) for s in want))], "TensorRT got the same shapes"
    assert manifest.preprocess.size == (224, 192)
    with open_artifact(tmp_path / "trt", TensorRTBackendConfig(type="tensorrt", warmup_runs=1)) as backend:
        assert backend.warmed_shapes == {"images": (1, 3, 192, 224)}
        assert backend.infer({"images": np.zeros((3, 3, 192, 224), np.float32)})[0].shape[0] == 3


def test_tensorrt_profile_defaults_to_the_metadata_size_and_batch_one(tmp_path, fake_trt):
    manifest = build_artifact(DYNAMIC, tmp_path / "trt", BuildOptions(target="tensorrt", precision="fp32"),
                              progress=False)
    assert manifest.profiles == [{"images": [[1, 3, 160, 160]] * 3}], "imgsz [160, 160], not 1x1"


def test_tensorrt_without_a_size_asks_for_one(tmp_path, fake_trt):
    with pytest.raises(ConfigError, match=r"pass --size"):
        build_artifact(without_size(tmp_path), tmp_path / "trt", BuildOptions(target="tensorrt"), progress=False)
    assert _profile_calls(fake_trt) == []


def test_a_user_profile_must_hold_the_size(tmp_path, fake_trt):
    profile = {"images": ((1, 3, 128, 128), (1, 3, 256, 256), (2, 3, 320, 320))}
    ok = build_artifact(DYNAMIC, tmp_path / "ok", BuildOptions(
        target="tensorrt", preprocess=PreprocessConfig(size=(256, 256)), trt=TrtOptions(profiles=[profile])),
        progress=False)
    assert ok.profiles == [{"images": [list(s) for s in profile["images"]]}]
    with pytest.raises(ConfigError, match=re.escape("input size 640x640 (preprocess.size (--size or --config)) is "
                                                    "outside the --profile range")):
        build_artifact(DYNAMIC, tmp_path / "bad", BuildOptions(
            target="tensorrt", preprocess=PreprocessConfig(size=(640, 640)), trt=TrtOptions(profiles=[profile])),
            progress=False)


# -- the engine cache builds for the config's preprocessing --------------------------------------------------

def test_engine_cache_builds_for_the_config_size(tmp_path):
    model_cfg = ModelConfig(path=DYNAMIC, precision="fp32", cache_dir=tmp_path)
    sha = inspect_onnx(DYNAMIC).sha256
    unset = cache_key(model_cfg, "onnxruntime-cpu", sha, PreprocessConfig())
    assert cache_key(model_cfg, "onnxruntime-cpu", sha) == unset, "no preprocessing set: the slot as before"
    sized = PreprocessConfig(size=(224, 224))
    assert cache_key(model_cfg, "onnxruntime-cpu", sha, sized) != cache_key(model_cfg, "onnxruntime-cpu", sha)
    resolution = resolve(model_cfg, ORT, progress=False, preprocess=sized)
    assert read_manifest(resolution.path).preprocess.size == (224, 224)
    backend = open_model(model_cfg, OnnxRuntimeBackendConfig(warmup_runs=1), preprocess=sized)
    try:
        assert backend.warmed_shapes == {"images": (1, 3, 224, 224)}
    finally:
        backend.close()


def test_a_model_the_default_preprocessing_cannot_feed_builds_without_a_record(tmp_path, caplog):
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "gray",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])],
        [numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "gray.onnx"))
    manifest = build_artifact(tmp_path / "gray.onnx", tmp_path / "a", progress=False)
    assert manifest.preprocess is None and "no preprocessing recorded" in caplog.text, "one channel, color rgb"
    gray = build_artifact(tmp_path / "gray.onnx", tmp_path / "b", BuildOptions(
        preprocess=PreprocessConfig(color="gray")), progress=False)
    assert gray.preprocess.size == (8, 8) and gray.preprocess.config["color"] == "gray"
    with pytest.raises(ModelError, match=r"preprocess\.size 16x16 does not match input 'x'"):
        build_artifact(tmp_path / "gray.onnx", tmp_path / "c", BuildOptions(
            preprocess=PreprocessConfig(size=(16, 16), color="gray")), progress=False)


def test_precision_auto_measures_a_dynamic_model_at_its_size(tmp_path):
    manifest = build(DYNAMIC, tmp_path / "auto", BuildOptions(precision="auto",
                     preprocess=PreprocessConfig(size=(192, 192))), progress=False)
    assert manifest.measurements.chosen == "fp32" and manifest.measurements.candidates[0].fps > 0, "not fed 1x1"
    assert manifest.preprocess.size == (192, 192)


def test_throughput_feeds_follow_the_size(tmp_path):
    build_artifact(DYNAMIC, tmp_path / "a", BuildOptions(preprocess=PreprocessConfig(size=(224, 224))),
                   progress=False)
    reference = open_engine(DYNAMIC)
    candidate = open_artifact(tmp_path / "a", ORT)
    try:
        pair = {"reference": reference, "candidate": candidate}
        assert throughput_feeds({"reference": reference})["images"].shape == (1, 3, 160, 160), "its imgsz"
        assert throughput_feeds(pair)["images"].shape == (1, 3, 224, 224), "what the candidate was built for"
        assert throughput_feeds(pair, PreprocessConfig(size=(96, 64)))["images"].shape == (1, 3, 64, 96)
        rates = measure_throughput(pair, rounds=1, round_s=0.01)
        assert rates["candidate"]["fps"] > 0
    finally:
        reference.close()
        candidate.close()


def test_tensorrt_max_batch_defaults_to_the_exported_batch(tmp_path, fake_trt):
    model = onnx.load(str(DYNAMIC))
    for entry in model.metadata_props:
        if entry.key == "batch":
            entry.value = "4"  # Ultralytics export(dynamic=True, batch=4)
    onnx.save(model, str(tmp_path / "b4.onnx"))
    manifest = build_artifact(tmp_path / "b4.onnx", tmp_path / "trt", BuildOptions(target="tensorrt"), progress=False)
    assert manifest.profiles == [{"images": [[1, 3, 160, 160], [1, 3, 160, 160], [4, 3, 160, 160]]}]
    manifest = build_artifact(tmp_path / "b4.onnx", tmp_path / "trt2", BuildOptions(
        target="tensorrt", trt=TrtOptions(max_batch=2)), progress=False)
    assert manifest.profiles[0]["images"][2] == [2, 3, 160, 160], "--max-batch wins"
    assert default_max_batch(None, {"batch": "99999"}) == 1 and default_max_batch(None, {}) == 1
