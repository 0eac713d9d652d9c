"""The device agent on a real broker: presence, telemetry, commands, rebirth, Prometheus."""

import itertools
import os
import time
import urllib.error
import urllib.request
import uuid

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lepton_edge.device.agent import DeviceAgent
from lepton_edge.fleet.mqtt import IncomingMessage
from lepton_edge.fleet.protocol import (
    FLEET_REBIRTH_TOPIC,
    CommandRequest,
    RebirthRequest,
    TopicKind,
    command_topic,
    decode,
    encode,
    rebirth_topic,
    response_subscription,
    response_topic,
)
from tests.device.helpers import agent_config, wait_until

pytestmark = pytest.mark.integration


def test_birth_on_connect_announces_capabilities_and_session(mqtt_broker, start_agent, recorder, unique):
    device = f"ag-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/birth")
    agent = start_agent(mqtt_broker.port, device)
    birth = rec.wait(TopicKind.BIRTH)
    assert birth.device_id == device and birth.session_id == agent.session_id >= 1
    caps = birth.capabilities
    assert caps.accelerator == "cpu" and "onnxruntime" in caps.runtimes
    assert caps.cpu_count == os.cpu_count() and caps.memory_bytes > 0
    assert caps.sources == ["synthetic://shapes?fps=30&width=64&height=48"]
    assert caps.artifacts == ["color.onnx"] and birth.config_version == 0
    late = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/birth")  # retained for late schedulers
    assert late.wait(TopicKind.BIRTH).session_id == birth.session_id


def test_session_id_increases_on_every_reconnect_and_restart(
    fresh_broker, recorder, tmp_path, color_model, unique
):
    device = f"ag-{unique}"
    config = agent_config(tmp_path, color_model, fresh_broker.port, device)
    agent = DeviceAgent(config).start()
    try:
        rec = recorder(fresh_broker.port, f"lepton/v1/devices/{device}/birth", session_expiry_s=0)
        first = rec.wait(TopicKind.BIRTH).session_id
        fresh_broker.kill()
        time.sleep(0.5)  # a few failed attempts, each with its own session id
        fresh_broker.start()
        second = rec.wait(TopicKind.BIRTH, lambda b: b.session_id > first, timeout=15).session_id
        assert agent.session_id == second and agent.client.connection_count == 2
        assert second - first == agent.client.connect_attempts - 1  # one id per attempt
    finally:
        agent.stop()
    restarted = DeviceAgent(config).start()
    try:
        third = rec.wait(TopicKind.BIRTH, lambda b: b.session_id > second).session_id
        assert third > second
    finally:
        restarted.stop()


