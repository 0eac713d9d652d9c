"""The production broker config (deploy/mosquitto/) enforced by a real mosquitto: TLS, identities, ACLs.

The broker runs the production mosquitto.conf with only its ports, file paths and log destination
substituted; certificates come from deploy/make-certs.sh and passwords from make-passwd.sh. Denials are
tested by delivery (a denied subscription may still be granted by mosquitto but must deliver nothing),
with a permitted marker message afterwards proving the listener was live when the forbidden one would
have arrived.
"""

from __future__ import annotations

import os
import queue
import re
import ssl
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from lepton_edge.fleet import protocol
from lepton_edge.fleet.protocol import MAX_PAYLOAD_BYTES
from tests.support.mosquitto import MosquittoBroker, free_port, require_mosquitto

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PRODUCTION_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
PRODUCTION_ACL = DEPLOY / "mosquitto" / "acl"
BROKER_NAME = "broker.lepton.test"  # the broker certificate names this and 127.0.0.1, not "localhost"
SCHEDULER_PASSWORD = "scheduler-secret"
DEVICE_PASSWORD = "pw-device-secret"
TIMEOUT = 5.0
QUIET = 0.3  # how long "nothing arrives" is watched after the marker already arrived


class ProductionBroker(MosquittoBroker):
    """mosquitto running deploy/mosquitto/mosquitto.conf with test ports and paths."""

    def __init__(self, workdir: Path, certs: Path, passwd: Path) -> None:
        self.certs, self.passwd = certs, passwd
        self.password_port = free_port()
        self.local_port = free_port()
        super().__init__(workdir)  # picks self.port (the mutual-TLS listener) and writes the config

    def _write_config(self) -> None:
        text = PRODUCTION_CONF.read_text()
        substitutions = {
            "listener 8883\n": f"listener {self.port} 127.0.0.1\n",
            "listener 8884\n": f"listener {self.password_port} 127.0.0.1\n",
            "listener 1883 127.0.0.1\n": f"listener {self.local_port} 127.0.0.1\n",
            "/etc/mosquitto/lepton/ca.crt": str(self.certs / "ca.crt"),
            "/etc/mosquitto/lepton/broker.crt": str(self.certs / "broker.crt"),
            "/etc/mosquitto/lepton/broker.key": str(self.certs / "broker.key"),
            "/etc/mosquitto/lepton/acl": str(PRODUCTION_ACL),
            "/etc/mosquitto/lepton/passwd": str(self.passwd),
            "persistence_location /var/lib/mosquitto/": f"persistence_location {self.data_dir}/",
            "log_dest file /var/log/mosquitto/mosquitto.log": f"log_dest file {self.log_path}",
        }
        for old, new in substitutions.items():
            assert old in text, f"{PRODUCTION_CONF} no longer contains {old!r}: update this test's substitutions"
            text = text.replace(old, new)
        if os.geteuid() == 0:
            text += "\nuser root\n"  # otherwise mosquitto drops to `mosquitto`, who cannot read tmp_path
        self.conf_path.write_text(text)


