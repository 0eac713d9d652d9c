"""Scenario 10: the device is SIGKILLed during a burst of analytics events and restarted on the same state folder."""

from __future__ import annotations

import json
import time

import pytest

from lepton_edge.config.fleet import OutboxConfig
from lepton_edge.data import DEMO_MODEL
from lepton_edge.fleet.outbox import Outbox
from lepton_edge.fleet.protocol import TopicKind
from tests.reliability.harness import (
    DeviceProcess,
    account,
    account_events,
    analytics_puts,
    events_config,
    wait_all_delivered,
    wait_quiet,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

FROZEN_S = 2.0


def analytics_received(subscriber) -> set[str]:
    return {e.id for e in subscriber.decoded(TopicKind.EVENT) if e.kind.startswith("analytics.")}


def pending_events(device: DeviceProcess) -> dict[str, bytes]:
    """Analytics events in the outbox on disk (the device is not running): event id -> payload."""
    with Outbox(OutboxConfig(path=device.outbox_path)) as outbox:
        messages = [m for m in outbox.pending() if m.topic.endswith("/events")]
    out = {}
    for m in messages:
        event = json.loads(m.payload)
        if event["kind"].startswith("analytics."):
            out[event["id"]] = bytes(m.payload)
    return out


def test_device_sigkill_during_a_burst_of_events_resends_every_queued_event(
    scenario, broker, subscriber, device_id, devices, tmp_path
):
    if not DEMO_MODEL.is_file():
        pytest.skip(f"{DEMO_MODEL} is missing (models/train_shapes_detector.py makes it)")
    record = scenario(
        "10 events: device SIGKILL",
        "`lepton-edge run` making analytics events is SIGKILLed while its outbox holds unacknowledged events (the "
        f"broker frozen with SIGSTOP for {FROZEN_S:g} s just before), then restarted on the same state folder",
    )
    device = DeviceProcess(tmp_path / "device", events_config(tmp_path, broker.port, device_id))
    devices.append(device)
    device.start()
    wait_until(lambda: len(analytics_received(subscriber)) >= 10, 60, "10 analytics events before the fault")

    broker.pause()
    time.sleep(FROZEN_S)
    device.kill()
    killed_wall = time.time()
    broker.resume()
    wait_quiet(subscriber)  # what the killed process had written reaches the broker and is delivered
    acknowledged = {r["event_id"] for r in analytics_puts(device, before=killed_wall)}
    stored = pending_events(device)
    seen_before = subscriber.uids()
    record.metrics["events_in_outbox_at_kill"] = len(stored)
    record.metrics["events_put_before_kill"] = len(acknowledged)
    record.note(
        f"before the kill the device had put {len(acknowledged)} analytics event(s) in its outbox; "
        f"{len(stored)} were still unacknowledged on disk"
    )
    assert len(stored) >= 3, "the kill must leave events in the outbox, or it tests nothing"
    # The ledger line follows the commit, so the kill may cut the line of the put in progress: at most one event can
    # be in the outbox without its line (it then counts as received-but-unledgered, never as lost).
    assert len(set(stored) - acknowledged) <= 1

    restarted_at = time.monotonic()
    device.start()
    first = wait_until(
        lambda: subscriber.first_new_after(restarted_at, seen_before, TopicKind.EVENT), 60, "an event after restart"
    )
    record.recovery_s = first.at - restarted_at
    record.recovery_means = (
        "from the restart of the process (Python start, model load and connect included) to the first new event "
        "delivered (one the killed process had queued)"
    )
    wait_until(lambda: set(stored) <= analytics_received(subscriber), 30, "the events queued before the kill")
    count = len(analytics_received(subscriber))
    wait_until(lambda: len(analytics_received(subscriber)) >= count + 5, 30, "new events after the restart")

    code, _ = device.terminate()
    assert code == 0, device.log_tail()
    wait_all_delivered(device, subscriber)
    accounting = account(device, subscriber)
    record.set_accounting(accounting.summary())
    events = account_events(device, subscriber)
    record.set_events(events.summary())
    received = {}
    for d in subscriber.all(TopicKind.EVENT):
        received.setdefault(json.loads(d.payload)["id"], d.payload)
    resent_equal = sum(received.get(i) == p for i, p in stored.items())
    record.note(
        f"after the restart all {len(stored)} queued event(s) arrived, byte for byte ({resent_equal} equal); "
        f"{events.received} of {events.created} distinct event ids over both runs, {events.duplicates} duplicate "
        "deliveries (removable by id); events still in memory at the kill (tracker, sink queue) were never "
        "acknowledged to the outbox and are not counted"
    )
    assert acknowledged <= analytics_received(subscriber)  # 0 lost of those acknowledged to the outbox
    assert resent_equal == len(stored)
    assert events.lost == [] and events.unexpected <= 1 and events.conflicting == []  # 1: a ledger line cut by the kill
    assert accounting.durable_lost == [] and accounting.conflicting_duplicates == []
    assert device.outbox_state()["depth"] == 0
