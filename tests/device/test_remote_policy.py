"""The remote policy: every path and URI of a remote config stays inside what the local file allows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lepton_edge.core.errors import ConfigError
from lepton_edge.device.controller import ApplyResult
from lepton_edge.device.remote_config import RemoteConfig
from lepton_edge.device.remote_policy import allowed_folders
from lepton_edge.device.state import StateStore
from lepton_edge.fleet.protocol import DesiredConfig
from tests.device.helpers import LIVE_SOURCE, agent_config


class FakeController:
    def __init__(self) -> None:
        self.applied: list[int] = []

    def apply(self, config, version):
        self.applied.append(version)
        return ApplyResult("applied", [])


@pytest.fixture
def remote(tmp_path, color_model):
    local = agent_config(tmp_path, color_model, 1, "policy", agent={"remote_policy": {"http_hosts": ["cams.example"]}})
    reports = []
    remote = RemoteConfig(local, StateStore(local.agent.state_dir), report=reports.append, event=lambda *a: None)
    remote.reports = reports
    remote.controller = FakeController()
    return remote


def workload(color_model, **sections):
    return {"model": {"path": str(color_model)}, "source": {"uri": LIVE_SOURCE},
            "postprocess": {"type": "classify", "top_k": 1}, **sections}


def refused(remote, data) -> str:
    with pytest.raises(ConfigError) as err:
        remote.validate(data, "doc")
    return str(err.value)


def test_labels_outside_the_allowed_folders_are_refused(remote, color_model):
    reason = refused(remote, workload(color_model, model={"path": str(color_model), "labels": "/etc/passwd"}))
    assert "model.labels" in reason and "/etc/passwd" in reason and "allowed folders" in reason


def test_a_sink_that_climbs_out_with_dots_is_refused(remote, color_model):
    reason = refused(remote, workload(color_model, sinks=[{"type": "jsonl", "path": "../../../../tmp/x"}]))
    assert "sinks.0.path" in reason and "allowed folders" in reason


def test_a_symlink_inside_an_allowed_folder_pointing_out_is_refused(remote, color_model):
    link = remote.store.dir / "escape"
    os.symlink("/etc", link)
    reason = refused(remote, workload(color_model, model={"path": str(color_model), "labels": "escape/passwd"}))
    assert "model.labels" in reason and "resolves to /etc/passwd" in reason
    sink_link = remote.store.dir / "out.jsonl"
    os.symlink("/tmp/lepton-policy-outside.jsonl", sink_link)
    reason = refused(remote, workload(color_model, sinks=[{"type": "jsonl", "path": "out.jsonl"}]))
    assert "sinks.0.path" in reason


@pytest.mark.parametrize("name", ["session", "config.json", "outbox.db", "outbox.db-wal", "config.json.tmp",
                                  "artifacts/current/model.onnx"])
def test_the_agents_own_state_files_are_refused(remote, color_model, name):
    reason = refused(remote, workload(color_model, sinks=[{"type": "jsonl", "path": name}]))
    assert "sinks.0.path" in reason and "agent's own state" in reason


@pytest.mark.parametrize(
    ("uri", "rule"),
    [
        ("http://127.0.0.1:8080/internal/admin?delete=all", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.0.0.5/stream", "private"),
        ("http://[::1]:80/x", "loopback"),
        ("https://elsewhere.example/x.mp4", "not in agent.remote_policy.http_hosts"),
        ("file:///etc/shadow", "allowed folders"),
        ("/etc/shadow", "allowed folders"),
        ("npy:///etc/shadow", "allowed folders"),
        ("gst:filesrc location=/etc/shadow ! fakesink", "scheme gst:// is not allowed"),
        ("ftp://host/x", "scheme ftp:// is not allowed"),
        ("rtsp://127.0.0.1:554/x", "loopback"),
        ("/dev/sda", "allowed folders"),
    ],
)
def test_source_uris_outside_the_policy_are_refused(remote, color_model, uri, rule):
    reason = refused(remote, workload(color_model, source={"uri": uri}))
    assert "source.uri" in reason and rule in reason


def test_a_remote_telemetry_interval_that_would_look_dead_is_refused(remote, color_model):
    reason = refused(remote, workload(color_model, agent={"telemetry_interval_s": 86400}))
    assert "agent.telemetry_interval_s" in reason and "max_telemetry_interval_s" in reason


def test_a_huge_latency_window_is_refused_by_the_schema(remote, color_model):
    reason = refused(remote, workload(color_model, pipeline={"latency_window": 1e11}))
    assert "pipeline.latency_window" in reason and "less than or equal to 1000000" in reason


def test_a_remote_config_cannot_set_the_policy(remote, color_model, tmp_path):
    policy = {"allowed_folders": ["/"], "http_hosts": ["127.0.0.1"]}
    reason = refused(remote, workload(color_model, agent={"remote_policy": policy}))
    assert "agent.remote_policy" in reason and "only by the device's local config file" in reason
    reason = refused(remote, workload(color_model, remote_policy=policy))
    assert "remote_policy" in reason and "cannot be changed remotely" in reason


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


def test_a_refused_config_is_reported_and_the_last_good_one_keeps_running(remote, color_model):
    good = DesiredConfig(version=1, config=workload(color_model), issued_at=1.0, issued_by="test")
    assert remote.process(good).outcome == "applied"
    bad = workload(color_model, model={"path": str(color_model), "labels": "/etc/passwd"})
    result = remote.process(DesiredConfig(version=2, config=bad, issued_at=1.0, issued_by="test"))
    assert result.outcome == "rejected"
    report = remote.reports[-1]
    assert (report.version, report.outcome, report.active_version) == (2, "rejected", 1)
    assert any("model.labels" in e and "refused by the remote policy" in e for e in report.errors)
    assert remote.controller.applied == [1]
    assert remote.state.active_version == 1 and remote.state.config == good.config


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
