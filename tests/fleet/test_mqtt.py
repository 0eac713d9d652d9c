"""MqttClient against a real mosquitto: connect, routing, failures, last will, persistent sessions."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from lepton_edge.config.fleet import MqttConfig, TlsConfig
from lepton_edge.core.errors import ConfigError
from lepton_edge.fleet.mqtt import MqttClient, Will, topic_matches
from tests.support.mosquitto import MessageCollector, MosquittoBroker, free_port, make_certificates

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]


def test_publish_subscribe_round_trip(mqtt_broker, make_mqtt_client, unique):
    received = MessageCollector()
    connects: list[int] = []
    sub = make_mqtt_client(mqtt_broker, f"sub-{unique}", on_connected=lambda c: connects.append(c.connection_count))
    sub.subscribe(f"t/{unique}/+", received)
    sub.start()
    pub = make_mqtt_client(mqtt_broker, f"pub-{unique}")
    pub.start()
    assert sub.wait_connected(10) and pub.wait_connected(10)
    assert sub.connected and sub.last_error is None and connects == [1]
    assert sub.wait_subscribed(5)

    handles = [pub.publish(f"t/{unique}/{i}", f"m{i}".encode(), qos=1) for i in range(5)]
    handles.append(pub.publish(f"t/{unique}/q0", b"q0", qos=0))
    for handle in handles:
        assert handle.wait(5) and handle.ok, handle
    assert all(h.reason_code is not None and h.reason_code < 0x80 for h in handles[:5])

    messages = received.wait_for(6)
    assert [m.payload for m in messages] == [b"m0", b"m1", b"m2", b"m3", b"m4", b"q0"]
    assert messages[0].topic == f"t/{unique}/0" and messages[0].qos == 1 and not messages[0].retain
    assert messages[5].qos == 0


def test_routing_matches_topics_as_paho_does_and_understands_shared_subscriptions():
    filters = ["#", "+", "a", "a/#", "a/+", "+/b", "a/+/c", "+/+", "a/b/#", "/+", "+/#", "a/", "$SYS/#", "$SYS/+"]
    topics = ["a", "a/b", "a/b/c", "a/x/c", "b", "x/b", "a/", "/a", "/", "a/b/c/d", "$SYS/x", "$SYS", "a//c"]
    for topic_filter in filters:
        for topic in topics:
            expected = paho.topic_matches_sub(topic_filter, topic)
            assert topic_matches(topic_filter, topic) is expected, (topic_filter, topic)
            assert topic_matches(f"$share/group/{topic_filter}", topic) is expected, (topic_filter, topic)
    for bad in ("$share/g", "$share//a/b", "$share/g+/a", "$share/g/a/#/b", "a/b#"):
        with pytest.raises(ValueError, match="invalid"):
            topic_matches(bad, "a/b")


def test_a_shared_subscription_receives_the_messages_of_its_filter(mqtt_broker, make_mqtt_client, unique):
    shared, plain = MessageCollector(), MessageCollector()
    sub = make_mqtt_client(mqtt_broker, f"sub-{unique}")
    sub.subscribe(f"$share/grp-{unique}/t/{unique}/+", shared)
    sub.subscribe(f"u/{unique}", plain)
    sub.start()
    pub = make_mqtt_client(mqtt_broker, f"pub-{unique}")
    pub.start()
    assert sub.wait_connected(10) and pub.wait_connected(10)
    assert sub.wait_subscribed(5)

    for topic in (f"t/{unique}/1", f"u/{unique}", f"t/{unique}/2"):
        assert pub.publish(topic, topic.encode(), qos=1).wait(5)
    assert [m.topic for m in shared.wait_for(2)] == [f"t/{unique}/1", f"t/{unique}/2"]  # under the real topic
    assert plain.wait_for(1)[0].topic == f"u/{unique}"
    time.sleep(0.2)
    assert len(shared.messages) == 2 and len(plain.messages) == 1


def test_abort_makes_the_broker_publish_the_will_and_does_not_reconnect(mqtt_broker, make_mqtt_client, unique):
    wills = MessageCollector()
    observer = make_mqtt_client(mqtt_broker, f"obs-{unique}")
    observer.subscribe(f"will/{unique}", wills)
    observer.start()
    assert observer.wait_connected(10)
    assert observer.wait_subscribed(5)

    lost: list[int] = []
    device = make_mqtt_client(mqtt_broker, f"dev-{unique}", will=Will(f"will/{unique}", b"power cut"),
                              on_disconnected=lambda c: lost.append(c.connection_count))
    device.abort()  # not started: nothing to do
    device.start()
    assert device.wait_connected(10)
    device.abort()
    assert wills.wait_for(1)[0].payload == b"power cut"  # no DISCONNECT was sent
    assert not device.connected
    time.sleep(0.5)  # ten times the reconnect delay of these test clients
    assert (device.connect_attempts, device.connection_count, device.connected, lost) == (1, 1, False, [])
    handle = device.publish(f"x/{unique}", b"after", qos=1)
    assert handle.done() and not handle.ok and "not started" in (handle.error or "")

    device.start()  # a new connection, with its will armed again
    assert device.wait_connected(10) and device.connection_count == 2
    device.stop()
    time.sleep(0.3)
    assert len(wills.messages) == 1


def test_a_failing_handler_is_logged_and_the_loop_keeps_running(mqtt_broker, make_mqtt_client, unique, caplog):
    received = MessageCollector()

    def explode(message):
        raise RuntimeError(f"handler bug on {message.payload!r}")

    client = make_mqtt_client(mqtt_broker, f"c-{unique}")
    client.subscribe(f"boom/{unique}", explode)
    client.subscribe(f"ok/{unique}", received)
    client.start()
    assert client.wait_connected(10)
    assert client.wait_subscribed(5)
    with caplog.at_level(logging.ERROR, logger="lepton_edge.fleet.mqtt"):
        for i in range(3):
            assert client.publish(f"boom/{unique}", f"b{i}".encode()).wait(5)
            assert client.publish(f"ok/{unique}", f"ok{i}".encode()).wait(5)
        assert received.wait_for(3) and received.payloads == [b"ok0", b"ok1", b"ok2"]
    failures = [r for r in caplog.records if "failed on a message from" in r.getMessage()]
    assert len(failures) == 3
    assert f"boom/{unique}" in failures[0].getMessage() and failures[0].exc_info is not None
    assert client.connected


def test_connect_to_a_closed_port_is_not_connected_and_retries_until_a_broker_appears(
    make_mqtt_client, unique, tmp_path
):
    port = free_port()
    connects: list[int] = []
    client = make_mqtt_client(port, f"c-{unique}", on_connected=lambda c: connects.append(1))
    client.start()
    assert not client.wait_connected(1.0)
    assert not client.connected and connects == []
    assert "Connection refused" in (client.last_error or "") and f"127.0.0.1:{port}" in client.last_error
    attempts = client.connect_attempts
    assert attempts >= 2  # retried, with backoff capped at 0.5 s
    with MosquittoBroker(tmp_path, port=port):
        assert client.wait_connected(10)
        assert client.connected and client.last_error is None and connects == [1]
    # The broker is gone again: the client notices and keeps trying.
    deadline = time.monotonic() + 10
    while client.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client.connected and "lost" in (client.last_error or "")


def test_a_refused_connack_is_never_treated_as_connected(make_mqtt_client, unique, tmp_path):
    with MosquittoBroker(tmp_path, allow_anonymous=False, users={"dev": "s3cret"}) as broker:
        connects: list[int] = []
        bad = make_mqtt_client(broker, f"bad-{unique}", on_connected=lambda c: connects.append(1))
        bad.start()
        deadline = time.monotonic() + 5
        while bad.connect_attempts < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bad.connect_attempts >= 3
        assert not bad.connected and not bad.wait_connected(0) and connects == []
        assert bad.last_error == f"broker mqtt://127.0.0.1:{broker.port} refused the connection: Not authorized"
        assert bad.last_reason_code == 0x87

        good = make_mqtt_client(broker, f"good-{unique}", username="dev", password="s3cret")
        good.start()
        assert good.wait_connected(10)


def test_credentials_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LEPTON_MQTT_USERNAME", "envuser")
    monkeypatch.setenv("LEPTON_MQTT_PASSWORD", "envpass")
    config = MqttConfig(client_id="dev-1")
    assert config.username == "envuser" and config.password is not None
    assert config.password.get_secret_value() == "envpass" and "envpass" not in repr(config)
    explicit = MqttConfig(client_id="dev-1", username="u", password="p")
    assert explicit.username == "u" and explicit.password.get_secret_value() == "p"
    monkeypatch.delenv("LEPTON_MQTT_USERNAME")
    monkeypatch.delenv("LEPTON_MQTT_PASSWORD")
    assert MqttConfig(client_id="dev-1").username is None


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        TlsConfig(cert_file=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="reconnect_min_s must not exceed reconnect_max_s"):
        MqttConfig(client_id="d", reconnect_min_s=10, reconnect_max_s=1)
    with pytest.raises(ValueError, match="client_id"):
        MqttConfig(client_id="has space")
    with pytest.raises(ValueError, match="Extra inputs"):
        MqttConfig(client_id="d", hots="typo")
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.ca_file: file .*missing\.pem not found"):
        MqttClient(MqttConfig(client_id="d", tls=TlsConfig(ca_file=tmp_path / "missing.pem")))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    client = MqttClient(MqttConfig(client_id="d", tls=TlsConfig(ca_file=garbage)))
    with pytest.raises(ConfigError, match=r"mqtt\.tls: cannot load the certificates"):
        client.start()


def test_publish_outcomes_without_a_connection(make_mqtt_client, mqtt_broker, unique):
    client = make_mqtt_client(mqtt_broker, f"c-{unique}")
    not_started = client.publish("x/y", b"1")
    assert not_started.done() and not not_started.ok and "not started" in not_started.error
    with pytest.raises(ValueError, match="invalid MQTT topic"):
        client.publish("x/+", b"1")
    with pytest.raises(ValueError, match="invalid MQTT topic filter"):
        client.subscribe("x/#/y", lambda m: None)

    offline = make_mqtt_client(free_port(), f"off-{unique}")
    offline.start()
    qos0 = offline.publish("x/y", b"1", qos=0)
    assert qos0.done() and not qos0.ok  # QoS 0 is never queued
    qos1 = offline.publish("x/y", b"1", qos=1)
    assert not qos1.wait(0.3)  # queued in memory until a connection exists
    offline.stop()
    assert qos1.done() and "client stopped" in qos1.error


def test_qos1_published_while_disconnected_is_sent_after_connect(make_mqtt_client, unique, tmp_path):
    port = free_port()
    received = MessageCollector()
    client = make_mqtt_client(port, f"c-{unique}")
    # Subscribed to its own topic: on connect the SUBSCRIBE goes out before the queued messages.
    client.subscribe(f"q/{unique}", received)
    client.start()
    handles = [client.publish(f"q/{unique}", f"{i}".encode(), qos=1) for i in range(3)]
    assert not any(h.done() for h in handles)
    with MosquittoBroker(tmp_path, port=port):
        for handle in handles:
            assert handle.wait(10) and handle.ok
        assert received.wait_for(3) and received.payloads == [b"0", b"1", b"2"]


def test_broker_refusal_fails_the_handle_with_the_reason(make_mqtt_client, unique, tmp_path):
    acl = "topic readwrite allowed/#\n"
    with MosquittoBroker(tmp_path, acl=acl) as broker:
        client = make_mqtt_client(broker, f"c-{unique}")
        client.start()
        assert client.wait_connected(10)
        ok = client.publish("allowed/x", b"1")
        denied = client.publish("denied/x", b"1")
        assert ok.wait(5) and ok.ok
        assert denied.wait(5) and not denied.ok and denied.rejected_by_broker
        assert denied.reason_code == 0x87 and "Not authorized" in denied.error


def test_last_will_is_published_when_the_process_is_killed(mqtt_broker, make_mqtt_client, unique):
    wills = MessageCollector()
    observer = make_mqtt_client(mqtt_broker, f"obs-{unique}")
    observer.subscribe(f"will/{unique}", wills)
    observer.start()
    assert observer.wait_connected(10)
    assert observer.wait_subscribed(5)
    child = textwrap.dedent(
        f"""
        import time
        from lepton_edge.fleet.mqtt import MqttClient, Will
        from lepton_edge.config.fleet import MqttConfig
        client = MqttClient(
            MqttConfig(host="127.0.0.1", port={mqtt_broker.port}, client_id="dying-{unique}"),
            will=lambda: Will("will/{unique}", b"session 1 died", qos=1),
        )
        client.start()
        assert client.wait_connected(10)
        print("connected", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"connected\n"
        assert wills.messages == []
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
    assert wills.wait_for(1)[0].payload == b"session 1 died"


def test_will_is_rebuilt_per_connection_and_not_sent_on_clean_stop(mqtt_broker, make_mqtt_client, unique):
    wills = MessageCollector()
    observer = make_mqtt_client(mqtt_broker, f"obs-{unique}")
    observer.subscribe(f"will/{unique}", wills)
    observer.start()
    assert observer.wait_connected(10)
    assert observer.wait_subscribed(5)

    session = iter(range(1, 100))
    births: list[int] = []
    current: dict[str, int] = {}

    def build_will() -> Will:
        current["session"] = next(session)
        return Will(f"will/{unique}", f"death {current['session']}".encode())

    device = make_mqtt_client(
        mqtt_broker, f"dev-{unique}", will=build_will, on_connected=lambda c: births.append(current["session"])
    )
    device.start()
    assert device.wait_connected(10) and births == [1]
    # Cut the TCP connection without a DISCONNECT packet, as a network failure would.
    device._paho.socket().shutdown(2)  # type: ignore[union-attr]
    assert wills.wait_for(1)[0].payload == b"death 1"
    deadline = time.monotonic() + 10
    while births != [1, 2] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert births == [1, 2] and device.connected and device.connection_count == 2

    device.stop()  # clean DISCONNECT: the broker discards the will of session 2
    time.sleep(0.5)
    assert observer.publish(f"will/{unique}", b"marker").wait(5)
    assert [m.payload for m in wills.wait_for(2)] == [b"death 1", b"marker"]


def test_persistent_session_delivers_messages_queued_while_offline(mqtt_broker, make_mqtt_client, unique):
    first = MessageCollector()
    device = make_mqtt_client(mqtt_broker, f"dev-{unique}", session_expiry_s=300)
    device.subscribe(f"inbox/{unique}/#", first)
    device.start()
    assert device.wait_connected(10) and not device.session_present
    assert device.wait_subscribed(5)
    device.stop()

    sender = make_mqtt_client(mqtt_broker, f"sender-{unique}")
    sender.start()
    assert sender.wait_connected(10)
    for i in range(5):
        assert sender.publish(f"inbox/{unique}/{i}", f"queued {i}".encode(), qos=1).wait(5)

    later = MessageCollector()
    again = make_mqtt_client(mqtt_broker, f"dev-{unique}", session_expiry_s=300)
    again.subscribe(f"inbox/{unique}/#", later)
    again.start()
    assert again.wait_connected(10) and again.session_present
    assert [m.payload for m in later.wait_for(5)] == [f"queued {i}".encode() for i in range(5)]
    assert first.messages == []


def test_request_response_with_correlation_data_and_expiry(mqtt_broker, make_mqtt_client, unique):
    command_topic = f"lepton/v1/devices/dev-{unique}/cmd/+"
    requests = MessageCollector()

    def serve(message):
        requests(message)
        if message.response_topic:
            device_client.publish(
                message.response_topic, b"done:" + message.payload, correlation_data=message.correlation_data
            )

    # The device subscribes once, then goes offline with its session kept.
    device_client = make_mqtt_client(mqtt_broker, f"dev-{unique}", session_expiry_s=300)
    device_client.subscribe(command_topic, serve)
    device_client.start()
    assert device_client.wait_connected(10)
    assert device_client.wait_subscribed(5)
    device_client.stop()

    responses = MessageCollector()
    requester = make_mqtt_client(mqtt_broker, f"req-{unique}")
    reply_to = f"lepton/v1/clients/req-{unique}/response"
    requester.subscribe(reply_to, responses)
    requester.start()
    assert requester.wait_connected(10)
    assert requester.wait_subscribed(5)
    base = f"lepton/v1/devices/dev-{unique}/cmd"
    stale = requester.publish(
        f"{base}/reboot", b"stale", response_topic=reply_to, correlation_data=b"id-1", message_expiry_interval=1
    )
    fresh = requester.publish(
        f"{base}/snapshot", b"fresh", response_topic=reply_to, correlation_data=b"id-2", message_expiry_interval=60
    )
    assert stale.wait(5) and fresh.wait(5)
    time.sleep(2.2)  # the first command expires while the device is offline

    device_client = make_mqtt_client(mqtt_broker, f"dev-{unique}", session_expiry_s=300)
    device_client.subscribe(command_topic, serve)
    device_client.start()
    (request,) = requests.wait_for(1)
    assert request.payload == b"fresh" and request.topic == f"{base}/snapshot"
    assert request.response_topic == reply_to and request.correlation_data == b"id-2"
    assert request.message_expiry_interval is not None and 0 < request.message_expiry_interval <= 60
    (response,) = responses.wait_for(1)
    assert response.payload == b"done:fresh" and response.correlation_data == b"id-2"
    time.sleep(0.3)
    assert len(requests.messages) == 1  # the expired command never ran


def test_broker_restart_reconnects_and_resubscribes(fresh_broker, make_mqtt_client, unique):
    received = MessageCollector()
    connects: list[bool] = []
    device = make_mqtt_client(fresh_broker, f"dev-{unique}", on_connected=lambda c: connects.append(c.session_present))
    device.subscribe(f"cfg/{unique}", received)
    device.start()
    assert device.wait_connected(10)

    # SIGKILL loses the broker's whole state (it saves only at shutdown): the session and subscription
    # are gone, so only the client's own re-subscription can bring the messages back.
    fresh_broker.restart(graceful=False)
    deadline = time.monotonic() + 10
    while len(connects) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert connects == [False, False] and device.connection_count == 2

    sender = make_mqtt_client(fresh_broker, f"sender-{unique}")
    sender.start()
    assert sender.wait_connected(10)
    assert device.wait_subscribed(5)
    assert sender.publish(f"cfg/{unique}", b"after restart").wait(5)
    assert received.wait_for(1)[0].payload == b"after restart"

    # A graceful restart keeps the session: the broker resumes it.
    fresh_broker.restart()
    while len(connects) < 3 and time.monotonic() < deadline + 10:
        time.sleep(0.02)
    assert connects[2] is True


def test_publish_is_thread_safe(mqtt_broker, make_mqtt_client, unique):
    received = MessageCollector()
    client = make_mqtt_client(mqtt_broker, f"c-{unique}")
    client.subscribe(f"mt/{unique}/#", received)
    client.start()
    assert client.wait_connected(10)
    assert client.wait_subscribed(5)
    handles = []
    lock = threading.Lock()

    def worker(n):
        for i in range(50):
            handle = client.publish(f"mt/{unique}/{n}", f"{n}-{i}".encode())
            with lock:
                handles.append(handle)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(h.wait(10) and h.ok for h in handles)
    payloads = [m.payload.decode() for m in received.wait_for(200)]
    assert sorted(payloads) == sorted(f"{n}-{i}" for n in range(4) for i in range(50))
    for n in range(4):  # per publisher thread, order is kept
        assert [p for p in payloads if p.startswith(f"{n}-")] == [f"{n}-{i}" for i in range(50)]


def test_tls_and_websocket_transports(make_mqtt_client, unique, tmp_path):
    certs = make_certificates(tmp_path / "certs")
    tls_port, ws_port = free_port(), free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\ncafile {certs['ca.pem']}\n"
        f"certfile {certs['server.pem']}\nkeyfile {certs['server.key']}\n"
        f"listener {ws_port} 127.0.0.1\nprotocol websockets\n"
    )
    with MosquittoBroker(tmp_path / "broker", extra_config=extra):
        received = MessageCollector()
        secure = make_mqtt_client(tls_port, f"tls-{unique}", tls=TlsConfig(ca_file=certs["ca.pem"]))
        secure.subscribe(f"tls/{unique}", received)
        secure.start()
        assert secure.wait_connected(10) and secure.address == f"mqtts://127.0.0.1:{tls_port}"
        assert secure.wait_subscribed(5)

        web = make_mqtt_client(ws_port, f"ws-{unique}", transport="websockets",
                               will=Will(f"tls/{unique}", b"websocket will"))
        web.start()
        assert web.wait_connected(10) and web.address == f"ws://127.0.0.1:{ws_port}"
        assert web.publish(f"tls/{unique}", b"over websockets").wait(5)
        assert received.wait_for(1)[0].payload == b"over websockets"
        web.abort()  # under the WebSocket wrapper too, the broker sees the connection die
        assert received.wait_for(2)[1].payload == b"websocket will"
        secure_device = make_mqtt_client(tls_port, f"tls-dev-{unique}", tls=TlsConfig(ca_file=certs["ca.pem"]),
                                         will=Will(f"tls/{unique}", b"tls will"))
        secure_device.start()
        assert secure_device.wait_connected(10)
        secure_device.abort()
        assert received.wait_for(3)[2].payload == b"tls will"

        # A broker certificate from an unknown CA is refused, and the reason is exposed.
        untrusted = make_mqtt_client(tls_port, f"untrusted-{unique}", tls=TlsConfig())
        untrusted.start()
        assert not untrusted.wait_connected(1.0)
        assert "certificate verify failed" in (untrusted.last_error or "").lower()


def test_subscribe_handles_resolve_on_the_suback_even_when_made_offline(mqtt_broker, make_mqtt_client, unique):
    client = make_mqtt_client(mqtt_broker, f"c-{unique}")
    offline = client.subscribe(f"early/{unique}", MessageCollector())
    assert not offline.wait(0.2)  # not connected yet: nothing was sent
    client.start()
    assert offline.wait(5) and offline.ok
    online = client.subscribe(f"late/{unique}", MessageCollector())
    assert online.wait(5) and online.ok and online.error is None
    assert client.wait_subscribed(5)
