"""What proves a device alive (scheduler/liveness.py): a valid message of its current session, even one the
rate limit rejects or the writer has no room for; never a message of another session or a malformed one.
Handlers are fed directly (no broker): the rules are the point here; tests/security/test_flood.py runs them
against the production broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_edge.fleet.mqtt import IncomingMessage
from lepton_edge.fleet.protocol import Death, birth_topic, death_topic, encode, telemetry_topic
from lepton_edge.scheduler.admission import LIVENESS_SAMPLE_S
from lepton_edge.scheduler.service import SchedulerService
from lepton_edge.scheduler.simulator import DeviceSpec, SimDevice
from lepton_edge.scheduler.stores import open_store
from tests.support.scheduler import fast_config


@pytest.fixture
def service(tmp_path: Path) -> Iterator[SchedulerService]:
    store = open_store(f"sqlite:///{tmp_path}/fleet.db")
    config = fast_config(1, "sqlite://:memory:", ingest={"device_rate_hz": 1.0, "device_burst": 1, "queue_max": 100})
    yield SchedulerService(config, store=store)  # not started: its handlers alone
    store.close()


def _born(service: SchedulerService, device_id: str = "cam-1") -> SimDevice:
    device = SimDevice(DeviceSpec(device_id))
    device.new_session()
    service.ingestion.on_birth(IncomingMessage(birth_topic(device_id), encode(device.birth()), 1, False))
    service.views.get(device_id).last_seen = 0.0  # silent since long ago
    return device


def _telemetry(device: SimDevice, payload: bytes | None = None) -> IncomingMessage:
    body = payload if payload is not None else device.telemetry_payload(time.time(), 1.0)
    return IncomingMessage(telemetry_topic(device.device_id), body, 1, False)


def _exhaust_bucket(service: SchedulerService, device: SimDevice) -> None:
    service.views.get(device.device_id).bucket.tokens = 0.0


def test_a_message_the_rate_limit_rejects_still_proves_its_device_alive(service: SchedulerService) -> None:
    device = _born(service)
    _exhaust_bucket(service, device)
    service.ingestion.on_telemetry(_telemetry(device))
    view = service.views.get("cam-1")
    assert service.rejected["flood"] == 1
    assert time.time() - view.last_seen < 5, "a rejected message of the current session proves liveness"
    assert service.counts["telemetry"] == 0  # not stored


def test_rejected_messages_are_decoded_at_most_once_a_second_per_device(service: SchedulerService) -> None:
    device = _born(service)
    _exhaust_bucket(service, device)
    service.ingestion.on_telemetry(_telemetry(device))
    view = service.views.get("cam-1")
    sampled = view.sampled_at
    view.last_seen = 0.0
    for _ in range(100):
        _exhaust_bucket(service, device)
        service.ingestion.on_telemetry(_telemetry(device))
    assert view.sampled_at == sampled and view.last_seen == 0.0, "sampled again within LIVENESS_SAMPLE_S"
    view.sampled_at -= LIVENESS_SAMPLE_S
    service.ingestion.on_telemetry(_telemetry(device))
    assert view.last_seen > 0.0


@pytest.mark.parametrize(
    ("forgery", "why"),
    [
        (lambda d: d.telemetry_payload(time.time(), 1.0).replace(b'"session_id":1', b'"session_id":2'), "session"),
        (lambda d: b'{"device_id": "cam-1", "session_id": 1}', "malformed"),
        (lambda d: b"\xff" * 64, "garbage"),
    ],
)
def test_a_rejected_message_of_another_session_or_malformed_proves_nothing(
    service: SchedulerService, forgery, why: str
) -> None:
    device = _born(service)
    _exhaust_bucket(service, device)
    service.ingestion.on_telemetry(_telemetry(device, forgery(device)))
    assert service.views.get("cam-1").last_seen == 0.0, why


def test_after_its_death_a_devices_session_proves_nothing(service: SchedulerService) -> None:
    device = _born(service)
    service.views.get("cam-1").bucket.tokens = 1.0
    service.ingestion.on_death(IncomingMessage(death_topic("cam-1"), encode(device.death()), 1, False))
    _exhaust_bucket(service, device)
    service.ingestion.on_telemetry(_telemetry(device))
    view = service.views.get("cam-1")
    assert not view.online and view.last_seen == 0.0


def test_a_devices_death_gets_through_its_own_burst_and_a_death_flood_is_decoded_once_a_second(
    service: SchedulerService,
) -> None:
    device = _born(service)
    _exhaust_bucket(service, device)
    other = Death(device_id="cam-1", session_id=device.session_id + 7, reason="connection_lost")  # not current
    for _ in range(50):
        service.ingestion.on_death(IncomingMessage(death_topic("cam-1"), encode(other), 1, False))
    assert service.views.get("cam-1").online and service.rejected["flood"] == 50
    service.views.get("cam-1").death_sampled_at = time.time() - LIVENESS_SAMPLE_S  # a second later
    service.ingestion.on_death(IncomingMessage(death_topic("cam-1"), encode(device.death()), 1, False))
    assert not service.views.get("cam-1").online, "the current session's death was lost to the rate limit"


def test_telemetry_dropped_for_a_full_writer_proves_liveness_and_reaches_the_store_by_the_control_queue(
    service: SchedulerService,
) -> None:
    device = _born(service)
    for _ in range(100):  # fill the writer's queue (ingest.queue_max) without a writer to empty it
        service.writer.put(("cam-1", 1, 0, None, time.time()))  # type: ignore[arg-type]
    control_before = len(service.control)
    service.views.get("cam-1").bucket.tokens = 10.0
    service.ingestion.on_telemetry(_telemetry(device))
    assert service.rejected["backlog_full"] == 1
    assert time.time() - service.views.get("cam-1").last_seen < 5
    assert len(service.control) > control_before, "the store's last_seen is written ahead of the telemetry backlog"
