"""Models with several inputs and recurrent state: Silero VAD from recorded audio, state feedback and its resets,
constants, an image + metadata model, raw outputs with their values, and what the runtime refuses."""

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from lepton_edge.config.device import parse_config
from lepton_edge.config.pipeline import InputsConfig, RawConfig
from lepton_edge.core.errors import ConfigError, LeptonError, ModelError
from lepton_edge.core.results import RawOutputs
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.device.controller import open_pipeline
from lepton_edge.runtime.inputs import InputState, plan_inputs, state_candidates
from lepton_edge.runtime.postprocess.raw import RawPostprocessor
from lepton_edge.runtime.preprocess import Transform
from tests.runtime.test_pipeline import ListSink

ROOT = Path(__file__).resolve().parents[2]
VAD = ROOT / "models" / "silero_vad.onnx"
AUDIO = ROOT / "models" / "silero_vad_audio.npz"
VAD_INPUTS = {"constants": {"sr": 16000}, "state": [{"output": "stateN", "input": "state"}]}


def vad_config(tmp_path, inputs=None, source=None, **extra):
    data = {
        "model": {"path": str(VAD), "inputs": {**VAD_INPUTS, **(inputs or {})}},
        "source": {"uri": str(AUDIO), **(source or {})},
        "postprocess": {"type": "raw"},
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "results.jsonl")}],
        **extra,
    }
    return parse_config(data, "test")


def run_vad(tmp_path, **kwargs):
    """The speech probability of every frame, from the jsonl the pipeline wrote, and the stats."""
    pipeline = open_pipeline(vad_config(tmp_path, **kwargs))
    stats = pipeline.run()
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    return np.array([line["outputs"]["output"]["values"][0][0] for line in lines]), lines, stats


def onnxruntime_reference(reset_every_frame=False):
    """Silero VAD run by hand with onnxruntime, state fed back as its own wrapper does."""
    session = ort.InferenceSession(str(VAD), providers=["CPUExecutionProvider"])
    state, probabilities = np.zeros((2, 1, 128), np.float32), []
    for frame in np.load(AUDIO)["input"]:
        if reset_every_frame:
            state = np.zeros((2, 1, 128), np.float32)
        out, state = session.run(None, {"input": frame[None], "state": state, "sr": np.array(16000, np.int64)})
        probabilities.append(float(out[0, 0]))
    return np.array(probabilities)


def test_vad_runs_from_recorded_audio_with_state_fed_back(tmp_path):
    probabilities, lines, stats = run_vad(tmp_path)
    assert stats["results"] == len(np.load(AUDIO)["input"]) == 125 and stats["drops"] == {}
    np.testing.assert_allclose(probabilities, onnxruntime_reference(), atol=1e-5)
    assert [line["seq"] for line in lines] == list(range(125)), "every frame, in order"
    # the recording: near-silence, noise, a synthetic vowel, near-silence (models/silero_vad.md)
    assert probabilities[:31].max() < 0.2 and probabilities[31:62].max() < 0.2
    assert probabilities[62:90].mean() > 0.8 and probabilities[-10:].max() < 0.1
    # the jsonl holds real values of every output: the state too (256 values, under max_values)
    state = np.array(lines[80]["outputs"]["stateN"]["values"])
    assert state.shape == (2, 1, 128) and np.abs(state).max() > 0.1


def test_state_matters_probabilities_differ_when_reset_every_frame(tmp_path):
    fed_back, _, _ = run_vad(tmp_path / "a")
    reset, _, _ = run_vad(tmp_path / "b", inputs={"state_reset": "every_frame"})
    np.testing.assert_allclose(reset, onnxruntime_reference(reset_every_frame=True), atol=1e-5)
    assert np.abs(fed_back - reset).max() > 0.3, "state feedback must change the answers, or the test proves nothing"


