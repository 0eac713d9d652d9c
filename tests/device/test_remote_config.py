"""Remote configuration through a real broker: desired in, applied live, reported, persisted."""

import time

import pytest

from lepton_edge.device.agent import DeviceAgent
from lepton_edge.fleet.protocol import DesiredConfig, ReportedConfig, TopicKind, config_desired_topic, encode
from tests.device.helpers import LIVE_SOURCE, agent_config, agent_data, multi_data, wait_until

pytestmark = pytest.mark.integration


def desired_config(tmp_path, model, version, **sections) -> bytes:
    data = agent_data(tmp_path, model, 1, "unused", **sections)
    data.pop("agent")
    data.pop("device_id")
    return encode(DesiredConfig(version=version, config=data, issued_at=time.time(), issued_by="test"))


def publish_desired(rec, device_id, payload):
    assert rec.client.publish(config_desired_topic(device_id), payload, qos=1, retain=True).wait(5)


def reports(rec, version=None) -> list[ReportedConfig]:
    return [r for r in rec.of(TopicKind.CONFIG_REPORTED) if version is None or r.version == version]


def result_widths(rec, since: int = 0) -> list[int]:
    return [len(r.classes or []) for r in rec.of(TopicKind.RESULT)[since:]]


def test_valid_config_is_applied_live_and_reported(
    mqtt_broker, start_agent, recorder, tmp_path, color_model, unique
):
    device = f"rc-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/#")
    agent = start_agent(mqtt_broker.port, device)
    wait_until(lambda: len(rec.of(TopicKind.RESULT)) >= 5)
    assert set(result_widths(rec)) == {3}
    pipeline = agent.controller.pipeline
    publish_desired(
        rec,
        device,
        desired_config(
            tmp_path,
            color_model,
            1,
            postprocess={"type": "classify", "top_k": 1},
            source={"uri": "synthetic://shapes?fps=30&width=64&height=48", "id": "door"},
        ),
    )
    report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 1)
    assert (report.outcome, report.active_version, report.errors) == ("applied", 1, [])
    assert agent.config_version == 1
    wait_until(lambda: len([r for r in rec.of(TopicKind.RESULT) if r.source == "door"]) >= 5)
    door = [r for r in rec.of(TopicKind.RESULT) if r.source == "door"]
    assert {len(r.classes) for r in door} == {1}  # the new threshold and source, applied together
    assert agent.controller.pipeline is pipeline  # live: the same pipeline, never restarted
    rec.wait(TopicKind.TELEMETRY, lambda t: t.config_version == 1 and "door" in t.sources)
    events = rec.of(TopicKind.EVENT)
    assert any(e.kind == "config.applied" and e.details["version"] == 1 for e in events)


def test_invalid_configs_are_rejected_with_reasons_and_the_pipeline_keeps_running(
    mqtt_broker, start_agent, recorder, tmp_path, color_model, unique
):
    device = f"rc-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/#")
    agent = start_agent(mqtt_broker.port, device)
    wait_until(lambda: len(rec.of(TopicKind.RESULT)) >= 3)

    unknown = desired_config(tmp_path, color_model, 1, postprocess={"type": "classify", "top_kk": 1})
    publish_desired(rec, device, unknown)
    report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 1)
    assert report.outcome == "rejected" and report.active_version == 0
    assert any(
        "postprocess.classify.top_kk" in e and "Extra inputs are not permitted" in e for e in report.errors
    )

    impossible = desired_config(tmp_path, color_model, 2, postprocess={"type": "classify", "top_k": 0})
    publish_desired(rec, device, impossible)
    report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 2)
    assert report.outcome == "rejected" and any("top_k" in e and "(got 0)" in e for e in report.errors)

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00garbage")
    publish_desired(rec, device, desired_config(tmp_path, corrupt, 3))
    report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 3)
    assert report.outcome == "rejected" and "corrupt.onnx" in report.errors[0]

    identity = encode(
        DesiredConfig(
            version=4,
            config={**agent_data(tmp_path, color_model, 1, "other")},
            issued_at=time.time(),
            issued_by="test",
        )
    )
    publish_desired(rec, device, identity)
    report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 4)
    assert report.outcome == "rejected"
    assert any("device_id" in e and "identity is local" in e for e in report.errors)

    before = len(rec.of(TopicKind.RESULT))
    wait_until(lambda: len(rec.of(TopicKind.RESULT)) >= before + 5)  # still running, on the last good config
    assert set(result_widths(rec, before)) == {3} and agent.config_version == 0
    assert {e.kind for e in rec.of(TopicKind.EVENT)} >= {"config.rejected"}