def run_script(*args: str | Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_mosquitto()
    root = tmp_path_factory.mktemp("pki")
    certs, other = root / "certs", root / "other-ca"
    make_certs = DEPLOY / "make-certs.sh"
    run_script(make_certs, "--out", certs, "broker", BROKER_NAME, "127.0.0.1")
    run_script(make_certs, "--out", certs, "device", "cam-a", "cam-b")
    run_script(make_certs, "--out", certs, "scheduler")
    run_script(make_certs, "--out", other, "device", "cam-a")  # same CN, foreign CA
    passwd = root / "passwd"
    make_passwd = DEPLOY / "mosquitto" / "make-passwd.sh"
    run_script(make_passwd, passwd, "scheduler", env={"LEPTON_MQTT_PASSWORD": SCHEDULER_PASSWORD})
    run_script(make_passwd, passwd, "cam-pw", env={"LEPTON_MQTT_PASSWORD": DEVICE_PASSWORD})
    return {"certs": certs, "other": other, "passwd": passwd}


@pytest.fixture(scope="module")
def broker(pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    with ProductionBroker(tmp_path_factory.mktemp("broker"), pki["certs"], pki["passwd"]) as running:
        yield running


class Client:
    """A paho MQTT v5 client that records what it receives and how its connection ended."""

    _ids = iter(range(1_000_000))

    def __init__(self, broker: ProductionBroker, *, port: int | None = None, host: str = "127.0.0.1",
                 cafile: Path | None = None, cert: Path | None = None, username: str | None = None,
                 password: str | None = None, client_id: str | None = None,
                 will: tuple[str, bytes] | None = None) -> None:
        self.host, self.port = host, port or broker.port
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=client_id or f"test-{next(self._ids)}")
        if cafile is not None:
            context = ssl.create_default_context(cafile=str(cafile))
            if cert is not None:
                context.load_cert_chain(str(cert.with_suffix(".crt")), str(cert.with_suffix(".key")))
            self.client.tls_set_context(context)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(*will, qos=1)
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.outcome: queue.Queue[str] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.disconnected = threading.Event()
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.outcome.put(str(rc))
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload))
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: self.subacks.put(codes)

    def _on_disconnect(self, _c, _u, _flags, rc, _p) -> None:
        self.disconnected.set()
        self.outcome.put(f"disconnected: {rc}")

    def connect(self) -> str:
        """'Success', or why the connection was refused (CONNACK reason, TLS error, or dropped)."""
        try:
            self.client.connect(self.host, self.port, keepalive=10)
        except (ssl.SSLError, OSError) as e:
            return f"{type(e).__name__}: {e}"
        self.client.loop_start()
        try:
            outcome = self.outcome.get(timeout=TIMEOUT)
        except queue.Empty:
            outcome = "no CONNACK"
        if outcome != "Success":
            self.close()
        return outcome

    def connected(self) -> Client:
        outcome = self.connect()
        assert outcome == "Success", outcome
        return self

    def subscribe(self, *filters: str) -> list[ReasonCode]:
        self.client.subscribe([(f, 1) for f in filters])
        return self.subacks.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes = b"x") -> None:
        """Publish at QoS 1 and wait for the PUBACK: by then the broker has routed the message."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"no PUBACK for {topic}"

    def receive(self) -> tuple[str, bytes]:
        return self.messages.get(timeout=TIMEOUT)

    def received_until(self, marker: str) -> list[str]:
        """Topics received up to and including the first message on ``marker``, then a short quiet wait."""
        topics = []
        while not topics or topics[-1] != marker:
            topics.append(self.receive()[0])
        try:
            while True:
                topics.append(self.messages.get(timeout=QUIET)[0])
        except queue.Empty:
            return topics

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(broker: ProductionBroker, pki: dict[str, Path]):
    """A factory of connected clients, all closed after the test."""
    made: list[Client] = []
    ca = pki["certs"] / "ca.crt"

    def device(name: str, **kwargs) -> Client:
        kwargs.setdefault("cafile", ca)
        kwargs.setdefault("cert", pki["certs"] / "clients" / name)
        client = Client(broker, **kwargs)
        made.append(client)
        return client

    yield device
    for client in made:
        client.close()


def dev(device_id: str, suffix: str) -> str:
    return f"lepton/v1/devices/{device_id}/{suffix}"


# ------------------------------------------------------------------------------------------- identities


def test_device_publishes_and_receives_its_own_topics(clients) -> None:
    scheduler = clients("scheduler").connected()
    scheduler.subscribe("lepton/v1/devices/+/telemetry", "lepton/v1/clients/scheduler/response/+")
    cam = clients("cam-a").connected()
    assert [c.is_failure for c in cam.subscribe(dev("cam-a", "config/desired"), dev("cam-a", "cmd/+"),
                                                "lepton/v1/fleet/rebirth")] == [False] * 3

    cam.publish(dev("cam-a", "telemetry"), b"t1")
    assert scheduler.receive() == (dev("cam-a", "telemetry"), b"t1")
    scheduler.publish(dev("cam-a", "config/desired"), b"v2")
    assert cam.receive() == (dev("cam-a", "config/desired"), b"v2")
    scheduler.publish(dev("cam-a", "cmd/snapshot"), b"go")
    assert cam.receive() == (dev("cam-a", "cmd/snapshot"), b"go")
    cam.publish("lepton/v1/clients/scheduler/response/cam-a", b"done")
    assert scheduler.receive() == ("lepton/v1/clients/scheduler/response/cam-a", b"done")
    scheduler.publish("lepton/v1/fleet/rebirth", b"all")
    assert cam.receive() == ("lepton/v1/fleet/rebirth", b"all")


def test_device_cannot_publish_as_another_device_or_as_the_scheduler(clients) -> None:
    scheduler = clients("scheduler").connected()
    scheduler.subscribe("lepton/v1/#")
    cam_b = clients("cam-b").connected()
    cam_b.subscribe(dev("cam-b", "config/desired"), dev("cam-b", "cmd/+"))
    cam_a = clients("cam-a").connected()

    forbidden = [
        dev("cam-b", "telemetry"),  # impersonate B
        dev("cam-b", "config/reported"),
        dev("cam-b", "config/desired"),  # reconfigure B
        dev("cam-b", "cmd/reboot"),  # command B
        dev("cam-a", "config/desired"),  # its own desired config belongs to the scheduler
        dev("cam-a", "cmd/reboot"),
        "lepton/v1/fleet/rebirth",
        "lepton/v1/other/topic",
        "elsewhere",
    ]
    for topic in forbidden:
        cam_a.publish(topic, b"forged")
    marker = dev("cam-b", "telemetry")
    cam_b.publish(marker, b"marker")
    assert scheduler.received_until(marker) == [marker]
    assert cam_b.messages.empty()


def test_device_cannot_subscribe_to_other_devices_or_everything(clients) -> None:
    cam_a = clients("cam-a").connected()
    wide = ["#", "lepton/v1/#", "lepton/v1/devices/+/telemetry", dev("cam-b", "#"), dev("cam-b", "cmd/+"),
            dev("cam-b", "config/desired"), "lepton/v1/clients/+/response/+", "$SYS/#"]
    codes = cam_a.subscribe(*wide, dev("cam-a", "cmd/+"))
    assert not codes[-1].is_failure
    scheduler = clients("scheduler").connected()
    cam_b = clients("cam-b").connected()

    cam_b.publish(dev("cam-b", "telemetry"))
    scheduler.publish(dev("cam-b", "cmd/reboot"))
    scheduler.publish(dev("cam-b", "config/desired"))
    scheduler.publish("lepton/v1/clients/scheduler-2/response/cam-b")
    marker = dev("cam-a", "cmd/ping")
    scheduler.publish(marker)
    # `#` may also match the marker: only the marker may arrive, however many times.
    assert set(cam_a.received_until(marker)) == {marker}


def test_scheduler_sees_and_commands_every_device(clients) -> None:
    scheduler = clients("scheduler").connected()
    scheduler.subscribe("lepton/v1/#")
    cams = {name: clients(name).connected() for name in ("cam-a", "cam-b")}
    for name, cam in cams.items():
        cam.subscribe(dev(name, "cmd/+"))
        cam.publish(dev(name, "birth"), name.encode())
        assert scheduler.receive() == (dev(name, "birth"), name.encode())
        scheduler.publish(dev(name, "cmd/ping"))
        assert cam.receive()[0] == dev(name, "cmd/ping")
        assert scheduler.receive()[0] == dev(name, "cmd/ping")  # its own command, seen through lepton/v1/#


def test_last_will_only_on_the_devices_own_death_topic(clients) -> None:
    scheduler = clients("scheduler").connected()
    scheduler.subscribe("lepton/v1/devices/+/death")
    with_will = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")

    cam_a = clients("cam-a", will=(dev("cam-b", "death"), b"forged")).connected()
    cam_a.client.disconnect(reasoncode=with_will)
    cam_a = clients("cam-a", will=(dev("cam-a", "death"), b"session 7")).connected()
    cam_a.client.disconnect(reasoncode=with_will)
    assert scheduler.received_until(dev("cam-a", "death")) == [dev("cam-a", "death")]


def test_client_id_cannot_take_over_another_devices_session(clients) -> None:
    cam_b = clients("cam-b", client_id="cam-b").connected()
    cam_b.subscribe(dev("cam-b", "cmd/+"))
    clients("cam-a", client_id="cam-b").connected()  # the broker replaces the id by the username
    scheduler = clients("scheduler").connected()
    scheduler.publish(dev("cam-b", "cmd/ping"))
    assert cam_b.receive()[0] == dev("cam-b", "cmd/ping")
    assert not cam_b.disconnected.is_set()


def test_message_size_limit_is_above_the_protocol_limit(clients) -> None:
    limit = int(re.search(r"^message_size_limit (\d+)$", PRODUCTION_CONF.read_text(), re.M).group(1))
    assert limit > MAX_PAYLOAD_BYTES
    scheduler = clients("scheduler").connected()
    scheduler.subscribe(dev("cam-a", "results"))
    cam_a = clients("cam-a").connected()
    cam_a.client.publish(dev("cam-a", "results"), b"o" * (limit + 1), qos=1)  # dropped (or disconnected)
    largest_valid = b"v" * MAX_PAYLOAD_BYTES
    cam_a = clients("cam-a").connected()
    cam_a.publish(dev("cam-a", "results"), largest_valid)
    topic, payload = scheduler.receive()
    assert (topic, len(payload)) == (dev("cam-a", "results"), MAX_PAYLOAD_BYTES)


# ------------------------------------------------------------------------------------ TLS and passwords


def test_clients_without_a_valid_certificate_are_refused(clients, pki: dict[str, Path]) -> None:
    ca = pki["certs"] / "ca.crt"
    assert clients("cam-a", cert=None).connect() != "Success"  # TLS, no client certificate
    assert clients("cam-a", cafile=None, cert=None).connect() != "Success"  # plaintext
    assert clients("cam-a", cafile=ca, cert=pki["other"] / "clients" / "cam-a").connect() != "Success"
    assert clients("cam-a", cert=None, username="cam-a", password="guess").connect() != "Success"
    assert clients("cam-a").connect() == "Success"  # the same client with its real certificate


def test_clients_verify_the_broker_certificate(clients, pki: dict[str, Path]) -> None:
    outcome = clients("cam-a", host="localhost").connect()  # resolves to 127.0.0.1; not a name in the cert
    assert "SSLCertVerificationError" in outcome and "mismatch" in outcome.lower(), outcome
    outcome = clients("cam-a", cafile=pki["other"] / "ca.crt").connect()  # a broker our CA did not sign
    assert "SSLCertVerificationError" in outcome and "certificate verify failed" in outcome, outcome
    assert clients("cam-a", host="127.0.0.1").connect() == "Success"


def test_password_listener_requires_tls_and_a_password(clients, broker: ProductionBroker) -> None:
    def pw(**kwargs) -> Client:
        return clients("cam-pw", port=broker.password_port, cert=None, **kwargs)

    assert pw().connect() != "Success"  # anonymous over TLS
    assert pw(username="cam-pw", password="wrong").connect() != "Success"
    assert pw(cafile=None, username="cam-pw", password=DEVICE_PASSWORD).connect() != "Success"  # plaintext
    device = pw(username="cam-pw", password=DEVICE_PASSWORD).connected()

    scheduler = clients("scheduler").connected()
    scheduler.subscribe("lepton/v1/#")
    device.publish(dev("cam-a", "telemetry"), b"forged")  # the same ACL: only its own topics
    device.publish(dev("cam-pw", "telemetry"), b"ok")
    assert scheduler.received_until(dev("cam-pw", "telemetry")) == [dev("cam-pw", "telemetry")]


def test_local_plaintext_listener_is_for_password_users_only(clients, broker: ProductionBroker) -> None:
    def local(**kwargs) -> Client:
        return clients("scheduler", port=broker.local_port, cafile=None, cert=None, **kwargs)

    assert local().connect() != "Success"
    assert local(username="scheduler", password="wrong").connect() != "Success"
    scheduler = local(username="scheduler", password=SCHEDULER_PASSWORD).connected()
    scheduler.subscribe(dev("cam-a", "telemetry"))
    clients("cam-a").connected().publish(dev("cam-a", "telemetry"), b"t")
    assert scheduler.receive() == (dev("cam-a", "telemetry"), b"t")


def test_production_listeners_bind_as_documented() -> None:
    listeners = re.findall(r"^listener (.+)$", PRODUCTION_CONF.read_text(), re.M)
    assert listeners == ["8883", "8884", "1883 127.0.0.1"]  # the only plaintext one is loopback
    assert re.search(r"^allow_anonymous true", PRODUCTION_CONF.read_text(), re.M) is None


def test_device_answers_commands_only_on_its_own_response_topics(clients) -> None:
    scheduler = clients("scheduler").connected()
    scheduler.subscribe("lepton/v1/clients/#")
    cam_a = clients("cam-a").connected()
    forged = [
        "lepton/v1/clients/scheduler/response/cam-b",  # an answer in another device's name
        "lepton/v1/clients/scheduler/response",  # the old layout, without the answering device
        "lepton/v1/clients/scheduler/response/cam-a/x",
        "lepton/v1/clients/cam-b/response/cam-b",
        "lepton/v1/clients/scheduler/other",
    ]
    for topic in forged:
        cam_a.publish(topic, b"forged")
    own = protocol.response_topic("scheduler", "cam-a")
    cam_a.publish(own, b"answer")
    assert scheduler.received_until(own) == [own]
    clients("cam-b").connected().publish(protocol.response_topic("scheduler", "cam-b"), b"answer")
    assert scheduler.receive() == (protocol.response_topic("scheduler", "cam-b"), b"answer")


# ------------------------------------------------------------------------------------- per-client limits


def conf_value(option: str) -> int:
    return int(re.search(rf"^{option} (\d+)$", PRODUCTION_CONF.read_text(), re.M).group(1))


def test_per_client_limits_are_set_and_no_rate_option_is_invented() -> None:
    assert conf_value("max_queued_messages") > 0 and conf_value("max_queued_bytes") > 0
    assert conf_value("max_inflight_messages") > 0
    assert conf_value("max_packet_size") > conf_value("message_size_limit") > MAX_PAYLOAD_BYTES
    assert "no per-client message-rate limit" in PRODUCTION_CONF.read_text()


def test_oversized_payload_from_a_device_is_dropped_while_normal_traffic_flows(clients) -> None:
    limit = conf_value("message_size_limit")
    scheduler = clients("scheduler").connected()
    scheduler.subscribe(dev("cam-a", "results"), dev("cam-b", "telemetry"))
    cam_b = clients("cam-b").connected()
    cam_a = clients("cam-a").connected()
    cam_a.client.publish(dev("cam-a", "results"), b"o" * (limit + 1), qos=1)  # over the limit: dropped
    cam_a.client.publish(dev("cam-a", "results"), b"p" * (conf_value("max_packet_size") + 1), qos=1)
    for i in range(5):
        cam_b.publish(dev("cam-b", "telemetry"), b"t%d" % i)
    marker = dev("cam-b", "telemetry")
    received = []
    while len([t for t in received if t == marker]) < 5:
        received.append(scheduler.receive()[0])
    assert received == [marker] * 5  # nothing from the oversized publishes, all of cam-b's traffic
    cam_a = clients("cam-a").connected()  # the offender may have been disconnected; it can still work normally
    cam_a.publish(dev("cam-a", "results"), b"ok")
    assert scheduler.received_until(dev("cam-a", "results")) == [dev("cam-a", "results")]


# ------------------------------------------------------------------------------------- desired documents


def test_only_the_scheduler_publishes_retained_desired_documents(clients) -> None:
    scheduler = clients("scheduler").connected()
    scheduler.client.publish(dev("cam-a", "config/desired"), b"v1", qos=1, retain=True).wait_for_publish(TIMEOUT)
    cam_a = clients("cam-a").connected()
    cam_b = clients("cam-b").connected()
    for device in (cam_a, cam_b):  # a device, on its own or another device's desired document
        for target in ("cam-a", "cam-b"):
            info = device.client.publish(dev(target, "config/desired"), b"garbage", qos=1, retain=True)
            info.wait_for_publish(TIMEOUT)
    watcher = scheduler  # a new subscription with the scheduler's rights gets the retained documents
    watcher.subscribe(dev("cam-a", "config/desired"), dev("cam-b", "config/desired"))
    assert watcher.receive() == (dev("cam-a", "config/desired"), b"v1")  # the retained document is intact
    marker = dev("cam-b", "config/desired")
    scheduler.publish(marker, b"v7")
    assert watcher.received_until(marker) == [marker]
    cam_a.subscribe(dev("cam-a", "config/desired"))
    assert cam_a.receive() == (dev("cam-a", "config/desired"), b"v1")
    scheduler.client.publish(dev("cam-a", "config/desired"), b"", qos=1, retain=True).wait_for_publish(TIMEOUT)
    scheduler.client.publish(marker, b"", qos=1, retain=True).wait_for_publish(TIMEOUT)
