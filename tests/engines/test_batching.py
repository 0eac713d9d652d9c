"""Batching: which models can run several frames per call and why not; builds that keep or set a batch axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from lepton_edge.cli import main
from lepton_edge.cli.inspect import format_manifest
from lepton_edge.config.pipeline import ModelConfig, OnnxRuntimeBackendConfig, TensorRTBackendConfig
from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.data.yolov8n_sized import build_bench_model, build_yolov8n_sized
from lepton_edge.engines.artifacts import compute_fingerprint, open_artifact, read_manifest
from lepton_edge.engines.batching import batch_capability, set_batch, stream_batch
from lepton_edge.engines.builder import build_artifact
from lepton_edge.engines.engine_cache import cache_key, resolve
from lepton_edge.engines.onnx_tools import inspect_onnx
from lepton_edge.engines.options import BuildOptions, TrtOptions
from tests.support.fake_cuda import FakeGpu, block_pycuda, install_cuda_python
from tests.support.fake_tensorrt import install_tensorrt

REPO = Path(__file__).resolve().parents[2]
FRAMES = REPO / "models" / "ultralytics" / "frames"
CLASSIFIER = REPO / "models" / "ultralytics" / "classify" / "yolo11t-cls.onnx"
"""Ultralytics static export: input [1, 3, 128, 128], a graph that carries any batch."""
DYNAMIC = REPO / "models" / "ultralytics" / "detect" / "yolo11t-detect_dynamic.onnx"
SHAPES = REPO / "models" / "shapes_detector.onnx"
VAD = REPO / "models" / "silero_vad.onnx"
INT8 = {"precision": "int8", "calibration_data": str(FRAMES), "fidelity": False,
        "calibration_options": {"samples": 4, "method": "minmax"}}


def _save(path: Path, nodes: list, inputs: list, outputs: list, initializers: list | None = None) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _frames(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(3).random((n, 3, size, size), dtype=np.float32)


def _per_frame(session: ort.InferenceSession, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the outputs of one call on all frames, the outputs of one call per frame, stacked)."""
    name = session.get_inputs()[0].name
    batched = session.run(None, {name: frames})[0]
    single = np.concatenate([session.run(None, {name: frames[i:i + 1]})[0] for i in range(len(frames))])
    return batched, single


# -- batch_capability ----------------------------------------------------------------------------------------

def test_a_dynamic_batch_model_batches(tmp_path):
    capability = batch_capability(build_yolov8n_sized(tmp_path / "dyn.onnx", size=64, dynamic_batch=True))
    assert (capability.kind, capability.max_batch, capability.input) == ("dynamic", None, "images")
    assert capability.settable and capability.fault is None


def test_a_reshape_that_hard_codes_batch_one_is_named(tmp_path):
    capability = batch_capability(build_yolov8n_sized(tmp_path / "one.onnx", size=64))
    assert (capability.kind, capability.max_batch, capability.settable) == ("single", 1, False)
    assert capability.fault == "model.22.cv2.0.flat"
    assert "Reshape node 'model.22.cv2.0.flat'" in capability.reason
    assert "'model.22.cv2.0.flat.shape' is [1, 64, -1]" in capability.reason


def test_a_dynamic_input_whose_graph_hard_codes_batch_one_cannot_batch(tmp_path):
    """A declared dynamic batch is not trusted: a Flatten with axis 0 folds the frames together."""
    path = _save(tmp_path / "flat.onnx", [helper.make_node("Flatten", ["x"], ["y"], name="fold", axis=0)],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None])])
    capability = batch_capability(path)
    assert capability.kind == "single" and capability.fault == "fold"
    assert "declares a dynamic batch" in capability.reason and "Flatten node 'fold'" in capability.reason