def test_agent_connection_settings_cannot_be_changed_remotely(
    mqtt_broker, start_agent, recorder, tmp_path, color_model, unique
):
    device = f"rc-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/config/reported")
    start_agent(mqtt_broker.port, device)
    mqtt_change = agent_data(tmp_path, color_model, 1, device, agent={"mqtt": {"port": 1}})
    mqtt_change["agent"] = {"mqtt": mqtt_change["agent"]["mqtt"], "telemetry_interval_s": 1.0}
    publish_desired(
        rec,
        device,
        encode(DesiredConfig(version=1, config=mqtt_change, issued_at=time.time(), issued_by="test")),
    )
    report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 1)
    assert report.outcome == "rejected" and any("agent.mqtt" in e and "local" in e for e in report.errors)

    allowed = agent_data(tmp_path, color_model, 1, device)
    allowed["agent"] = {"telemetry_interval_s": 0.2, "results": {"max_rate_hz": 2}}
    publish_desired(
        rec, device, encode(DesiredConfig(version=2, config=allowed, issued_at=time.time(), issued_by="test"))
    )
    assert rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 2).outcome == "applied"


def test_old_versions_are_ignored_and_duplicates_applied_once(
    mqtt_broker, start_agent, recorder, tmp_path, color_model, unique
):
    device = f"rc-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/config/reported")
    agent = start_agent(mqtt_broker.port, device)
    v5 = desired_config(tmp_path, color_model, 5, postprocess={"type": "classify", "top_k": 2})
    publish_desired(rec, device, v5)
    rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 5)
    publish_desired(rec, device, v5)  # duplicate
    publish_desired(rec, device, desired_config(tmp_path, color_model, 3))  # older
    publish_desired(
        rec, device, desired_config(tmp_path, color_model, 6, postprocess={"type": "classify", "top_k": 1})
    )
    rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 6)
    time.sleep(0.3)
    assert [r.version for r in reports(rec)] == [5, 6]
    assert agent.remote.ignored == 2 and agent.config_version == 6


def test_offline_device_converges_to_the_latest_version_and_restarts_from_the_last_good_config(
    mqtt_broker, recorder, tmp_path, color_model, unique
):
    device = f"rc-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/#")
    config = agent_config(tmp_path, color_model, mqtt_broker.port, device)
    first = DeviceAgent(config).start()
    try:
        publish_desired(
            rec,
            device,
            desired_config(tmp_path, color_model, 1, postprocess={"type": "classify", "top_k": 2}),
        )
        rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 1 and r.outcome == "applied")
    finally:
        first.stop()
    # offline: two newer versions are published; only the last one is retained
    publish_desired(
        rec, device, desired_config(tmp_path, color_model, 2, postprocess={"type": "classify", "top_k": 3})
    )
    publish_desired(
        rec, device, desired_config(tmp_path, color_model, 3, postprocess={"type": "classify", "top_k": 1})
    )
    second = DeviceAgent(config)
    assert second.config_version == 1  # the persisted last good config, not the local file
    assert second.controller.config.postprocess.top_k == 2
    second.start()
    try:
        birth = rec.wait(TopicKind.BIRTH, lambda b: b.session_id > first.session_id)
        assert birth.config_version == 1  # built on connect, before the retained desired arrives
        rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 3 and r.outcome == "applied")
        assert second.config_version == 3
        time.sleep(0.3)
        applied = [r.version for r in reports(rec) if r.outcome == "applied"]
        assert applied.count(1) == 1 and applied.count(3) == 1 and applied[-1] == 3
        before = len(rec.of(TopicKind.RESULT))
        wait_until(lambda: len(rec.of(TopicKind.RESULT)) >= before + 5)
        assert set(result_widths(rec, before + 2)) == {1}
    finally:
        second.stop()


