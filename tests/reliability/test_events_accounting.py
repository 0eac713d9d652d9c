"""The event accounting of the event scenarios: created (the ledger) against received, deduplicated by event id."""

from __future__ import annotations

import json

from lepton_edge.fleet.protocol import TopicKind
from tests.reliability.harness import Delivery, DeviceProcess, Subscriber, account_events, analytics_puts
from tests.reliability.report import ScenarioRecord, write_report

TOPIC = "lepton/v1/devices/d/events"


def put(uid: str, kind: str, event_id: str, t: float) -> dict:
    return {"event": "put", "uid": uid, "topic": TOPIC, "priority": "high", "t": t, "kind": kind, "event_id": event_id}


def delivery(kind: str, event_id: str, extra: str = "") -> Delivery:
    payload = json.dumps({"id": event_id, "kind": kind, "message": extra}).encode()
    return Delivery(TOPIC, TopicKind.EVENT, f"m-{event_id}", payload, 0.0)


def test_event_accounting_finds_lost_duplicated_conflicting_and_invented_events(tmp_path):
    device = DeviceProcess(tmp_path, {"device_id": "d", "agent": {"state_dir": str(tmp_path)}})
    ledger = [
        put("u1", "analytics.line_crossed", "e1", 1),
        put("u2", "analytics.counts", "e2", 2),
        put("u3", "analytics.zone_enter", "e3", 3),
        put("u4", "config.applied", "c1", 4),  # not an analytics event
        put("u5", "analytics.line_crossed", "e5", 5),
    ]
    device.ledger_path.write_text("".join(json.dumps(r) + "\n" for r in ledger))
    subscriber = Subscriber(1883, "d")  # never started: deliveries are fed by hand
    subscriber.deliveries += [
        delivery("analytics.line_crossed", "e1"),
        delivery("analytics.line_crossed", "e1"),  # resent after an outage: identical, removable
        delivery("analytics.counts", "e2"),
        delivery("analytics.line_crossed", "e5"),
        delivery("analytics.line_crossed", "e5", "other"),  # same id, other bytes: not removable
        delivery("analytics.appeared", "e9"),  # never put by the device
        delivery("config.applied", "c1"),
    ]
    events = account_events(device, subscriber)
    assert (events.created, events.received, events.lost) == (4, 3, ["e3"])
    assert events.duplicates == 2 and events.conflicting == ["e5"] and events.unexpected == 1
    assert events.by_kind == {"analytics.line_crossed": 2, "analytics.counts": 1, "analytics.zone_enter": 1}
    assert [r["event_id"] for r in analytics_puts(device, before=3)] == ["e1", "e2"]

    record = ScenarioRecord("9 events", "broker killed")
    record.set_events(events.summary())
    _, md_path = write_report([record], tmp_path)
    assert "| 9 events | 4 | 3 | 1 |" in md_path.read_text()
