"""The agent section of the device config (lepton_edge/config/device.py: AgentConfig and friends)."""

from pathlib import Path

import pytest

from lepton_edge.config.device import default_state_dir, load_config, parse_config
from lepton_edge.core.errors import ConfigError

BASE = {"device_id": "cam-7", "model": {"path": "m.onnx"}, "source": {"uri": "a.mp4"}}


def test_defaults_follow_the_device_id_and_the_state_dir(monkeypatch):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = parse_config({**BASE, "agent": {}}, "inline")
    agent = config.agent
    assert agent.mqtt.client_id == "cam-7" and agent.mqtt.host == "localhost"
    assert agent.state_dir == Path.home() / ".local" / "state" / "lepton-edge"
    assert agent.outbox.path == agent.state_dir / "outbox.db"
    assert agent.prometheus_port is None and agent.prometheus_host == "127.0.0.1"
    assert parse_config(BASE, "inline").agent is None


def test_systemd_state_directory_is_the_default(monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/lepton-edge:/var/lib/other")
    assert default_state_dir() == Path("/var/lib/lepton-edge")
    config = parse_config({**BASE, "agent": {"mqtt": {"client_id": "fixed"}}}, "inline")
    assert config.agent.outbox.path == Path("/var/lib/lepton-edge/outbox.db")
    assert config.agent.mqtt.client_id == "fixed"


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    path = tmp_path / "device.yaml"
    path.write_text(
        "device_id: d\nmodel: {path: m.onnx}\nsource: {uri: a.mp4}\n"
        "agent: {state_dir: state, artifact_public_key: keys/pub.pem}\n"
    )
    agent = load_config(path).agent
    assert agent.state_dir == tmp_path / "state"
    assert agent.outbox.path == tmp_path / "state" / "outbox.db"
    assert agent.artifact_public_key == tmp_path / "keys" / "pub.pem"


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        ({"telemetry_intervall_s": 1}, r"agent\.telemetry_intervall_s: Extra inputs are not permitted"),
        (
            {"results": {"durable": True, "qos": 0}},
            r"agent\.results: Value error, durable results need qos 1",
        ),
        ({"telemetry_interval_s": 0}, r"agent\.telemetry_interval_s: Input should be greater than 0"),
        ({"mqtt": {"port": 70000}}, r"agent\.mqtt\.port: Input should be less than or equal to 65535"),
        ({"health_check": {"min_frames": 0}}, r"agent\.health_check\.min_frames"),
    ],
)
def test_mistakes_name_the_field(agent, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config({**BASE, "agent": agent}, "inline")
