"""The remote policy: what a remote config may legitimately use. The attacks it refuses are replayed against a
real agent in tests/security/test_remote_config.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from lepton_edge.core.errors import ConfigError
from lepton_edge.device.remote_config import RemoteConfig
from lepton_edge.device.remote_policy import allowed_folders
from lepton_edge.device.state import StateStore
from tests.device.helpers import LIVE_SOURCE, agent_config


@pytest.fixture
def remote(tmp_path, color_model):
    local = agent_config(tmp_path, color_model, 1, "policy", agent={"remote_policy": {"http_hosts": ["cams.example"]}})
    return RemoteConfig(local, StateStore(local.agent.state_dir), report=lambda r: None, event=lambda *a: None)


def workload(color_model, **sections):
    return {"model": {"path": str(color_model)}, "source": {"uri": LIVE_SOURCE},
            "postprocess": {"type": "classify", "top_k": 1}, **sections}


def refused(remote, data) -> str:
    with pytest.raises(ConfigError) as err:
        remote.validate(data, "doc")
    return str(err.value)


def test_a_legitimate_config_inside_the_allowed_folders_applies(remote, color_model):
    (remote.store.dir / "labels.txt").write_text("red\ngreen\nblue\n")
    (remote.store.dir / "clips").mkdir()
    config = remote.validate(
        workload(
            color_model,
            model={"path": str(color_model), "labels": "labels.txt"},
            sinks=[{"type": "jsonl", "path": "results/out.jsonl"}],
            agent={"telemetry_interval_s": 5},
        ),
        "doc",
    )
    assert config.model.labels == remote.store.dir / "labels.txt"
    assert config.agent.telemetry_interval_s == 5
    for uri in ("rtsp://192.168.1.20/stream", "https://cams.example/live.mp4", "clips/a.mp4", "/dev/video0",
                "csi://0", "v4l2://1", LIVE_SOURCE):
        assert remote.validate(workload(color_model, source={"uri": uri}), "doc").source is not None


def test_the_default_allowed_folders_are_the_state_and_cache_folders(tmp_path, color_model, monkeypatch):
    monkeypatch.setenv("CACHE_DIRECTORY", str(tmp_path / "cache"))
    local = agent_config(tmp_path, color_model, 1, "defaults", agent={"remote_policy": {"allowed_folders": None}})
    assert allowed_folders(local.agent) == [local.agent.state_dir.resolve(), (tmp_path / "cache").resolve()]
    remote = RemoteConfig(local, StateStore(local.agent.state_dir), report=lambda r: None, event=lambda *a: None)
    reason = refused(remote, workload(color_model))  # the model lives outside both
    assert "model.path" in reason
    inside = tmp_path / "cache" / "color.onnx"
    inside.parent.mkdir()
    inside.write_bytes(Path(color_model).read_bytes())
    assert remote.validate(workload(inside), "doc").model.path == inside