def test_the_onnxruntime_probe_finds_an_output_that_lost_the_batch(tmp_path):
    """A shape computed from the data is unknown to shape inference; onnxruntime at batch 2 shows the frames mixed."""
    path = _save(
        tmp_path / "probe.onnx",
        [helper.make_node("ReduceMin", ["x"], ["low"], name="low", keepdims=0),
         helper.make_node("Mul", ["low", "zero"], ["nothing"], name="nothing"),
         helper.make_node("Add", ["nothing", "unit"], ["rows"], name="rows"),
         helper.make_node("Cast", ["rows"], ["rows_int"], name="rows_int", to=TensorProto.INT64),
         helper.make_node("Unsqueeze", ["rows_int", "axis"], ["first"], name="first"),
         helper.make_node("Concat", ["first", "rest"], ["target"], name="target", axis=0),
         helper.make_node("Reshape", ["x", "target"], ["y"], name="to_rows")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
         helper.make_tensor("unit", TensorProto.FLOAT, [], [1.0]),
         helper.make_tensor("axis", TensorProto.INT64, [1], [0]),
         helper.make_tensor("rest", TensorProto.INT64, [1], [-1])])
    assert batch_capability(path, probe=False).kind == "dynamic", "inference alone cannot tell"
    capability = batch_capability(path)
    assert capability.kind == "single" and capability.fault == "y"
    assert "output 'y' has 1 rows on axis 0 for 2 frames" in capability.reason


def test_a_fixed_batch_runs_that_many_frames(tmp_path):
    path = _save(tmp_path / "four.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 8, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3, 8, 8])])
    capability = batch_capability(path)
    assert (capability.kind, capability.max_batch) == ("fixed", 4)


def test_a_batch_one_export_whose_graph_allows_more_says_how():
    capability = batch_capability(CLASSIFIER)
    assert (capability.kind, capability.settable) == ("single", True)
    assert "build --batch dynamic" in capability.reason


def test_state_fed_back_and_several_framed_inputs_cannot_batch(tmp_path):
    stateful = batch_capability(VAD)
    assert stateful.kind == "single" and "state is fed back between frames ('state' from output 'stateN')" in \
        stateful.reason
    path = _save(tmp_path / "two.onnx", [helper.make_node("Add", ["a", "b"], ["y"])],
                 [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 3]) for n in ("a", "b")],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    two = batch_capability(path)
    assert two.kind == "single" and "2 framed inputs (a, b)" in two.reason


# -- set_batch and builds --------------------------------------------------------------------------------------

def test_set_batch_makes_a_batch_one_export_dynamic(tmp_path):
    capability = set_batch(CLASSIFIER, tmp_path / "dyn.onnx", "dynamic")
    assert capability.kind == "dynamic"
    assert inspect_onnx(tmp_path / "dyn.onnx").inputs[0].shape == ("batch", 3, 128, 128)
    batched, single = _per_frame(_session(tmp_path / "dyn.onnx"), _frames(3, 128))
    assert batched.shape[0] == 3
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
    fixed = set_batch(CLASSIFIER, tmp_path / "two.onnx", 2)
    assert (fixed.kind, fixed.max_batch) == ("fixed", 2)


def _folding(path: Path) -> Path:
    """A batch-1 graph whose Flatten (axis 0) folds the frames together: no rewrite can give it a batch."""
    return _save(path, [helper.make_node("Flatten", ["x"], ["y"], name="fold", axis=0)],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 48])])


def _pinned(path: Path, after: list, shape_nodes: list | None = None, allowzero: int = 0) -> Path:
    """x [1, 3, 4, 4] -> Reshape 'pin' to ``target`` (1 on axis 0) -> ``after`` nodes -> z."""
    initializers = [helper.make_tensor("one", TensorProto.INT64, [1], [1]),
                    helper.make_tensor("rest", TensorProto.INT64, [1], [-1])]
    if shape_nodes is None:
        shape_nodes = [helper.make_node("Concat", ["one", "rest"], ["target"], name="target", axis=0)]
    return _save(path, [*shape_nodes, helper.make_node("Reshape", ["x", "target"], ["y"], name="pin",
                                                       allowzero=allowzero), *after],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                 [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 48])], initializers)


