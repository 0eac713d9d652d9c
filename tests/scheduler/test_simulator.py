"""The fleet simulator: its messages follow the protocol, it applies configs like a device, and it dies
like one (the broker publishes the will in device mode)."""

from __future__ import annotations

import time

import pytest

from lepton_edge.core.errors import ConfigError
from lepton_edge.fleet.protocol import (
    Birth,
    Death,
    DesiredConfig,
    ReportedConfig,
    Telemetry,
    TopicKind,
    config_desired_topic,
    decode,
    encode,
    rebirth_topic,
    subscription,
)
from lepton_edge.scheduler.simulator import (
    IDLE_CONFIG,
    DeviceSpec,
    FleetSimulator,
    SimDevice,
    model_id_of,
    parse_broker,
    source_fps,
)
from tests.support.mosquitto import MessageCollector

VALID = {"model": {"path": "det.onnx"}, "source": {"uri": "synthetic://shapes?fps=12"}}


def desired(version: int, config: dict) -> DesiredConfig:
    return DesiredConfig(version=version, config=config, issued_at=time.time(), issued_by="test")


def test_messages_decode_with_the_protocol() -> None:
    device = SimDevice(DeviceSpec("cam-1", accelerator="cuda", runtimes={"tensorrt": "10.3"}, capacity_fps=40))
    session = device.new_session()
    birth = decode(TopicKind.BIRTH, encode(device.birth()))
    assert isinstance(birth, Birth)
    assert (birth.session_id, birth.capabilities.accelerator, birth.capabilities.runtimes) == (
        session, "cuda", {"tensorrt": "10.3"})
    device.apply(desired(1, VALID))
    first = decode(TopicKind.TELEMETRY, device.telemetry_payload(time.time(), 1.0))
    second = decode(TopicKind.TELEMETRY, device.telemetry_payload(time.time(), 1.0))
    assert isinstance(first, Telemetry) and isinstance(second, Telemetry)
    assert (first.seq, second.seq) == (1, 2)
    assert first.fps == 12.0  # the source's rate, below the device's capacity
    assert first.artifact_id == "det.onnx" and first.config_version == 1
    assert first.latency_ms["infer"].p50 == pytest.approx(1000 / 40)
    device.skip(3)
    assert decode(TopicKind.TELEMETRY, device.telemetry_payload(time.time(), 1.0)).seq == 6
    death = decode(TopicKind.DEATH, encode(device.death()))
    assert isinstance(death, Death) and death.session_id == session


def test_apply_follows_the_device_rules() -> None:
    device = SimDevice(DeviceSpec("cam-2"))
    applied = device.apply(desired(3, VALID))
    assert applied is not None and applied.outcome == "applied" and applied.active_version == 3
    assert device.apply(desired(3, VALID)) is None  # duplicate
    assert device.apply(desired(2, {**VALID, "source": {"uri": "x.mp4"}})) is None  # older
    invalid = {**VALID, "postprocess": {"type": "detect", "conf_threshold": 7}}
    rejected = device.apply(desired(4, invalid))
    assert rejected is not None and rejected.outcome == "rejected"
    assert rejected.active_version == 3 and any("conf_threshold" in e for e in rejected.errors)
    decode(TopicKind.CONFIG_REPORTED, encode(rejected))  # a valid report
    device.fail_with = "rolled_back"
    rolled = device.apply(desired(5, VALID))
    assert rolled is not None and rolled.outcome == "rolled_back" and rolled.active_version == 3
    device.fail_with = None
    idle = device.apply(desired(6, IDLE_CONFIG))
    assert idle is not None and idle.outcome == "applied" and not device.running and device.fps == 0


