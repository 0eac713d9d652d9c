"""The production broker config (deploy/mosquitto/) enforced by a real mosquitto: TLS, identities, ACLs.

The broker runs the production mosquitto.conf with only its ports, file paths and log destination
substituted; certificates come from deploy/make-certs.sh and passwords from make-passwd.sh. Denials are
tested by delivery (a denied subscription may still be granted by mosquitto but must deliver nothing),
with a permitted marker message afterwards proving the listener was live when the forbidden one would
have arrived. The attacks of issue #12 on the broker (forged responses, retained desired documents,
oversized payloads) are replayed in tests/security/test_broker.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from lepton_edge.fleet.protocol import MAX_PAYLOAD_BYTES
from tests.support import production_broker as broker_fixtures
from tests.support.production_broker import (
    DEVICE_PASSWORD,
    PRODUCTION_CONF,
    SCHEDULER_PASSWORD,
    Client,
    ProductionBroker,
    conf_value,
    dev,
)

pytestmark = pytest.mark.integration
pki, production_broker, clients = broker_fixtures.pki, broker_fixtures.production_broker, broker_fixtures.clients


# ------------------------------------------------------------------------------------------- identities


def test_device_publishes_and_receives_its_own_topics(clients) -> None:
    scheduler = clients("scheduler").connected()
    scheduler.subscribe("lepton/v1/devices/+/telemetry", "lepton/v1/clients/scheduler/response/+")
    cam = clients("cam-a").connected()
    assert [
        c.is_failure
        for c in cam.subscribe(dev("cam-a", "config/desired"), dev("cam-a", "cmd/+"), "lepton/v1/fleet/rebirth")
    ] == [False] * 3

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
    wide = [
        "#",
        "lepton/v1/#",
        "lepton/v1/devices/+/telemetry",
        dev("cam-b", "#"),
        dev("cam-b", "cmd/+"),
        dev("cam-b", "config/desired"),
        "lepton/v1/clients/+/response/+",
        "$SYS/#",
    ]
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


def test_password_listener_requires_tls_and_a_password(clients, production_broker: ProductionBroker) -> None:
    def pw(**kwargs) -> Client:
        return clients("cam-pw", port=production_broker.password_port, cert=None, **kwargs)

    assert pw().connect() != "Success"  # anonymous over TLS
    assert pw(username="cam-pw", password="wrong").connect() != "Success"
    assert pw(cafile=None, username="cam-pw", password=DEVICE_PASSWORD).connect() != "Success"  # plaintext
    device = pw(username="cam-pw", password=DEVICE_PASSWORD).connected()

    scheduler = clients("scheduler").connected()
    scheduler.subscribe("lepton/v1/#")
    device.publish(dev("cam-a", "telemetry"), b"forged")  # the same ACL: only its own topics
    device.publish(dev("cam-pw", "telemetry"), b"ok")
    assert scheduler.received_until(dev("cam-pw", "telemetry")) == [dev("cam-pw", "telemetry")]


def test_local_plaintext_listener_is_for_password_users_only(clients, production_broker: ProductionBroker) -> None:
    def local(**kwargs) -> Client:
        return clients("scheduler", port=production_broker.local_port, cafile=None, cert=None, **kwargs)

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


# ------------------------------------------------------------------------------------- per-client limits


def test_per_client_limits_are_set_and_no_rate_option_is_invented() -> None:
    assert conf_value("max_queued_messages") > 0 and conf_value("max_queued_bytes") > 0
    assert conf_value("max_inflight_messages") > 0
    assert conf_value("max_packet_size") > conf_value("message_size_limit") > MAX_PAYLOAD_BYTES
    assert "no per-client message-rate limit" in PRODUCTION_CONF.read_text()
