"""mosquitto running the production broker config (deploy/mosquitto/): TLS, identities, ACLs, per-client limits.

The broker runs the production mosquitto.conf with only its ports, file paths and log destination
substituted; certificates come from deploy/make-certs.sh and passwords from make-passwd.sh. :class:`Client`
is a paho MQTT v5 client that records what it receives, for tests that check what the ACL lets through.

Import the fixtures into a test module (or a conftest):
``from tests.support.production_broker import clients, pki, production_broker``.
"""

from __future__ import annotations

import os
import queue
import re
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from lepton_edge.config.fleet import TlsConfig
from tests.support.mosquitto import MosquittoBroker, free_port, require_mosquitto

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PRODUCTION_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
PRODUCTION_ACL = DEPLOY / "mosquitto" / "acl"
BROKER_NAME = "broker.lepton.test"  # the broker certificate names this and 127.0.0.1, not "localhost"
DEVICES = ("cam-a", "cam-b")  # the device certificates the pki fixture makes
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
            assert old in text, f"{PRODUCTION_CONF} no longer contains {old!r}: update the substitutions in {__file__}"
            text = text.replace(old, new)
        if os.geteuid() == 0:
            text += "\nuser root\n"  # otherwise mosquitto drops to `mosquitto`, who cannot read tmp_path
        self.conf_path.write_text(text)


def conf_value(option: str) -> int:
    """An integer option of the production mosquitto.conf (``max_packet_size``, ``message_size_limit``, ...)."""
    found = re.search(rf"^{option} (\d+)$", PRODUCTION_CONF.read_text(), re.M)
    assert found is not None, f"{PRODUCTION_CONF} has no integer `{option}` line"
    return int(found.group(1))


def run_script(*args: str | Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["bash", *map(str, args)], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout


def make_pki(root: Path) -> dict[str, Path]:
    """Certificates (broker, :data:`DEVICES`, scheduler; a foreign CA's cam-a) and the password file."""
    certs, other = root / "certs", root / "other-ca"
    make_certs = DEPLOY / "make-certs.sh"
    run_script(make_certs, "--out", certs, "broker", BROKER_NAME, "127.0.0.1")
    run_script(make_certs, "--out", certs, "device", *DEVICES)
    run_script(make_certs, "--out", certs, "scheduler")
    run_script(make_certs, "--out", other, "device", "cam-a")  # same CN, foreign CA
    passwd = root / "passwd"
    make_passwd = DEPLOY / "mosquitto" / "make-passwd.sh"
    run_script(make_passwd, passwd, "scheduler", env={"LEPTON_MQTT_PASSWORD": SCHEDULER_PASSWORD})
    run_script(make_passwd, passwd, "cam-pw", env={"LEPTON_MQTT_PASSWORD": DEVICE_PASSWORD})
    return {"certs": certs, "other": other, "passwd": passwd}


def client_tls(pki: dict[str, Path], name: str) -> TlsConfig:
    """The TLS section of an MqttConfig for identity ``name`` (a device id or ``scheduler``) of :func:`make_pki`."""
    key = pki["certs"] / "clients" / name
    return TlsConfig(
        ca_file=pki["certs"] / "ca.crt", cert_file=key.with_suffix(".crt"), key_file=key.with_suffix(".key")
    )


def agent_mqtt(pki: dict[str, Path], device_id: str) -> dict[str, object]:
    """The ``agent.mqtt`` overrides that connect a device agent with ``device_id``'s certificate."""
    return {"tls": client_tls(pki, device_id).model_dump(mode="json")}


def dev(device_id: str, suffix: str) -> str:
    """A device's topic: ``lepton/v1/devices/<device_id>/<suffix>``."""
    return f"lepton/v1/devices/{device_id}/{suffix}"


class Client:
    """A paho MQTT v5 client that records what it receives and how its connection ended."""

    _ids = iter(range(1_000_000))

    def __init__(
        self,
        broker: ProductionBroker,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        cafile: Path | None = None,
        cert: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.host, self.port = host, port or broker.port
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=client_id or f"test-{next(self._ids)}"
        )
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

    def publish(self, topic: str, payload: bytes = b"x", *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the PUBACK: by then the broker has routed (or denied) the message."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
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


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"certs", "other", "passwd"}``: the deploy scripts' PKI for :data:`DEVICES` and the scheduler."""
    require_mosquitto()
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def production_broker(pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionBroker]:
    with ProductionBroker(tmp_path_factory.mktemp("broker"), pki["certs"], pki["passwd"]) as running:
        yield running


@pytest.fixture
def clients(production_broker: ProductionBroker, pki: dict[str, Path]) -> Iterator:
    """``clients(name, **Client kwargs) -> Client``: a client with ``name``'s certificate, closed after the test."""
    made: list[Client] = []
    ca = pki["certs"] / "ca.crt"

    def make(name: str, **kwargs) -> Client:
        kwargs.setdefault("cafile", ca)
        kwargs.setdefault("cert", pki["certs"] / "clients" / name)
        client = Client(production_broker, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