def test_helpers() -> None:
    assert model_id_of({"model": {"path": "models/yolo.onnx"}}) == "yolo.onnx"
    sha = "a" * 64
    # the same id the agent reports and the scheduler plans with (protocol.model_id)
    assert model_id_of({"model": {"path": "x", "artifact": {"sha256": sha.upper()}}}) == f"sha256:{sha}"
    assert model_id_of({"idle": True}) is None
    assert source_fps("synthetic://shapes?fps=7.5") == 7.5
    assert source_fps("rtsp://cam/stream") == 30.0
    assert source_fps("synthetic://shapes?fps=nan") == 30.0
    assert parse_broker("127.0.0.1:1884") == ("127.0.0.1", 1884)
    assert parse_broker("broker.local") == ("broker.local", 1883)
    with pytest.raises(ConfigError, match="numeric port"):
        parse_broker("host:abc")
    with pytest.raises(ConfigError, match="at least 1"):
        FleetSimulator("127.0.0.1", 1, 0)


@pytest.mark.integration
def test_device_mode_birth_telemetry_config_and_will(fresh_broker, make_mqtt_client, unique) -> None:
    watcher = make_mqtt_client(fresh_broker, f"watch-{unique}")
    births, deaths, telemetry, reports = (MessageCollector() for _ in range(4))
    for kind, collector in ((TopicKind.BIRTH, births), (TopicKind.DEATH, deaths),
                            (TopicKind.TELEMETRY, telemetry), (TopicKind.CONFIG_REPORTED, reports)):
        watcher.subscribe(subscription(kind), collector)
    watcher.start()
    assert watcher.wait_connected(5)
    assert watcher.wait_subscribed(5)

    with FleetSimulator("127.0.0.1", fresh_broker.port, 2, rate_hz=10, prefix=unique, mode="device") as sim:
        assert sim.mode == "device"
        births.wait_for(2)
        telemetry.wait_for(6)
        first = sorted(sim.devices)[0]
        device = sim.device(first)
        watcher.publish(config_desired_topic(first), encode(desired(1, VALID)), retain=True)
        report = decode(TopicKind.CONFIG_REPORTED, reports.wait_for(1)[0].payload)
        assert isinstance(report, ReportedConfig) and report.outcome == "applied"
        watcher.publish(rebirth_topic(first), b'{"reason":"test","requested_by":"t","timestamp":1.0}')
        births.wait_for(3)
        assert device.rebirth_requests == 1

        session = device.session_id
        sim.kill(first)  # no DISCONNECT: the broker publishes the will
        death = decode(TopicKind.DEATH, deaths.wait_for(1)[0].payload)
        assert isinstance(death, Death)
        assert (death.device_id, death.session_id, death.reason) == (first, session, "connection_lost")

        sim.revive(first)
        births.wait_for(4)
        assert device.session_id > session
    # the survivor's clean stop publishes a shutdown death
    shutdown = [decode(TopicKind.DEATH, m.payload) for m in deaths.wait_for(3)]
    assert {d.reason for d in shutdown[1:]} == {"shutdown"}


@pytest.mark.integration
def test_bulk_mode_publishes_for_every_device(fresh_broker, make_mqtt_client, unique) -> None:
    watcher = make_mqtt_client(fresh_broker, f"watch-{unique}")
    births, telemetry, deaths = MessageCollector(), MessageCollector(), MessageCollector()
    watcher.subscribe(subscription(TopicKind.BIRTH), births)
    watcher.subscribe(subscription(TopicKind.TELEMETRY), telemetry)
    watcher.subscribe(subscription(TopicKind.DEATH), deaths)
    watcher.start()
    assert watcher.wait_connected(5)
    assert watcher.wait_subscribed(5)

    with FleetSimulator("127.0.0.1", fresh_broker.port, 50, rate_hz=4, prefix=unique, mode="bulk",
                        connections=2) as sim:
        births.wait_for(50)
        messages = telemetry.wait_for(150)
        senders = {decode(TopicKind.TELEMETRY, m.payload).device_id for m in messages}
        assert len(senders) == 50
        victim = sorted(sim.devices)[7]
        sim.kill(victim)
        death = decode(TopicKind.DEATH, deaths.wait_for(1)[0].payload)
        assert death.device_id == victim and death.reason == "connection_lost"
        assert sim.stats()["alive"] == 49