def test_state_resets_when_the_source_opens_again(tmp_path):
    """With loop, the recording plays twice: the second pass starts from zero state, so it repeats the first."""
    pipeline = open_pipeline(vad_config(tmp_path, source={"loop": True}))
    pipeline.max_frames = 250
    pipeline.run()
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    probabilities = np.array([line["outputs"]["output"]["values"][0][0] for line in lines])
    assert len(probabilities) == 250
    np.testing.assert_allclose(probabilities[125:], probabilities[:125], atol=1e-6)

    never = open_pipeline(vad_config(tmp_path / "never", inputs={"state_reset": "never"}, source={"loop": True}))
    never.max_frames = 250
    never.run()
    kept = [json.loads(line) for line in (tmp_path / "never" / "results.jsonl").read_text().splitlines()]
    second = np.array([line["outputs"]["output"]["values"][0][0] for line in kept[125:]])
    assert np.abs(second - probabilities[:125]).max() > 0.01, "state kept across the loop changes the second pass"


def test_a_live_stateful_model_drops_no_frames_and_says_so(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    pipeline = open_pipeline(vad_config(tmp_path, source={"uri": f"npy://{AUDIO}?fps=400", "live": True,
                                                          "max_frame_age_ms": 0.001}))
    assert pipeline.live and not pipeline.drops_frames
    assert "frames from this live source are not dropped" in caplog.text
    stats = pipeline.run()
    assert stats["results"] == 125 and stats["drops"] == {}, "no frame dropped, even far past max_frame_age_ms"


def test_a_live_model_resetting_every_frame_drops_again(tmp_path):
    pipeline = open_pipeline(vad_config(tmp_path, inputs={"state_reset": "every_frame"},
                                        source={"uri": f"npy://{AUDIO}?fps=400", "live": True}))
    try:
        assert pipeline.drops_frames
    finally:
        pipeline.reader.close()
        pipeline.model.close()


def test_raw_outputs_can_be_restricted_and_summarised_above_the_size_limit(tmp_path):
    _, lines, _ = run_vad(tmp_path, postprocess={"type": "raw", "outputs": ["output"], "max_values": 1})
    assert set(lines[0]["outputs"]) == {"output"}
    assert lines[70]["outputs"]["output"]["values"][0][0] > 0.5
    big = RawOutputs({"x": np.arange(12, dtype=np.float32).reshape(3, 4), "n": np.array([1.0, np.nan])}, 10)
    out = big.to_dict()["outputs"]
    assert out["x"] == {"shape": [3, 4], "dtype": "float32", "size": 12, "values_omitted": True, "min": 0.0,
                        "max": 11.0, "mean": 5.5}
    assert out["n"]["values"] == [1.0, None], "NaN is written as null: JSON has no NaN"
    json.dumps(big.to_dict(), allow_nan=False)


def test_raw_postprocessor_refuses_unknown_outputs():
    specs = [TensorSpec("output", (1, 1), np.dtype(np.float32))]
    with pytest.raises(ModelError, match=r"postprocess.outputs names \['nope'\]"):
        RawPostprocessor(specs, RawConfig(type="raw", outputs=["nope"]))
    post = RawPostprocessor(specs)
    assert post([np.ones((1, 1), np.float32)], Transform.identity(1, 1)).max_values == 4096


def test_the_vad_without_its_state_and_constant_is_refused_clearly(tmp_path):
    data = {"model": {"path": str(VAD)}, "source": {"uri": str(AUDIO)}, "postprocess": {"type": "raw"}}
    pipeline = open_pipeline(parse_config(data, "test"))
    with pytest.raises(LeptonError, match=r"the recording holds one array, but the model reads \['input', 'state', "
                                          r"'sr'\]"):
        pipeline.run()


def test_plan_names_what_the_config_gets_wrong():
    inputs = [TensorSpec("input", ("batch", "sequence"), np.dtype(np.float32)),
              TensorSpec("state", (2, "batch", 128), np.dtype(np.float32)),
              TensorSpec("sr", (), np.dtype(np.int64))]
    outputs = [TensorSpec("output", ("batch", 1), np.dtype(np.float32)),
               TensorSpec("stateN", ("a", "batch", "b"), np.dtype(np.float32))]
    assert state_candidates(inputs, outputs) == [("stateN", "state")]
    plan = plan_inputs(inputs, outputs, InputsConfig(**VAD_INPUTS), source="tensor")
    assert plan.recorded == {"input": "input"} and plan.stateful and plan.constants["sr"].shape == ()
    with pytest.raises(ModelError, match=r"names \['srate'\], which are not inputs"):
        plan_inputs(inputs, outputs, InputsConfig(constants={"srate": 16000}), source="tensor")
    with pytest.raises(ModelError, match=r"output\(s\) \['state_out'\]"):
        plan_inputs(inputs, outputs, InputsConfig(state=[{"output": "state_out", "input": "state"}]), source="tensor")
    with pytest.raises(ModelError, match="does not fit int64"):
        plan_inputs(inputs, outputs, InputsConfig(constants={"sr": 16000.5}), source="tensor")
    with pytest.raises(ModelError, match=r"constant 'sr' of shape \[2\]"):
        plan_inputs(inputs, outputs, InputsConfig(constants={"sr": [1, 2]}), source="tensor")
    with pytest.raises(ModelError, match=r"state shape \[2, 1, 64\] does not fit"):
        plan_inputs(inputs, outputs, InputsConfig(state=[{"output": "stateN", "input": "state", "shape": [2, 1, 64]}]),
                    source="tensor")
    with pytest.raises(ModelError, match=r"image sources feed one input.*'sr' is an integer scalar"):
        plan_inputs(inputs, outputs, InputsConfig(), source="image")
    text = [TensorSpec("text", (1,), np.dtype(object))]
    with pytest.raises(ModelError, match="cannot feed"):
        plan_inputs(text, outputs, None, source="tensor")


def test_input_state_feeds_back_and_resets():
    inputs = [TensorSpec("x", (1,), np.dtype(np.float32)), TensorSpec("h", (1, 2), np.dtype(np.float32))]
    outputs = [TensorSpec("y", (1,), np.dtype(np.float32)), TensorSpec("h_out", (1, 2), np.dtype(np.float32))]
    state = InputState(plan_inputs(inputs, outputs, InputsConfig(state=[{"output": "h_out", "input": "h"}]),
                                   source="tensor"))
    assert state.feeds({"x": np.ones(1)})["h"].tolist() == [[0.0, 0.0]]
    state.update([np.ones(1), np.array([[1.0, 2.0]])])
    assert state.feeds({"x": np.ones(1)})["h"].tolist() == [[1.0, 2.0]]
    state.update([])  # a failed inference (a model on probation) leaves the state as it was
    assert state.feeds({"x": np.ones(1)})["h"].tolist() == [[1.0, 2.0]]
    with pytest.raises(ModelError, match="cannot be fed back"):
        state.update([np.ones(1), np.ones((3, 3))])
    state.reset()
    assert state.feeds({"x": np.ones(1)})["h"].tolist() == [[0.0, 0.0]]


def image_meta_model(path: Path) -> Path:
    """images [1,3,16,16] and meta [1,2] -> out [1,2] = mean colour of the first two channels + meta."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("Slice", ["mean", "starts", "ends", "axes"], ["rg"]),
        helper.make_node("Add", ["rg", "meta"], ["out"]),
    ]
    inits = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("starts", 0), ("ends", 2), ("axes", 1))]
    graph = helper.make_graph(
        nodes, "image_meta",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16]),
         helper.make_tensor_value_info("meta", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_image_plus_metadata_model_gets_the_image_preprocessed_and_the_rest_from_constants(tmp_path):
    model = image_meta_model(tmp_path / "image_meta.onnx")
    data = {"model": {"path": str(model), "inputs": {"constants": {"meta": [[100.0, 200.0]]}}},
            "source": {"uri": "synthetic://shapes?width=64&height=48&frames=3"},
            "preprocess": {"resize": "stretch"}, "postprocess": {"type": "raw"}}
    sink = ListSink()
    pipeline = open_pipeline(parse_config(data, "test"), extra_sinks=[sink])
    assert pipeline.model.plan.image.name == "images" and pipeline.preprocessor.shape == (1, 3, 16, 16)
    pipeline.run()
    assert len(sink.results) == 3
    for result in sink.results:
        out = result.output.outputs["out"][0]
        assert 100.0 <= out[0] <= 101.0 and 200.0 <= out[1] <= 201.0, "image means (0..1) plus the constant"

    data["model"]["inputs"] = {}
    with pytest.raises((ConfigError, ModelError), match=r"image sources feed one input, and 2 are left unfed"):
        open_pipeline(parse_config(data, "test"))
