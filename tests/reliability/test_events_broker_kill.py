"""Scenario 9: the broker is killed (SIGKILL) during a burst of analytics events and restarted seconds later."""

from __future__ import annotations

import time

import pytest

from lepton_edge.data import DEMO_MODEL
from lepton_edge.fleet.protocol import TopicKind
from tests.reliability.harness import (
    DeviceProcess,
    account,
    account_events,
    analytics_puts,
    events_config,
    wait_all_delivered,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

OUTAGE_S = 4.0


def analytics_received(subscriber) -> set[str]:
    return {e.id for e in subscriber.decoded(TopicKind.EVENT) if e.kind.startswith("analytics.")}


def test_broker_sigkill_during_a_burst_of_events_loses_no_event(
    scenario, broker, subscriber, device_id, devices, tmp_path
):
    if not DEMO_MODEL.is_file():
        pytest.skip(f"{DEMO_MODEL} is missing (models/train_shapes_detector.py makes it)")
    record = scenario(
        "9 events: broker SIGKILL",
        "a device making analytics events (shapes detector, tracking, two lines and a zone on the synthetic "
        f"scene, counts every 0.5 s, `results.mode: events`); mosquitto SIGKILLed, restarted {OUTAGE_S:g} s later",
    )
    device = DeviceProcess(tmp_path / "device", events_config(tmp_path, broker.port, device_id), sink_stats=True)
    devices.append(device)
    device.start()
    wait_until(lambda: len(analytics_received(subscriber)) >= 10, 60, "10 analytics events before the fault")

    seen_before = subscriber.uids()
    broker.kill()
    killed_at, killed_wall = time.monotonic(), time.time()
    time.sleep(OUTAGE_S)
    during = [r for r in analytics_puts(device) if r["t"] >= killed_wall]
    broker.start()
    cleared_at = time.monotonic()
    record.note(
        f"broker down for {cleared_at - killed_at:.1f} s; the device put {len(during)} analytics event(s) in its "
        "outbox meanwhile"
    )
    assert len(during) >= 5, "the outage must fall in a burst of events, or it tests nothing"

    first = wait_until(
        lambda: subscriber.first_new_after(cleared_at, seen_before, TopicKind.EVENT), 30, "an event after the restart"
    )
    record.recovery_s = first.at - cleared_at
    record.recovery_means = "from the broker accepting connections again to the first new event delivered"
    count = len(analytics_received(subscriber))
    wait_until(lambda: len(analytics_received(subscriber)) >= count + 5, 30, "events flowing after recovery")
    assert device.alive, f"the device died during the broker outage:\n{device.log_tail()}"

    code, _ = device.terminate()
    assert code == 0, device.log_tail()
    wait_all_delivered(device, subscriber)
    accounting = account(device, subscriber)
    record.set_accounting(accounting.summary())
    events = account_events(device, subscriber)
    record.set_events(events.summary())
    sinks = device.sink_stats()["events"]
    queued, refused = sum(s["queued"] for s in sinks), sum(s["lost"] for s in sinks)
    record.metrics["event_sink_queued"] = queued
    record.metrics["event_sink_refused"] = refused
    record.metrics["events_during_outage"] = len(during)
    record.note(
        f"the device's event sink queued {queued} event(s) in the outbox ({refused} refused); {events.received} "
        f"of {events.created} distinct event ids arrived, {events.duplicates} duplicate deliveries (same id, "
        "same bytes)"
    )
    assert not subscriber.all(TopicKind.RESULT)  # events mode: no per-frame results
    assert queued == events.created and refused == 0  # the sink's counter and the outbox agree
    assert events.lost == [] and events.unexpected == 0
    assert events.conflicting == [] and accounting.conflicting_duplicates == []
    assert accounting.durable_lost == []
    assert device.outbox_state()["depth"] == 0
