import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from lepton_edge.config.device import DeviceConfig, load_config, parse_config
from lepton_edge.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "device.example.yaml"


def _models(model: type[BaseModel], seen: set) -> list[type[BaseModel]]:
    """Every pydantic model reachable from ``model`` (through unions and lists)."""
    import typing

    found = []
    if model in seen:
        return found
    seen.add(model)
    found.append(model)
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                found += _models(t, seen)
            stack.extend(typing.get_args(t))
    return found


def test_example_config_is_valid_and_resolves_paths_against_its_folder():
    config = load_config(EXAMPLE)
    assert config.model.path == ROOT / "models" / "shapes_detector.onnx"
    assert config.source.uri.startswith("synthetic://")


def test_every_field_is_described_and_shown_in_the_example():
    text = EXAMPLE.read_text()
    for model in _models(DeviceConfig, set()):
        assert model.model_config.get("extra") == "forbid", model.__name__
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert re.search(rf"\b{name}:", text), f"{model.__name__}.{name} is missing from {EXAMPLE.name}"


def test_unknown_field_names_the_file_and_path(tmp_path):
    cfg = tmp_path / "device.yaml"
    cfg.write_text("model: {path: m.onnx}\nsource: {uri: x.mp4, max_frame_agee_ms: 3}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    msg = str(e.value)
    assert str(cfg) in msg and "source.max_frame_agee_ms" in msg and "Extra inputs are not permitted" in msg


def test_wrong_type_and_range_are_reported_with_the_value(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_config({"model": {"path": "m.onnx"}, "source": {"uri": "a.mp4", "max_frame_age_ms": -1},
                      "postprocess": {"type": "detect", "conf_threshold": "high"}}, "inline")
    msg = str(e.value)
    assert "source.max_frame_age_ms" in msg and "(got -1)" in msg
    assert "postprocess.detect.conf_threshold" in msg


def test_missing_required_sections(tmp_path):
    with pytest.raises(ConfigError, match=r"inline: \(top level\): model is required unless idle: true"):
        parse_config({"source": {"uri": "a.mp4"}}, "inline")
    with pytest.raises(ConfigError, match=r"model and source are required unless idle: true"):
        parse_config({"idle": False}, "inline")


def test_idle_config_needs_no_model_and_source_and_resolves_its_paths(tmp_path):
    cfg = tmp_path / "idle.yaml"
    cfg.write_text("device_id: parked\nidle: true\nagent: {mqtt: {host: broker}, state_dir: state}\n")
    config = load_config(cfg)
    assert config.idle and config.model is None and config.source is None and config.sinks == []
    assert config.agent.state_dir == tmp_path / "state"
    # loading again what was loaded (as `lepton-edge run` does with overrides) keeps it valid and idle
    again = parse_config(config.model_dump(mode="python", exclude_unset=True), "again", base_dir=tmp_path)
    assert again == config


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"model": {"path": "m.onnx"}}, "so model would be ignored: remove it"),
        ({"model": {"path": "m.onnx"}, "source": {"uri": "a.mp4"}}, "so model and source would be ignored"),
        ({"sinks": [], "backend": {"type": "onnxruntime"}}, "so backend and sinks would be ignored: remove them"),
    ],
)
def test_idle_with_a_workload_section_is_refused(extra, named):
    with pytest.raises(ConfigError) as e:
        parse_config({"idle": True, **extra}, "inline")
    assert named in str(e.value) and "or set idle: false" in str(e.value)


def test_unknown_sink_type_lists_the_choices():
    with pytest.raises(ConfigError, match=r"sinks\.0.*'jsonl', 'video', 'console'"):
        parse_config({"model": {"path": "m"}, "source": {"uri": "a"}, "sinks": [{"type": "kafka"}]}, "inline")


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


def test_mean_std_validation():
    base = {"model": {"path": "m"}, "source": {"uri": "a"}}
    with pytest.raises(ConfigError, match="std must not contain 0"):
        parse_config({**base, "preprocess": {"std": [1, 0, 1]}}, "inline")
    with pytest.raises(ConfigError, match="1 or 3 values"):
        parse_config({**base, "preprocess": {"mean": [1, 2]}}, "inline")