def test_set_batch_gives_the_demo_detectors_pinned_reshapes_the_batch_and_proves_it(tmp_path):
    """shapes_detector.onnx hard-codes batch 1 in six Reshapes ([1, 4, -1], [1, 3, -1]): they get 0 there."""
    capability = set_batch(SHAPES, tmp_path / "dyn.onnx", "dynamic")
    assert capability.kind == "dynamic" and "'/Reshape', '/Reshape_1'" in capability.reason
    assert batch_capability(tmp_path / "dyn.onnx").kind == "dynamic", "the written graph carries the batch"
    assert inspect_onnx(tmp_path / "dyn.onnx").inputs[0].shape == ("batch", 3, 320, 320)
    frames = _frames(3, 320)
    original = _session(SHAPES).run(None, {"images": frames[:1]})[0]
    batched, single = _per_frame(_session(tmp_path / "dyn.onnx"), frames)
    np.testing.assert_allclose(single[:1], original, rtol=1e-5, atol=1e-4)
    assert batched.shape == (3, 7, 2100)
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-3)
    fixed = set_batch(SHAPES, tmp_path / "two.onnx", 2)
    assert (fixed.kind, fixed.max_batch) == ("fixed", 2)


def test_set_batch_rewrites_a_concat_of_constants_and_a_constant_node(tmp_path):
    concat = set_batch(_pinned(tmp_path / "concat.onnx", [helper.make_node("Relu", ["y"], ["z"])]),
                       tmp_path / "a.onnx", "dynamic")
    assert concat.kind == "dynamic" and "'pin'" in concat.reason
    batched, single = _per_frame(_session(tmp_path / "a.onnx"), _frames(4, 4))
    assert batched.shape == (4, 48)
    np.testing.assert_array_equal(batched, single)
    constant = [helper.make_node("Constant", [], ["target"], name="target",
                                 value=helper.make_tensor("v", TensorProto.INT64, [2], [1, 48]))]
    path = _pinned(tmp_path / "const.onnx", [helper.make_node("Relu", ["y"], ["z"])], constant)
    assert set_batch(path, tmp_path / "b.onnx", 3).max_batch == 3


def test_set_batch_refuses_a_graph_that_hard_codes_its_batch_naming_the_node(tmp_path):
    with pytest.raises(ModelError, match=r"cannot set batch dynamic: .*Flatten node 'fold'"):
        set_batch(_folding(tmp_path / "fold.onnx"), tmp_path / "out.onnx", "dynamic")
    with pytest.raises(ModelError, match=r"Flatten node 'fold'"):
        build_artifact(tmp_path / "fold.onnx", tmp_path / "art", BuildOptions(batch=4), progress=False)
    assert not (tmp_path / "art").exists()
    with pytest.raises(ModelError, match=r"cannot set batch dynamic: .*Reshape node 'pin'"):  # allowzero=1: 0 is 0
        set_batch(_pinned(tmp_path / "zero.onnx", [helper.make_node("Relu", ["y"], ["z"])], allowzero=1),
                  tmp_path / "out.onnx", "dynamic")


def test_set_batch_refuses_a_rewrite_that_still_cannot_batch_naming_the_next_node(tmp_path):
    """The Reshape is fixed, but a ReduceMax over axis 0 after it folds the frames: shape inference names it."""
    path = _pinned(tmp_path / "reduce.onnx", [helper.make_node("ReduceMax", ["y"], ["z"], name="over_frames",
                                                               axes=[0], keepdims=1)])
    with pytest.raises(ModelError, match=r"after giving Reshape node\(s\) 'pin' the input's batch, ReduceMax node "
                       r"'over_frames' fixes axis 0"):
        set_batch(path, tmp_path / "out.onnx", "dynamic")


