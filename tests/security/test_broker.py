"""Issue #12, item 5: what the production broker (deploy/mosquitto/: mutual TLS, the ACL, the size limits) must
refuse a device: forged command responses, retained documents on ``config/desired``, oversized payloads.

Denials are checked by delivery: a permitted marker published after the forged messages proves the listener
was live when they would have arrived (tests/deploy/test_mosquitto.py checks the deploy files themselves).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_edge.device.agent import DeviceAgent
from lepton_edge.fleet.protocol import (
    CommandRequest,
    CommandResponse,
    TopicKind,
    command_topic,
    decode,
    encode,
    response_topic,
)
from tests.device.helpers import Recorder, agent_config, wait_until
from tests.support.production_broker import TIMEOUT, ProductionBroker, agent_mqtt, client_tls, conf_value, dev

pytestmark = pytest.mark.integration

AREA = "broker ACL"


@pytest.fixture
def real_cam_b(
    production_broker: ProductionBroker, pki: dict[str, Path], color_model: Path, tmp_path: Path
) -> Iterator[DeviceAgent]:
    """A real agent for device cam-b, connected with its certificate."""
    mqtt = agent_mqtt(pki, "cam-b")
    agent = DeviceAgent(agent_config(tmp_path, color_model, production_broker.port, "cam-b", agent={"mqtt": mqtt}))
    agent.start()
    try:
        assert agent.client.wait_connected(10), agent.client.last_error
        yield agent
    finally:
        agent.stop()


def test_a_forged_command_response_never_reaches_the_requester(
    production_broker: ProductionBroker, pki: dict[str, Path], clients, real_cam_b: DeviceAgent, attack
) -> None:
    other_device = attack("device publishes a forged command response on another device's response topic", AREA)
    other_requester = attack("device publishes a forged response on another requester's response topic", AREA)
    requester = Recorder.connect(
        production_broker.port, "scheduler", "lepton/v1/clients/#", tls=client_tls(pki, "scheduler")
    )
    try:
        cam_a = clients("cam-a").connected()
        forged = encode(CommandResponse(name="ping", status="ok", result={"forged": True}))
        forged_topics = [
            (
                other_device,
                [
                    response_topic("scheduler", "cam-b"),  # an answer in cam-b's name, to the scheduler
                    "lepton/v1/clients/scheduler/response",  # the old layout, without the answering device
                    "lepton/v1/clients/scheduler/response/cam-a/x",
                    "lepton/v1/clients/scheduler/other",
                ],
            ),
            (
                other_requester,
                [
                    response_topic("operator", "cam-b"),  # another requester (an operator tool), in cam-b's name
                    response_topic("cam-b", "cam-b"),  # the topic cam-b itself reads as a requester
                ],
            ),
        ]
        for _, topics in forged_topics:
            for topic in topics:
                cam_a.publish(topic, forged)

        # the real device still answers the real request, on the same topic the forgeries aimed at
        request = encode(CommandRequest(name="ping"))
        own = response_topic("scheduler", "cam-b")
        assert requester.client.publish(
            command_topic("cam-b", "ping"), request, qos=1, response_topic=own, correlation_data=b"real"
        ).wait(TIMEOUT)
        answer = wait_until(
            lambda: next((m for m in requester.raw(TopicKind.COMMAND_RESPONSE) if m.correlation_data == b"real"), None)
        )
        assert decode(TopicKind.COMMAND_RESPONSE, answer.payload).status == "ok"
        marker = response_topic("scheduler", "cam-a")  # cam-a answering as itself is allowed
        cam_a.publish(marker, encode(CommandResponse(name="ping", status="ok", result="marker")))
        wait_until(lambda: any(m.topic == marker for m in requester.messages))
        received = [(m.topic, m.payload) for m in requester.messages]
        assert [t for t, _ in received] == [own, marker], received
        assert forged not in [p for _, p in received]
        for rec, topics in forged_topics:
            rec.refused_because(
                "broker ACL: a device writes only lepton/v1/clients/+/response/<its id>; nothing forged was delivered"
            )
            rec.figures.update(forged=len(topics), delivered=0)
    finally:
        requester.stop()


def test_a_device_cannot_retain_documents_on_config_desired(clients, attack) -> None:
    rec = attack("device publishes retained garbage on its own and another device's config/desired", AREA)
    scheduler = clients("scheduler").connected()
    scheduler.publish(dev("cam-a", "config/desired"), b"v1", retain=True)
    cam_a = clients("cam-a").connected()
    cam_b = clients("cam-b").connected()
    attempts = 0
    for device in (cam_a, cam_b):  # a device, on its own or another device's desired document
        for target in ("cam-a", "cam-b"):
            device.publish(dev(target, "config/desired"), b"garbage", retain=True)
            attempts += 1
    watcher = scheduler  # a new subscription with the scheduler's rights gets the retained documents
    watcher.subscribe(dev("cam-a", "config/desired"), dev("cam-b", "config/desired"))
    assert watcher.receive() == (dev("cam-a", "config/desired"), b"v1")  # the retained document is intact
    marker = dev("cam-b", "config/desired")
    scheduler.publish(marker, b"v7")
    assert watcher.received_until(marker) == [marker]  # and cam-b has none: no garbage was retained
    cam_a.subscribe(dev("cam-a", "config/desired"))
    assert cam_a.receive() == (dev("cam-a", "config/desired"), b"v1")
    for device_id in ("cam-a", "cam-b"):
        scheduler.publish(dev(device_id, "config/desired"), b"", retain=True)
    rec.refused_because("broker ACL: only the scheduler's identity writes config/desired; the retained v1 was kept")
    rec.figures.update(attempts=attempts, retained_garbage=0)


def test_oversized_payloads_are_dropped_while_normal_traffic_flows(clients, attack) -> None:
    limit, packet = conf_value("message_size_limit"), conf_value("max_packet_size")
    rec = attack("device publishes payloads over message_size_limit and max_packet_size", AREA)
    scheduler = clients("scheduler").connected()
    scheduler.subscribe(dev("cam-a", "results"), dev("cam-b", "telemetry"))
    cam_b = clients("cam-b").connected()
    cam_a = clients("cam-a").connected()
    cam_a.client.publish(dev("cam-a", "results"), b"o" * (limit + 1), qos=1)  # over the limit: dropped
    cam_a.client.publish(dev("cam-a", "results"), b"p" * (packet + 1), qos=1)  # over the packet size
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
    rec.refused_because(
        f"mosquitto drops a publish over message_size_limit ({limit} B) and disconnects a "
        f"packet over max_packet_size ({packet} B); the other device's 5 messages arrived"
    )
    rec.figures.update(message_size_limit=limit, max_packet_size=packet, other_delivered=5)
