"""Flood isolation (scheduler/flood.py) on a real mosquitto: a flooding device is no longer routed to the
scheduler while the others are, and once its quarantine is over the scheduler listens to every device again,
including one born meanwhile. tests/security/test_flood.py measures it against the production broker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from lepton_edge.fleet.protocol import birth_topic, encode, telemetry_topic
from lepton_edge.scheduler.service import SchedulerService
from lepton_edge.scheduler.simulator import DeviceSpec, SimDevice
from tests.support.scheduler import fast_config, wait_until

pytestmark = pytest.mark.integration


def _online(service: SchedulerService, device_id: str) -> bool:
    device = service.store.get_device(device_id)
    return device is not None and device.online


def test_a_flooder_is_isolated_then_heard_again_and_devices_born_meanwhile_are_seen(
    fresh_broker, make_mqtt_client, tmp_path: Path, unique: str
) -> None:
    config = fast_config(
        fresh_broker.port,
        f"sqlite:///{tmp_path}/fleet.db",
        # Longer than the whole sequence: the flooder must not go offline by its heartbeat while it is isolated
        # (on a busy machine the isolation, the late birth and the refill took more than 5 s).
        heartbeat_timeout_s=30.0,
        ingest={"device_rate_hz": 5.0, "device_burst": 5, "flood_threshold": 50, "flood_quarantine_s": 1.5},
    )
    service = SchedulerService(config).start()
    client = make_mqtt_client(fresh_broker, f"devices-{unique}")
    client.start()
    assert client.wait_connected(5)
    devices = {name: SimDevice(DeviceSpec(f"{name}-{unique}")) for name in ("flooder", "quiet", "late")}
    for device in devices.values():
        device.new_session()
    flooder, quiet, late = (devices[n].device_id for n in ("flooder", "quiet", "late"))
    stop = threading.Event()

    def flood() -> None:
        payload = devices["flooder"].telemetry_payload(time.time(), 1.0)
        while not stop.is_set():
            for _ in range(200):
                client.publish(telemetry_topic(flooder), payload, qos=0)
            time.sleep(0.01)

    try:
        assert service.wait_connected(5)
        for name in ("flooder", "quiet"):
            client.publish(birth_topic(devices[name].device_id), encode(devices[name].birth()), retain=True).wait(5)
        wait_until(lambda: _online(service, flooder) and _online(service, quiet), 10, "both devices online")

        flooding = threading.Thread(target=flood)
        flooding.start()
        wait_until(lambda: service.ingestion.isolation.isolated == [flooder], 10, "the flooder isolated")
        rejected = service.rejected["flood"]
        client.publish(birth_topic(late), encode(devices["late"].birth()), retain=True).wait(5)
        for _ in range(3):  # the quiet device is still heard while the flooder is not
            client.publish(telemetry_topic(quiet), devices["quiet"].telemetry_payload(time.time(), 1.0)).wait(5)
        wait_until(lambda: len(service.store.telemetry_history(quiet)) == 3, 10, "the quiet device's telemetry")
        time.sleep(0.3)
        assert service.rejected["flood"] - rejected < 2000, "the flood still reaches the scheduler"
        assert service.store.get_device(late) is None, "a device unknown before the isolation was heard"
        stop.set()
        flooding.join()

        wait_until(lambda: service.ingestion.isolation.isolated == [], 10, "the quarantine over")
        wait_until(lambda: _online(service, late), 10, "the device born meanwhile seen by its retained birth")
        time.sleep(1.5)  # the flooder's bucket refills
        client.publish(telemetry_topic(flooder), devices["flooder"].telemetry_payload(time.time(), 1.0)).wait(5)
        wait_until(
            lambda: [r["seq"] for r in service.store.telemetry_history(flooder)][-1:] == [2], 10, "the flooder heard"
        )
        assert service.counts["flood_isolations"] == 1
    finally:
        stop.set()
        service.stop()