def test_telemetry_arrives_at_the_interval_with_increasing_seq(mqtt_broker, start_agent, recorder, unique):
    device = f"ag-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/telemetry")
    agent = start_agent(mqtt_broker.port, device)
    wait_until(lambda: len(rec.of(TopicKind.TELEMETRY)) >= 6)
    telemetry = rec.of(TopicKind.TELEMETRY)
    assert [t.seq for t in telemetry] == list(range(1, len(telemetry) + 1))
    assert {t.session_id for t in telemetry} == {agent.session_id}
    gaps = sorted(b.timestamp - a.timestamp for a, b in itertools.pairwise(telemetry))
    assert 0.1 < gaps[len(gaps) // 2] < 2.0  # about the 0.3 s interval (generous bounds)
    last = telemetry[-1]
    assert last.interval_s == 0.3 and last.fps > 0 and last.frames > 0
    assert {"infer", "preprocess", "postprocess", "e2e"} <= set(last.latency_ms)
    assert last.latency_ms["infer"].p50 > 0 and last.frame_age_ms is not None
    assert last.sources == {"synthetic://shapes?fps=30&width=64&height=48": "running"}
    assert last.artifact_id == "color.onnx" and last.config_version == 0
    assert last.outbox.depth >= 0 and set(last.outbox.dropped) >= {"full_low_priority", "expired"}
    assert last.memory.total_bytes > 0 and last.disk.total_bytes > 0 and 0 <= last.cpu_percent <= 100


def command(rec, device, name, *, args=None, correlation=b"", expiry=None, reply=True, requester="op"):
    """Publish a command as an MQTT v5 request; return the correlation data used."""
    correlation = correlation or uuid.uuid4().bytes
    handle = rec.client.publish(
        command_topic(device, name),
        encode(CommandRequest(name=name, args=args or {})),
        qos=1,
        response_topic=response_topic(requester, device) if reply else None,
        correlation_data=correlation or None,
        message_expiry_interval=expiry,
    )
    assert handle.wait(5)
    return correlation


def responses(rec, correlation=None):
    out = []
    for msg in rec.raw(TopicKind.COMMAND_RESPONSE):
        if correlation is None or msg.correlation_data == correlation:
            out.append(decode(TopicKind.COMMAND_RESPONSE, msg.payload))
    return out


def test_commands_answer_with_correlation_data(mqtt_broker, start_agent, recorder, unique):
    device, requester = f"ag-{unique}", f"op-{unique}"
    rec = recorder(mqtt_broker.port, response_subscription(requester))
    agent = start_agent(mqtt_broker.port, device)
    assert agent.client.wait_connected(10) and agent.client.wait_subscribed(5)
    corr = command(rec, device, "ping", expiry=30, requester=requester)
    (pong,) = wait_until(lambda: responses(rec, corr))
    assert pong.status == "ok" and pong.result["session_id"] == agent.session_id
    corr = command(rec, device, "get_config", requester=requester)
    (cfg,) = wait_until(lambda: responses(rec, corr))
    assert cfg.result["version"] == 0 and cfg.result["config"]["device_id"] == device
    assert "password" not in cfg.result["config"]["agent"]["mqtt"]
    corr = command(rec, device, "stats", requester=requester)
    (stats,) = wait_until(lambda: responses(rec, corr))
    assert stats.result["pipeline"]["results"] > 0 and stats.result["connected"] is True
    corr = command(rec, device, "reboot", requester=requester)
    (unknown,) = wait_until(lambda: responses(rec, corr))
    assert (
        unknown.status == "error" and "unknown command 'reboot'" in unknown.error and "ping" in unknown.error
    )


def test_requests_without_correlation_data_or_response_topic_are_refused(
    mqtt_broker, start_agent, recorder, unique
):
    device, requester = f"ag-{unique}", f"op-{unique}"
    rec = recorder(mqtt_broker.port, response_subscription(requester), f"lepton/v1/devices/{device}/events")
    agent = start_agent(mqtt_broker.port, device)
    assert agent.client.wait_connected(10) and agent.client.wait_subscribed(5)
    assert rec.client.publish(
        command_topic(device, "rebirth"),
        encode(CommandRequest(name="rebirth")),
        qos=1,
        response_topic=response_topic(requester, device),
    ).wait(5)
    (refused,) = wait_until(lambda: responses(rec))
    assert refused.status == "error" and "no correlation data" in refused.error
    births = agent.births
    command(rec, device, "rebirth", reply=False)
    wait_until(lambda: agent.rejections.counts["cmd"] >= 2)
    time.sleep(0.3)
    assert agent.births == births  # neither request ran
    assert len(responses(rec)) == 1
    event = rec.wait(TopicKind.EVENT, lambda e: e.kind == "message.rejected")
    assert event.details["handler"] == "cmd"


def test_expired_commands_are_not_run(fresh_broker, recorder, tmp_path, color_model, unique):
    device, requester = f"ag-{unique}", f"op-{unique}"
    config = agent_config(tmp_path, color_model, fresh_broker.port, device)
    rec = recorder(fresh_broker.port, response_subscription(requester))
    first = DeviceAgent(config).start()  # creates the device's persistent session on the broker
    assert first.client.wait_connected(10) and first.client.wait_subscribed(5)
    first.stop()
    # offline: the broker holds both requests and counts their expiry down; the short one expires
    stale = command(rec, device, "ping", expiry=1, requester=requester)
    fresh = command(rec, device, "ping", expiry=60, requester=requester)
    time.sleep(2.2)
    agent = DeviceAgent(config)
    try:
        # a request that expires while queued inside the agent is refused when its turn comes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic, props.CorrelationData, props.MessageExpiryInterval = (
            response_topic(requester, device),
            b"queued",
            1,
        )
        agent.on_command(
            IncomingMessage(
                command_topic(device, "ping"), encode(CommandRequest(name="ping")), 1, False, props
            )
        )
        time.sleep(1.2)
        agent.start()
        (answer,) = wait_until(lambda: responses(rec, fresh))
        assert answer.status == "ok"
        (late,) = wait_until(lambda: responses(rec, b"queued"))
        assert late.status == "error" and "expired before it could run" in late.error
        time.sleep(0.5)
        assert responses(rec, stale) == []  # the broker dropped it: never delivered, never run
    finally:
        agent.stop()


