"""model.inputs and postprocess raw limits arrive over the network too: every field is bounded and checked."""

import pytest
from pydantic import ValidationError

from lepton_edge.config.device import load_config, parse_config
from lepton_edge.config.pipeline import MAX_CONSTANT_VALUES, InputsConfig, RawConfig
from lepton_edge.core.errors import ConfigError


def test_silero_vad_inputs_parse_from_a_device_config():
    config = parse_config({
        "model": {"path": "vad.onnx", "inputs": {"constants": {"sr": 16000},
                                                 "state": [{"output": "stateN", "input": "state"}]}},
        "source": {"uri": "audio.npz"},
    }, "test")
    inputs = config.model.inputs
    assert inputs.constants == {"sr": 16000} and inputs.state[0].input == "state"
    assert inputs.state_reset == "on_reopen" and inputs.recorded == {} and inputs.image is None
    assert parse_config({"model": {"path": "m.onnx"}, "source": {"uri": "x.mp4"}}, "t").model.inputs == InputsConfig()


@pytest.mark.parametrize(("inputs", "message"), [
    ({"constants": {"sr": True}}, "got bool"),
    ({"constants": {"sr": "16000"}}, "got str"),
    ({"constants": {"sr": None}}, "got NoneType"),
    ({"constants": {"x": {"a": 1}}}, "got dict"),
    ({"constants": {"x": float("nan")}}, "finite"),
    ({"constants": {"x": [1.0, float("inf")]}}, "finite"),
    ({"constants": {"x": 2 ** 64}}, "does not fit in 64 bits"),
    ({"constants": {"x": [0] * (MAX_CONSTANT_VALUES + 1)}}, "more than 4096 numbers"),
    ({"constants": {"x": [[0] * 100] * 100}}, "more than 4096 numbers"),
    ({"constants": {"x": []}}, "empty list"),
    ({"constants": {"x": [[[[[[[[[[1]]]]]]]]]]}}, "deeper than 8"),
    ({"constants": {f"c{i}": 1 for i in range(65)}}, "at most 64"),
    ({"constants": {"x\n": 1}}, "pattern"),
    ({"constants": {"x" * 257: 1}}, "at most 256"),
    ({"constants": {"": 1}}, "at least 1"),
    ({"state": [{"output": "a", "input": "b"}] * 65}, "at most 64"),
    ({"state": [{"output": "a", "input": "b", "shape": [0]}]}, "greater than or equal to 1"),
    ({"state": [{"output": "a", "input": "b", "shape": [70000]}]}, "less than or equal to 65536"),
    ({"state": [{"output": "a", "input": "b", "shape": [1024, 1024, 2]}]}, "more than 1048576 values"),
    ({"state": [{"output": "a", "input": "b", "shape": [1] * 9}]}, "at most 8"),
    ({"state": [{"output": "a", "input": "b", "initial": "ones"}]}, "Extra inputs are not permitted"),
    ({"state": [{"output": "a", "input": "b"}, {"output": "a", "input": "c"}]}, "fed back twice"),
    ({"state": [{"output": "a", "input": "b"}], "constants": {"b": 1}}, "given twice"),
    ({"recorded": {"x": "a"}, "image": "x"}, "given twice"),
    ({"state_reset": "sometimes"}, "on_reopen"),
    ({"recorded": {"x": 3}}, "valid string"),
])
def test_abusive_inputs_are_refused(inputs, message):
    with pytest.raises(ValidationError, match=message):
        InputsConfig.model_validate(inputs)


def test_a_refused_constant_names_the_file_and_field(tmp_path):
    path = tmp_path / "device.yaml"
    path.write_text("model: {path: m.onnx, inputs: {constants: {sr: [1, .nan]}}}\nsource: {uri: a.npz}\n")
    with pytest.raises(ConfigError, match=r"model\.inputs\.constants.*constant 'sr'.*finite"):
        load_config(path)


def test_the_largest_allowed_constant_is_accepted():
    assert InputsConfig(constants={"x": [[0.5] * 64] * 64}).constants["x"][63][63] == 0.5


@pytest.mark.parametrize(("raw", "message"), [
    ({"max_values": -1}, "greater than or equal to 0"),
    ({"max_values": 2 ** 21}, "less than or equal to 1048576"),
    ({"outputs": ["a"] * 65}, "at most 64"),
    ({"outputs": ["bad\x00name"]}, "pattern"),
])
def test_raw_limits_are_bounded(raw, message):
    with pytest.raises(ValidationError, match=message):
        RawConfig.model_validate({"type": "raw", **raw})
