"""Desired documents from the scheduler's identity only (lepton_edge/device/desired_identity.py): signed by
the scheduler's desired_signing_key (lepton_edge/scheduler/desired_publisher.py) for this device, checked
with the keys of the device's local config; the rest refused and counted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lepton_edge.config.device import AgentConfig, parse_config
from lepton_edge.core.errors import UpdateError
from lepton_edge.device.agent import DeviceAgent
from lepton_edge.device.desired_identity import DesiredIdentity
from lepton_edge.device.signing import generate_keypair
from lepton_edge.fleet.protocol import DesiredConfig, ProtocolError, TopicKind, config_desired_topic, encode
from lepton_edge.scheduler.desired_publisher import DesiredSigner
from tests.device.helpers import agent_data, wait_until


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    for name in ("scheduler", "rotated", "attacker"):
        generate_keypair(tmp_path / f"{name}.key", tmp_path / f"{name}.pub")
    return {name: tmp_path / name for name in ("scheduler", "rotated", "attacker")}


def _agent(tmp_path: Path, *public: Path) -> AgentConfig:
    data = agent_data(tmp_path, Path("m.onnx"), 1, "cam-1", agent={"scheduler_public_keys": [str(p) for p in public]})
    agent = parse_config(data, "test").agent
    assert agent is not None
    return agent


def _desired(version: int = 1, **config: object) -> DesiredConfig:
    return DesiredConfig(version=version, config=config or {"idle": True}, issued_at=time.time(), issued_by="r1")


def _signed(key: Path, device_id: str = "cam-1", desired: DesiredConfig | None = None) -> bytes:
    return encode(DesiredSigner(key.with_suffix(".key")).sign(device_id, desired or _desired()))


def test_a_document_signed_for_this_device_by_a_configured_key_passes(tmp_path: Path, keys) -> None:
    identity = DesiredIdentity("cam-1", _agent(tmp_path, keys["scheduler"].with_suffix(".pub")))
    identity.check(_signed(keys["scheduler"]))
    assert identity.enabled and not identity.refused


def test_during_a_rotation_either_key_passes(tmp_path: Path, keys) -> None:
    pubs = [keys["scheduler"].with_suffix(".pub"), keys["rotated"].with_suffix(".pub")]
    identity = DesiredIdentity("cam-1", _agent(tmp_path, *pubs))
    identity.check(_signed(keys["scheduler"]))
    identity.check(_signed(keys["rotated"]))
    assert not identity.refused


@pytest.mark.parametrize(
    ("make", "reason", "message"),
    [
        (lambda keys: encode(_desired()), "unsigned", "not signed"),
        (lambda keys: _signed(keys["attacker"]), "bad_signature", "not by any of agent.scheduler_public_keys"),
        (lambda keys: _signed(keys["scheduler"], "cam-2"), "bad_signature", "meant for another device"),
        (
            lambda keys: _signed(keys["scheduler"]).replace(b'"idle":true', b'"idle":false'),
            "bad_signature",
            "altered",
        ),
        (  # a signed document re-issued with a higher version keeps the old signature
            lambda keys: _signed(keys["scheduler"]).replace(b'"version":1', b'"version":2'),
            "bad_signature",
            "altered",
        ),
    ],
    ids=["unsigned", "another-key", "replayed-on-another-device", "altered-config", "altered-version"],
)
def test_unsigned_foreign_replayed_or_altered_documents_are_refused_and_counted(
    tmp_path: Path, keys, make, reason: str, message: str
) -> None:
    identity = DesiredIdentity("cam-1", _agent(tmp_path, keys["scheduler"].with_suffix(".pub")))
    with pytest.raises(ProtocolError, match=message):
        identity.check(make(keys), "lepton/v1/devices/cam-1/config/desired")
    assert identity.refused == {reason: 1}


def test_without_keys_nothing_is_checked_and_a_missing_key_file_is_a_clear_error(tmp_path: Path, keys) -> None:
    DesiredIdentity("cam-1", _agent(tmp_path)).check(encode(_desired()))
    with pytest.raises(UpdateError, match=r"missing\.pub: public key not found"):
        DesiredIdentity("cam-1", _agent(tmp_path, tmp_path / "missing.pub"))


@pytest.mark.integration
def test_the_agent_applies_only_signed_documents_and_keeps_its_keys_local(
    mqtt_broker, recorder, tmp_path: Path, color_model, unique: str, keys
) -> None:
    device = f"di-{unique}"
    public = keys["scheduler"].with_suffix(".pub")
    data = agent_data(tmp_path, color_model, mqtt_broker.port, device, agent={"scheduler_public_keys": [str(public)]})
    agent = DeviceAgent(parse_config(data, "test")).start()
    try:
        rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/#")
        pipeline_config = {k: v for k, v in data.items() if k not in ("agent", "device_id")}

        def publish(payload: bytes) -> None:
            assert rec.client.publish(config_desired_topic(device), payload, qos=1, retain=True).wait(5)

        publish(encode(_desired(1, **pipeline_config)))  # unsigned
        wait_until(lambda: agent.desired_identity.refused["unsigned"] == 1)
        assert agent.rejections.counts["config/desired"] == 1 and agent.config_version == 0

        publish(_signed(keys["scheduler"], device, _desired(2, **pipeline_config)))
        report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 2)
        assert report.outcome == "applied" and agent.config_version == 2

        # a signed document may still not change the keys: they are local to the device
        hostile = {**pipeline_config, "agent": {"scheduler_public_keys": [str(keys["attacker"].with_suffix(".pub"))]}}
        publish(_signed(keys["scheduler"], device, _desired(3, **hostile)))
        report = rec.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 3)
        assert report.outcome == "rejected" and "scheduler_public_keys" in " ".join(report.errors)
        assert agent.config_version == 2
    finally:
        agent.stop()
