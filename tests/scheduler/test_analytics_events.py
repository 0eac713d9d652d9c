"""Analytics events in the scheduler: a real device agent (the demo detector counting a line on the synthetic
scene) through a real broker into the store, once each, and served by the API with filters."""

from __future__ import annotations

import pytest

from lepton_edge.data import DEMO_MODEL
from lepton_edge.device.agent import DeviceAgent
from lepton_edge.scheduler.store import EventFilter
from tests.device.helpers import agent_config
from tests.scheduler.test_api import http, server, service, store  # noqa: F401 - the API over a real store
from tests.scheduler.test_service import start_service  # noqa: F401 - a real scheduler on the fresh broker
from tests.scheduler.test_store import backend, open_  # noqa: F401 - SQLite and PostgreSQL stores
from tests.support.scheduler import wait_until

LINE = {"name": "gate", "start": [0.5, 0], "end": [0.5, 1]}


def crossing(fleet_store, device, stream, ts, name="gate"):
    analytics = {"stream": stream, "track_id": 3, "name": name, "direction": "in", "capture_time": ts}
    return fleet_store.add_event(
        "device.analytics.line_crossed",
        f"square #3 line crossed {name} (in)",
        device_id=device,
        details={"analytics": analytics, "event_id": f"{device}-{stream}-{ts}"},
        ts=ts,
    )


def test_the_store_filters_events_by_device_stream_kind_and_time(open_) -> None:  # noqa: F811
    fleet_store = open_()
    crossing(fleet_store, "cam-a", "door", 10.0)
    crossing(fleet_store, "cam-a", "yard", 11.0)
    crossing(fleet_store, "cam-b", "door", 12.0)
    fleet_store.add_event("device.source.reconnected", "camera back", device_id="cam-a", ts=13.0)

    def messages(**f):
        return [
            (e.device_id, e.details.get("analytics", {}).get("stream"), e.time)
            for e in fleet_store.list_events(filters=EventFilter(**f))
        ]

    assert messages(device_id="cam-a", kind_prefix="device.analytics.") == [
        ("cam-a", "door", 10.0),
        ("cam-a", "yard", 11.0),
    ]
    assert messages(stream="door") == [("cam-a", "door", 10.0), ("cam-b", "door", 12.0)]
    assert messages(since_ts=11.0, until_ts=13.0) == [("cam-a", "yard", 11.0), ("cam-b", "door", 12.0)]
    assert messages(kind_prefix="device.analytics.zone") == []
    assert len(messages()) == 4
    first = fleet_store.list_events(filters=EventFilter(stream="door"))[0]
    assert [e.time for e in fleet_store.list_events(since_id=first.id, filters=EventFilter(stream="door"))] == [12.0]


def test_the_api_serves_events_with_filters(http, service) -> None:  # noqa: F811
    crossing(service.store, "cam-a", "door", 10.0)
    crossing(service.store, "cam-b", "yard", 20.0)
    status, events = http.get("/api/events?device=cam-b&stream=yard&kind=device.analytics.&since=15&until=25")
    assert status == 200 and [e["details"]["analytics"]["stream"] for e in events] == ["yard"]
    status, events = http.get("/api/events?stream=nowhere")
    assert (status, events) == (200, [])
    status, _ = http.get("/api/events?since=-1")
    assert status == 422


@pytest.mark.integration
def test_analytics_events_of_a_real_agent_are_stored_once(start_service, fresh_broker, tmp_path, unique) -> None:  # noqa: F811
    scheduler = start_service()
    device = f"an-{unique}"
    model = DEMO_MODEL.resolve()
    config = agent_config(
        tmp_path,
        model,
        fresh_broker.port,
        device,
        source="synthetic://shapes?fps=30&width=160&height=120",
        postprocess={"type": "detect"},
        tracking={},
        analytics={"coordinates": "normalized", "lines": [LINE]},
        agent={"results": {"mode": "events"}},
    )
    agent = DeviceAgent(config).start()
    try:
        only_gate = EventFilter(device_id=device, kind_prefix="device.analytics.line_crossed")
        stored = wait_until(
            lambda: scheduler.store.list_events(filters=only_gate), what="a crossing stored", timeout=30
        )
    finally:
        agent.stop()
    detail = stored[0].details["analytics"]
    assert detail["name"] == "gate" and detail["direction"] in ("in", "out") and detail["stream"]
    assert stored[0].time == detail["capture_time"]
    ids = [e.details["event_id"] for e in scheduler.store.list_events(limit=10_000, filters=only_gate)]
    assert len(ids) == len(set(ids))