def test_rebirth_requests_get_a_fresh_birth(mqtt_broker, start_agent, recorder, unique):
    device = f"ag-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/birth")
    agent = start_agent(mqtt_broker.port, device)
    rec.wait(TopicKind.BIRTH)
    request = encode(
        RebirthRequest(reason="telemetry gap 3 -> 7", requested_by="sched", timestamp=time.time())
    )
    assert rec.client.publish(rebirth_topic(device), request, qos=1).wait(5)
    wait_until(lambda: len(rec.of(TopicKind.BIRTH)) >= 2)
    assert rec.client.publish(FLEET_REBIRTH_TOPIC, request, qos=1).wait(5)
    wait_until(lambda: len(rec.of(TopicKind.BIRTH)) >= 3, timeout=5)
    assert {b.session_id for b in rec.of(TopicKind.BIRTH)} == {agent.session_id}  # same session, fresh state
    assert rec.client.publish(rebirth_topic(device), b'{"reason": 1}', qos=1).wait(5)
    wait_until(lambda: agent.rejections.counts["rebirth"] == 1)


def test_prometheus_endpoint_serves_the_metrics(mqtt_broker, start_agent, unique):
    agent = start_agent(mqtt_broker.port, f"ag-{unique}", agent={"prometheus_port": 0})
    wait_until(lambda: agent.controller.stats.results >= 5)
    url = f"http://127.0.0.1:{agent.exporter.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    lines = {
        line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    device = f'device="ag-{unique}"'
    assert lines[f"lepton_results_total{{{device}}}"] >= 5
    assert lines[f"lepton_mqtt_connected{{{device}}}"] == 1
    assert lines[f"lepton_config_version{{{device}}}"] == 0
    assert lines[f'lepton_stage_latency_ms_count{{{device},stage="infer"}}'] >= 5
    assert f'lepton_stage_latency_ms{{{device},stage="e2e",quantile="0.99"}}' in lines
    assert f"lepton_outbox_depth{{{device}}}" in lines and f"lepton_memory_total_bytes{{{device}}}" in lines
    assert "# TYPE lepton_stage_latency_ms summary" in text and "# TYPE lepton_results_total counter" in text
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=5)
    assert e.value.code == 404


def test_run_device_runs_until_max_frames_then_stops_in_order(
    mqtt_broker, recorder, tmp_path, color_model, unique
):
    from lepton_edge.device.agent import run_device

    device = f"ag-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/#")
    config = agent_config(
        tmp_path,
        color_model,
        mqtt_broker.port,
        device,
        agent={"results": {"durable": True}, "telemetry_interval_s": 60},
    )
    assert run_device(config, max_frames=40, duration_s=60) == 0
    death = rec.wait(TopicKind.DEATH)  # the broker may still be delivering to the recorder after the return
    results = rec.of(TopicKind.RESULT)
    assert len(results) == 40, [r.seq for r in results]  # every result flushed before the death
    assert death.reason == "shutdown" and death.session_id == results[-1].session_id
    last_result = max(i for i, m in enumerate(rec.messages) if m.topic.endswith("/results"))
    assert last_result < next(i for i, m in enumerate(rec.messages) if m.topic.endswith("/death"))