def test_set_batch_refuses_a_rewrite_whose_frames_mix_at_run_time(tmp_path):
    """The batch survives in the shapes, but each row is scaled by the maximum over the whole batch: only running
    it shows batch 3 differs from 3 batch-1 calls."""
    path = _pinned(tmp_path / "mix.onnx", [helper.make_node("ReduceMax", ["y"], ["top"], name="top", keepdims=0),
                                           helper.make_node("Sub", ["y", "top"], ["z"], name="shift")])
    with pytest.raises(ModelError, match=r"Reshape node\(s\) 'pin' were given the input's batch, but output 'z' at "
                       r"batch 3 differs from 3 batch-1 calls"):
        set_batch(path, tmp_path / "out.onnx", "dynamic")
    assert not (tmp_path / "out.onnx").exists()


def test_an_int8_artifact_of_a_dynamic_batch_model_gives_per_frame_outputs_at_batch_4(tmp_path):
    model = build_bench_model(tmp_path / "bench.onnx", size=96)
    build_artifact(model, tmp_path / "int8", BuildOptions(**INT8), progress=False)
    engine = tmp_path / "int8" / "model.onnx"
    assert inspect_onnx(engine).has_qdq and inspect_onnx(engine).inputs[0].shape[0] == "batch"
    batched, single = _per_frame(_session(engine), _frames(4, 96))
    assert batched.shape == (4, 84, (96 // 8) ** 2 + (96 // 16) ** 2 + (96 // 32) ** 2)
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-3 * np.abs(single).max())


def test_build_batch_dynamic_gives_an_int8_engine_a_batch_axis_and_records_it(tmp_path):
    manifest = build_artifact(CLASSIFIER, tmp_path / "int8", BuildOptions(**INT8, batch="dynamic"), progress=False)
    assert manifest.builder.batch == "dynamic"
    assert manifest.source_model.sha256 == inspect_onnx(CLASSIFIER).sha256, "the source is the user's model"
    assert manifest.fingerprint == compute_fingerprint(read_manifest(tmp_path / "int8"))
    engine = tmp_path / "int8" / "model.onnx"
    assert inspect_onnx(engine).inputs[0].shape == ("batch", 3, 128, 128)
    batched, single = _per_frame(_session(engine), _frames(4, 128))
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-4)
    with open_artifact(tmp_path / "int8", OnnxRuntimeBackendConfig(warmup_runs=0)) as backend:
        assert backend.infer({"images": _frames(4, 128)})[0].shape[0] == 4, "the runtime opens it and batches"
    assert "batch:       dynamic (the image input's batch axis, set at build)" in format_manifest(manifest)


def test_build_batch_on_the_command_line(tmp_path, capsys):
    assert main(["build", "--model", str(_folding(tmp_path / "fold.onnx")), "--batch", "dynamic", "--out",
                 str(tmp_path / "a")]) != 0
    assert "Flatten node 'fold'" in capsys.readouterr().err
    assert main(["build", "--model", str(CLASSIFIER), "--batch", "0", "--out", str(tmp_path / "b")]) != 0
    assert "--batch '0': expected dynamic or a number 1..256" in capsys.readouterr().err
    assert main(["build", "--model", str(CLASSIFIER), "--batch", "2", "--out", str(tmp_path / "c")]) == 0
    assert inspect_onnx(tmp_path / "c" / "model.onnx").inputs[0].shape[0] == 2


def test_a_build_without_batch_keeps_its_fingerprint_fields(tmp_path):
    manifest = build_artifact(CLASSIFIER, tmp_path / "fp32", BuildOptions(), progress=False)
    assert manifest.builder.batch is None
    assert "batch" not in manifest.builder.model_dump(exclude={"batch"})
    assert inspect_onnx(tmp_path / "fp32" / "model.onnx").inputs[0].shape[0] == 1


# -- TensorRT profiles from the streams -----------------------------------------------------------------------

@pytest.fixture
def fake_trt(monkeypatch):
    gpu = FakeGpu()
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    return install_tensorrt(monkeypatch, "10.3.0", gpu)


def _profile_calls(trt):
    return [args for call, args in trt.calls if call == "IOptimizationProfile.set_shape"]


