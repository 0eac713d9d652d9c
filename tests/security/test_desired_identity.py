"""Issue #12, items 3 and 5: desired documents come from the scheduler's identity only.

On a broker without the production ACL (the plain test broker: anyone may publish anywhere), a real device
agent whose local config lists the scheduler's public key refuses unsigned, foreign-signed and replayed
desired documents and counts them; a real scheduler re-asserts its retained document when garbage replaces
it. The production ACL's part (a device cannot publish on config/desired at all) is
tests/security/test_broker.py::test_a_device_cannot_retain_documents_on_config_desired.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_edge.device.agent import DeviceAgent
from lepton_edge.device.signing import generate_keypair
from lepton_edge.fleet.protocol import (
    DesiredConfig,
    TopicKind,
    config_desired_topic,
    decode,
    encode,
    subscription,
)
from lepton_edge.scheduler.desired_publisher import DesiredSigner
from lepton_edge.scheduler.service import SchedulerService
from lepton_edge.scheduler.simulator import FleetSimulator
from tests.device.helpers import Recorder, idle_config, wait_until
from tests.support.scheduler import DesiredRecorder, fast_config, workload

pytestmark = pytest.mark.integration

AREA = "desired documents"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Key pairs (PREFIX.key, PREFIX.pub): the scheduler's and an attacker's."""
    for name in ("scheduler", "attacker"):
        generate_keypair(tmp_path / f"{name}.key", tmp_path / f"{name}.pub")
    return {name: tmp_path / name for name in ("scheduler", "attacker")}


@pytest.fixture
def signed_agent(mqtt_broker, tmp_path: Path, keys: dict[str, Path], unique: str) -> Iterator[DeviceAgent]:
    """A real idle agent that accepts desired documents signed by the scheduler's key only."""
    public = str(keys["scheduler"].with_suffix(".pub"))
    agent = DeviceAgent(
        idle_config(tmp_path, mqtt_broker.port, f"cam-{unique}", agent={"scheduler_public_keys": [public]})
    )
    agent.start()
    yield agent
    agent.stop()


def _document(version: int) -> DesiredConfig:
    return DesiredConfig(version=version, config={"idle": True}, issued_at=time.time(), issued_by="r1")


def test_forged_unsigned_and_replayed_desired_documents_are_refused_and_counted(
    mqtt_broker, signed_agent: DeviceAgent, keys: dict[str, Path], attack, unique: str
) -> None:
    device = signed_agent.device_id
    attacker = Recorder.connect(mqtt_broker.port, f"attacker-{unique}", subscription(TopicKind.CONFIG_REPORTED, device))
    scheduler_key, attacker_key = (
        DesiredSigner(keys["scheduler"].with_suffix(".key")),
        DesiredSigner(keys["attacker"].with_suffix(".key")),
    )
    forgeries = [
        ("unsigned desired document", "unsigned", encode(_document(5))),
        ("desired document signed with another key", "bad_signature", encode(attacker_key.sign(device, _document(6)))),
        (  # what the scheduler signed for another device, replayed on this one's topic
            "desired document of another device replayed",
            "bad_signature",
            encode(scheduler_key.sign(f"other-{unique}", _document(7))),
        ),
    ]
    try:
        for i, (name, reason, payload) in enumerate(forgeries, start=1):
            rec = attack(name, AREA)
            assert attacker.client.publish(config_desired_topic(device), payload, qos=1, retain=True).wait(5)
            wait_until(lambda i=i: sum(signed_agent.desired_identity.refused.values()) == i)
            assert signed_agent.desired_identity.refused[reason] >= 1
            assert signed_agent.config_version == 0, f"{name} was applied"
            rec.figures["device_rejections"] = signed_agent.rejections.counts["config/desired"]
            rec.refused_because(f"device: {reason} (agent.scheduler_public_keys); counted, config kept")
        # the same device applies the scheduler's own document: the check refuses forgeries, not everything
        genuine = encode(scheduler_key.sign(device, _document(8)))
        assert attacker.client.publish(config_desired_topic(device), genuine, qos=1, retain=True).wait(5)
        report = attacker.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 8)
        assert report.outcome == "applied" and signed_agent.config_version == 8
        assert not any(
            r.version in (5, 6, 7) for r in attacker.of(TopicKind.CONFIG_REPORTED)
        )  # no report for forgeries
    finally:
        attacker.client.publish(config_desired_topic(device), b"", qos=1, retain=True).wait(5)
        attacker.stop()


def test_retained_garbage_on_config_desired_is_replaced_by_the_schedulers_document(
    fresh_broker, tmp_path: Path, keys: dict[str, Path], make_mqtt_client, attack, unique: str
) -> None:
    rec = attack("retained garbage overwrites a device's desired document", AREA)
    key = keys["scheduler"].with_suffix(".key")
    config = fast_config(fresh_broker.port, f"sqlite:///{tmp_path}/fleet.db", desired_signing_key=str(key))
    service = SchedulerService(config).start()
    sim = FleetSimulator("127.0.0.1", fresh_broker.port, 1, rate_hz=5.0, prefix=unique, mode="device").start()
    try:
        assert service.wait_connected(5)
        (device,) = sim.devices
        service.add_workload(workload("w1"))
        recorder = DesiredRecorder()
        watcher = make_mqtt_client(fresh_broker, f"watcher-{unique}")
        watcher.subscribe(subscription(TopicKind.CONFIG_DESIRED, device), recorder)
        watcher.start()
        assert watcher.wait_connected(5)
        issued = wait_until(lambda: recorder.latest(device), 20)
        assert DesiredSigner(key).signed_it(device, issued)

        attacker = make_mqtt_client(fresh_broker, f"attacker-{unique}")
        attacker.start()
        assert attacker.wait_connected(5)
        garbage = {"version": issued.version + 1000, "config": {"idle": True}, "issued_at": 1.0, "issued_by": "x"}
        assert attacker.publish(config_desired_topic(device), json.dumps(garbage).encode(), retain=True).wait(5)
        wait_until(lambda: service.counts["desired_reasserted"] >= 1, 10)
        retained: list[bytes] = []  # what a device connecting now receives
        late = make_mqtt_client(fresh_broker, f"late-{unique}")
        late.subscribe(config_desired_topic(device), lambda m: retained.append(m.payload))
        late.start()
        assert late.wait_connected(5)
        wait_until(lambda: retained, 10)
        document = decode(TopicKind.CONFIG_DESIRED, retained[-1])
        assert isinstance(document, DesiredConfig) and document.version == issued.version
        assert DesiredSigner(key).signed_it(device, document)
        events = [e for e in service.store.list_events(limit=1000) if e.kind == "config.desired_overwritten"]
        assert events and events[0].device_id == device
        rec.figures.update(foreign=service.counts["desired_foreign"], reasserted=service.counts["desired_reasserted"])
        rec.refused_because("scheduler: a desired document it did not issue is re-asserted, counted and logged")
    finally:
        sim.stop()
        service.stop()