def test_desired_paths_are_relative_to_the_state_dir_and_identity_stays_local(tmp_path, color_model):
    from lepton_edge.device.remote_config import RemoteConfig
    from lepton_edge.device.state import StateStore

    local = agent_config(tmp_path, color_model, 1883, "paths")
    store = StateStore(local.agent.state_dir)
    remote = RemoteConfig(local, store, report=lambda r: None, event=lambda *a: None)
    config = remote.validate({"model": {"path": "models/new.onnx"}, "source": {"uri": "clip.mp4"}}, "doc")
    assert config.model.path == store.dir / "models" / "new.onnx"
    assert config.source.uri == str(store.dir / "clip.mp4")
    assert config.device_id == "paths" and config.agent == local.agent


def test_an_unusable_persisted_config_falls_back_to_the_local_file(tmp_path, color_model):
    from lepton_edge.device.state import ConfigState, StateStore

    local = agent_config(tmp_path, color_model, 1, "fallback")
    store = StateStore(local.agent.state_dir)
    store.save_config_state(
        ConfigState(
            4,
            4,
            {"model": {"path": str(tmp_path / "gone.onnx")}, "source": {"uri": "synthetic://shapes?fps=30"}},
        )
    )
    agent = DeviceAgent(local)
    try:
        assert agent.config_version == 0 and agent.controller.config.model.path == color_model
        assert (
            store.load_config_state().handled_version == 0
        )  # the retained desired config is evaluated again
        assert any(
            m.topic.endswith("/events") and b"config.fallback" in m.payload for m in agent.outbox.pending()
        )
    finally:
        agent.stop()


# -- idle: the scheduler's {"idle": true} ---------------------------------------------------------------


def idle_desired(version: int, **config) -> bytes:
    document = {"idle": True, **config}
    return encode(DesiredConfig(version=version, config=document, issued_at=time.time(), issued_by="test"))


def results_stay_at(rec, seconds: float = 0.6) -> int:
    """The number of results, checked not to grow for ``seconds``."""
    count = len(rec.of(TopicKind.RESULT))
    time.sleep(seconds)
    assert len(rec.of(TopicKind.RESULT)) == count
    return count


def test_idle_config_stops_the_workload_and_a_workload_config_starts_it_again(
    mqtt_broker, start_agent, recorder, tmp_path, color_model, unique
):
    device = f"rc-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/#")
    agent = start_agent(mqtt_broker.port, device)
    wait_until(lambda: len(rec.of(TopicKind.RESULT)) >= 3)
    publish_desired(rec, device, idle_desired(1))
    report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 1)
    assert (report.outcome, report.active_version, report.errors) == ("applied", 1, [])
    assert agent.controller.idle and agent.result_sink is None
    event = next(e for e in rec.of(TopicKind.EVENT) if e.kind == "config.applied")
    assert event.details["changes"] == ["idle"]
    idle = rec.wait(TopicKind.TELEMETRY, lambda t: t.config_version == 1)
    assert (idle.fps, idle.latency_ms, idle.frame_age_ms) == (0, {}, None)
    assert idle.sources == {} and idle.artifact_id is None
    assert idle.frames > 0  # the session's total so far
    results_stay_at(rec)  # the pipeline is stopped

    # still validated: idle with a workload section is refused, and the device stays idle
    publish_desired(rec, device, idle_desired(2, model={"path": str(color_model)}))
    report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 2)
    assert report.outcome == "rejected" and report.active_version == 1
    assert any("idle: true runs no pipeline, so model would be ignored" in e for e in report.errors)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00garbage")
    publish_desired(rec, device, desired_config(tmp_path, corrupt, 3))
    report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 3)
    assert report.outcome == "rejected" and "corrupt.onnx" in report.errors[0]
    assert agent.controller.idle and agent.config_version == 1
    results_stay_at(rec, 0.3)

    publish_desired(rec, device, desired_config(tmp_path, color_model, 4, source={"uri": LIVE_SOURCE, "id": "gate"}))
    report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 4)
    assert (report.outcome, report.active_version) == ("applied", 4)
    wait_until(lambda: len([r for r in rec.of(TopicKind.RESULT) if r.source == "gate"]) >= 5)
    running = rec.wait(TopicKind.TELEMETRY, lambda t: t.config_version == 4 and t.fps > 0)
    assert running.sources == {"gate": "running"} and running.artifact_id == "color.onnx"