def test_tensorrt_profile_is_tuned_for_the_streams(tmp_path, fake_trt):
    options = BuildOptions(target="tensorrt", precision="fp16", trt=TrtOptions(opt_batch=3, max_batch=8))
    manifest = build_artifact(DYNAMIC, tmp_path / "trt", options, progress=False)
    want = [[1, 3, 160, 160], [3, 3, 160, 160], [8, 3, 160, 160]]
    assert manifest.profiles == [{"images": want}]
    assert _profile_calls(fake_trt) == [("images", *(tuple(s) for s in want))]
    clamped = build_artifact(DYNAMIC, tmp_path / "trt2", options.model_copy(
        update={"trt": TrtOptions(opt_batch=6, max_batch=4)}), progress=False)
    assert clamped.profiles[0]["images"][1][0] == 4, "opt is at most max"


DEVICE_YAML = """
models:
  det: {{path: {model}, batch: {{max_batch: 8}}}}
  cls: {{path: other.onnx}}
workloads:
  - {{stream: cam1, model: det}}
  - {{stream: cam2, model: det}}
  - {{stream: cam3, model: det}}
  - {{stream: cam3, model: cls}}
"""


def test_build_for_a_device_config_takes_opt_from_its_streams_and_max_from_the_model(tmp_path, fake_trt, capsys):
    config = tmp_path / "device.yaml"
    config.write_text(DEVICE_YAML.format(model=DYNAMIC))
    assert main(["build", "--model", str(DYNAMIC), "--target", "tensorrt", "--precision", "fp16",
                 "--config", str(config), "--out", str(tmp_path / "trt")]) == 0
    profile = read_manifest(tmp_path / "trt").profiles[0]["images"]
    assert [shape[0] for shape in profile] == [1, 3, 8]
    assert [shape[0] for shape in _profile_calls(fake_trt)[0][1:]] == [1, 3, 8], "TensorRT got the same batches"
    assert "profile:     images 1x3x160x160 / 3x3x160x160 / 8x3x160x160" in capsys.readouterr().out


def test_stream_batch_reads_both_config_forms(tmp_path):
    where = tmp_path / "device.yaml"
    single = stream_batch({"model": {"path": "m.onnx", "batch": {"max_batch": 2}}}, tmp_path / "m.onnx", where)
    assert (single.streams, single.max_batch) == (1, 2)
    assert stream_batch({"model": {"path": "m.onnx"}}, tmp_path / "m.onnx", where).max_batch is None
    workloads = {f"w{i}": {"stream": f"cam{i}", "model": "det"} for i in range(20)}
    many = stream_batch({"models": {"det": {"path": "m.onnx"}}, "workloads": workloads}, tmp_path / "m.onnx", where)
    assert (many.model, many.streams, many.max_batch) == ("det", 20, 16)
    with pytest.raises(ConfigError, match=r"no single model in models has the path"):
        stream_batch({"models": {"a": {"path": "a.onnx"}, "b": {"path": "b.onnx"}}}, tmp_path / "m.onnx", where)


def test_the_engine_cache_profiles_tensorrt_up_to_the_models_max_batch(tmp_path, fake_trt):
    sha = inspect_onnx(DYNAMIC).sha256
    plain = ModelConfig(path=DYNAMIC, precision="fp16", cache_dir=tmp_path)
    batched = ModelConfig(path=DYNAMIC, precision="fp16", cache_dir=tmp_path, batch={"max_batch": 8})
    assert cache_key(batched, "tensorrt", sha) != cache_key(plain, "tensorrt", sha), "another slot"
    assert cache_key(batched, "onnxruntime-cpu", sha) == cache_key(plain, "onnxruntime-cpu", sha)
    resolution = resolve(batched, TensorRTBackendConfig(type="tensorrt"), progress=False)
    assert [shape[0] for shape in read_manifest(resolution.path).profiles[0]["images"]] == [1, 1, 8]