def test_run_device_needs_the_agent_section(tmp_path, color_model):
    from lepton_edge.config.device import parse_config
    from lepton_edge.core.errors import ConfigError
    from lepton_edge.device.agent import run_device

    config = parse_config({"model": {"path": str(color_model)}, "source": {"uri": "synthetic://shapes"}}, "t")
    with pytest.raises(ConfigError, match="agent"):
        run_device(config)


# -- idle: no workload ------------------------------------------------------------------------------------


def test_an_idle_device_announces_what_it_can_run(mqtt_broker, recorder, tmp_path, color_model, unique):
    import hashlib

    import onnxruntime

    from lepton_edge.config.pipeline import ArtifactRef
    from lepton_edge.runtime.platform import CUDA_PROVIDERS
    from tests.device.helpers import idle_config

    device = f"ag-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/birth")
    config = idle_config(tmp_path, mqtt_broker.port, device, agent={"allow_unsigned_artifacts": True})
    agent = DeviceAgent(config)
    data = color_model.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    ref = ArtifactRef(url=color_model.as_uri(), size=len(data), sha256=sha)
    agent.artifacts.activate(agent.artifacts.stage(ref))  # an artifact left by an earlier workload
    agent.start()
    try:
        birth = rec.wait(TopicKind.BIRTH)
        caps = birth.capabilities
        cuda = CUDA_PROVIDERS & set(onnxruntime.get_available_providers())
        assert caps.accelerator == ("cuda" if cuda else "cpu") and "onnxruntime" in caps.runtimes
        assert caps.sources == [] and caps.artifacts == [f"sha256:{sha}"] and birth.config_version == 0
        stats = agent.stats()
        assert stats["idle"] is True and stats["pipeline"]["source_state"] == "idle"
        assert f'lepton_idle{{device="{device}"}} 1' in agent.metrics_text()
    finally:
        agent.stop()


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket (``$NOTIFY_SOCKET``); a thread reads it as
    systemd does (a datagram queue is short: unread, it would block the sender)."""

    def __init__(self, path) -> None:
        import socket
        import threading

        assert len(str(path)) < 100, "AF_UNIX paths are limited to 107 bytes"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            with self._lock:
                self.messages.append(message)

    def drain(self) -> list[str]:
        """The messages received since the last call."""
        time.sleep(0.2)  # let the reader catch up with the last datagrams
        with self._lock:
            messages, self.messages = self.messages, []
        return messages

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.sock.close()


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_idle_device_is_ready_once_connected_and_its_watchdog_is_fed(
    mqtt_broker, tmp_path, unique, monkeypatch
):
    from lepton_edge.device.agent import run_device
    from tests.device.helpers import idle_config

    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # a ping due every 0.3 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        # no broker: an idle device has nothing to be ready for, yet it is alive and says so
        offline = idle_config(tmp_path, closed_port(), f"ag-{unique}-off")
        assert run_device(offline, duration_s=3.0) == 0
        messages = notify.drain()
        assert not any(m.startswith("READY=1") for m in messages)
        assert messages.count("WATCHDOG=1") >= 2 and messages[-1] == "STOPPING=1"
        assert any(m.startswith("STATUS=idle") for m in messages)

        online = idle_config(tmp_path, mqtt_broker.port, f"ag-{unique}-on")
        assert run_device(online, duration_s=3.0) == 0
        messages = notify.drain()
        ready = [m for m in messages if m.startswith("READY=1")]
        assert len(ready) == 1 and "idle" in ready[0] and "broker connected" in ready[0], messages
        assert messages.count("WATCHDOG=1") >= 2
    finally:
        notify.close()


def test_lepton_edge_run_refuses_an_idle_config_without_an_agent(tmp_path, caplog):
    from lepton_edge.cli import main

    config = tmp_path / "idle.yaml"
    config.write_text("device_id: parked\nidle: true\n")
    assert main(["run", "--config", str(config)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(config) in errors[0] and "nothing to do" in errors[0]
    assert "agent section" in errors[0]
