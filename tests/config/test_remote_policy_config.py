"""The remote policy section and the upper bounds that keep remote numbers sane."""

from pathlib import Path

import pytest

from lepton_edge.config.device import default_cache_dir, parse_config
from lepton_edge.core.errors import ConfigError


def device(tmp_path: Path, **sections) -> dict:
    agent = {"mqtt": {"host": "127.0.0.1"}, "outbox": {}, "state_dir": str(tmp_path / "state")}
    agent.update(sections.pop("agent", {}))
    return {"model": {"path": "m.onnx"}, "source": {"uri": "synthetic://shapes"}, "agent": agent, **sections}


def test_the_policy_defaults_and_its_relative_folders(tmp_path):
    policy = parse_config(device(tmp_path), "c").agent.remote_policy
    assert policy.allowed_folders is None and policy.http_hosts == []
    assert "gst" not in policy.source_schemes and "rtsp" in policy.source_schemes
    assert policy.max_telemetry_interval_s == 10.0
    data = device(tmp_path, agent={"remote_policy": {"allowed_folders": ["media"], "http_hosts": [" Cams.Example "]}})
    policy = parse_config(data, "c", base_dir=tmp_path).agent.remote_policy
    assert policy.allowed_folders == [tmp_path / "media"] and policy.http_hosts == ["cams.example"]


def test_the_policy_refuses_unknown_schemes_and_fields(tmp_path):
    with pytest.raises(ConfigError, match=r"remote_policy\.source_schemes"):
        parse_config(device(tmp_path, agent={"remote_policy": {"source_schemes": ["ftp"]}}), "c")
    with pytest.raises(ConfigError, match=r"remote_policy\.allowed_hosts"):
        parse_config(device(tmp_path, agent={"remote_policy": {"allowed_hosts": []}}), "c")


def test_the_default_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("CACHE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("CACHE_DIRECTORY")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "lepton-edge"


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"pipeline": {"latency_window": 1e11}}, "pipeline.latency_window"),
        ({"pipeline": {"stats_interval_s": 1e9}}, "pipeline.stats_interval_s"),
        ({"sinks": [{"type": "jsonl", "path": "x", "queue_size": 10**9}]}, "sinks.0.jsonl.queue_size"),
        ({"sinks": [{"type": "video", "path": "x.mp4", "queue_size": 10**6}]}, "sinks.0.video.queue_size"),
        ({"sinks": [{"type": "console", "interval_s": 1e9}]}, "sinks.0.console.interval_s"),
        ({"source": {"uri": "rtsp://c/x", "reconnect": {"max_backoff_s": 1e9}}}, "source.reconnect.max_backoff_s"),
        ({"source": {"uri": "rtsp://c/x", "max_frame_age_ms": 1e12}}, "source.max_frame_age_ms"),
        ({"backend": {"type": "onnxruntime", "warmup_runs": 10**9}}, "backend.onnxruntime.warmup_runs"),
        ({"agent": {"telemetry_interval_s": 1e9}}, "agent.telemetry_interval_s"),
        ({"agent": {"health_check": {"min_frames": 10**9}}}, "agent.health_check.min_frames"),
    ],
)
def test_numbers_have_upper_bounds(tmp_path, section, field):
    with pytest.raises(ConfigError) as err:
        parse_config(device(tmp_path, **section), "c")
    assert field in str(err.value) and "less than or equal to" in str(err.value)


def test_local_configs_are_not_governed_by_the_remote_policy(tmp_path):
    config = parse_config(
        device(tmp_path, model={"path": "/opt/models/m.onnx", "labels": "/etc/lepton/labels.txt"},
               source={"uri": "http://127.0.0.1:8080/cam"}, agent={"telemetry_interval_s": 60}),
        "c",
    )
    assert config.model.labels == Path("/etc/lepton/labels.txt") and config.agent.telemetry_interval_s == 60