def test_a_device_starts_idle_from_its_local_file_and_from_its_persisted_config(
    mqtt_broker, recorder, tmp_path, color_model, unique
):
    from tests.device.helpers import idle_config

    device = f"rc-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/#")
    first = DeviceAgent(idle_config(tmp_path, mqtt_broker.port, device)).start()
    try:
        assert first.controller.idle and first.config_version == 0
        idle = rec.wait(TopicKind.TELEMETRY)
        assert (idle.fps, idle.sources, idle.artifact_id, idle.frames) == (0, {}, None, 0)
        assert not rec.of(TopicKind.RESULT)
        publish_desired(rec, device, desired_config(tmp_path, color_model, 1))
        assert rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 1).outcome == "applied"
        wait_until(lambda: len(rec.of(TopicKind.RESULT)) >= 3)
        publish_desired(rec, device, idle_desired(2))
        assert rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 2).outcome == "applied"
    finally:
        first.stop()
    # restarted with a workload in the local file, it starts from the persisted idle config (v2)
    second = DeviceAgent(agent_config(tmp_path, color_model, mqtt_broker.port, device))
    assert second.controller.idle and second.config_version == 2
    second.start()
    try:
        birth = rec.wait(TopicKind.BIRTH, lambda b: b.session_id > first.session_id)
        assert birth.config_version == 2
        rec.wait(TopicKind.TELEMETRY, lambda t: t.session_id == second.session_id and t.sources == {})
        results_stay_at(rec)
    finally:
        second.stop()


def multi_desired(tmp_path, models, workloads, version) -> bytes:
    data = multi_data(tmp_path, models, workloads)
    data.pop("agent")
    data.pop("device_id")
    return encode(DesiredConfig(version=version, config=data, issued_at=time.time(), issued_by="test"))


def test_a_multi_stream_config_is_applied_per_workload_and_reported_per_workload(
    mqtt_broker, start_agent, recorder, tmp_path, color_model, unique
):
    """Two workloads arrive over MQTT; then a third whose model is missing: it alone is refused, the report says
    so per workload, and the two keep delivering results and telemetry of their own."""
    device = f"rcm-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/#")
    agent = start_agent(mqtt_broker.port, device)
    two = {"front": {"uri": LIVE_SOURCE, "model": "color"}, "rear": {"uri": LIVE_SOURCE + "&seed=5", "model": "color"}}
    publish_desired(rec, device, multi_desired(tmp_path, {"color": color_model}, two, 1))
    report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 1)
    assert (report.outcome, report.active_version) == ("applied", 1), report.errors
    assert {n: w.outcome for n, w in report.workloads.items()} == {"front": "applied", "rear": "applied"}
    assert len(agent.controller.models.runners()) == 1
    wait_until(lambda: {"front", "rear"} <= {r.source for r in rec.of(TopicKind.RESULT)})
    front = agent.controller.pipelines["front"]

    three = {**two, "side": {"uri": LIVE_SOURCE, "model": "missing"}}
    models = {"color": color_model, "missing": tmp_path / "missing.onnx"}
    publish_desired(rec, device, multi_desired(tmp_path, models, three, 2))
    report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 2)
    assert (report.outcome, report.active_version) == ("rejected", 1)
    outcomes = {n: w.outcome for n, w in report.workloads.items()}
    assert outcomes == {"front": "applied", "rear": "applied", "side": "rejected"}
    assert "missing.onnx" in report.workloads["side"].errors[0]
    assert agent.controller.pipelines["front"] is front  # untouched
    telemetry = rec.wait(TopicKind.TELEMETRY, lambda t: {"front", "rear"} <= set(t.workloads)
                         and all(w.fps > 0 for w in t.workloads.values()))
    assert telemetry.workloads["front"].stream == "front" and telemetry.workloads["rear"].source_state == "running"
