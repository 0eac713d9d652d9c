"""``GET /api/devices/{id}/streams`` over real HTTP on a real store: each workload and model of a device's
latest telemetry, the viewer role, a device without per-workload figures, and payload entries it cannot read."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.fleet import protocol
from lepton_edge.scheduler.api import ApiServer, serve
from lepton_edge.scheduler.store import Store
from lepton_edge.scheduler.stores import open_store
from tests.scheduler.test_api import CAPS_CPU, StoreService, telemetry
from tests.support.api_client import ApiClient, make_token

pytestmark = pytest.mark.integration


def pct(p50: float) -> dict[str, float]:
    return {"p50": p50, "p90": p50 * 1.5, "p99": p50 * 2, "max": p50 * 3}


def two_stream_telemetry(device_id: str, seq: int, ts: float) -> dict[str, Any]:
    """A device's telemetry with two workloads on one batched model, exactly as the protocol schema has it."""
    data = telemetry(device_id, 1, seq, ts, fps=37.5, p50=40.0, temp=50.0, model="det")
    data["workloads"] = {
        "gate": protocol.WorkloadTelemetry(
            stream="cam-gate",
            model="det",
            fps=25.0,
            frames=1500,
            drops={"stale": 12, "busy": 3},
            latency_ms=pct(38.0),
            frame_age_ms=pct(9.0),
            source_state="running",
            state="running",
        ).model_dump(mode="json"),
        "yard": protocol.WorkloadTelemetry(
            stream="cam-yard",
            model="det",
            fps=12.5,
            frames=700,
            latency_ms=pct(55.0),
            source_state="reconnecting",
            state="running",
            error="rtsp://10.0.0.2/yard: connection refused",
        ).model_dump(mode="json"),
    }
    data["models"] = {"det": protocol.ModelTelemetry(fps=37.5, batch_mean=1.8, busy=0.62, streams=2).model_dump()}
    protocol.Telemetry.model_validate(data)  # still a payload a device may send
    return data


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[ApiServer, Store]]:
    with (
        open_store(f"sqlite:///{tmp_path / 'fleet.db'}") as store,
        serve(StoreService(store), "127.0.0.1", 0) as server,
    ):
        yield server, store


def test_each_stream_and_model_of_the_latest_telemetry(api: tuple[ApiServer, Store]) -> None:
    server, store = api
    now = time.time()
    store.device_birth("cam-1", 1, CAPS_CPU, now - 20)
    store.record_telemetry("cam-1", 1, 1, telemetry("cam-1", 1, 1, now - 10, fps=5, p50=9, temp=40, model="det"),
                           now - 10)  # fmt: skip
    viewer = ApiClient(server.url, make_token(store, "viewer"))
    status, answer = viewer.get("/api/devices/cam-1/streams")
    assert status == 200, answer
    assert answer["streams"] == [] and answer["models"] == [] and answer["skipped"] == []  # none reported

    store.record_telemetry("cam-1", 1, 2, two_stream_telemetry("cam-1", 2, now - 5), now - 5)
    status, answer = viewer.get("/api/devices/cam-1/streams")
    assert status == 200, answer
    assert answer["device_id"] == "cam-1" and answer["online"] is True
    assert answer["telemetry_time"] == pytest.approx(now - 5)
    gate, yard = answer["streams"]
    assert gate == {
        "workload": "gate",
        "stream": "cam-gate",
        "model": "det",
        "fps": 25.0,
        "frames": 1500,
        "drops": {"busy": 3, "stale": 12},
        "latency_p50_ms": 38.0,
        "latency_p90_ms": 57.0,
        "latency_p99_ms": 76.0,
        "frame_age_p99_ms": 18.0,
        "source_state": "running",
        "state": "running",
        "error": None,
    }
    assert (yard["workload"], yard["source_state"], yard["drops"], yard["frame_age_p99_ms"]) == (
        "yard", "reconnecting", {}, None,
    )  # fmt: skip
    assert yard["error"] == "rtsp://10.0.0.2/yard: connection refused"
    assert answer["models"] == [{"model": "det", "fps": 37.5, "batch_mean": 1.8, "busy": 0.62, "streams": 2}]

    assert ApiClient(server.url).get("/api/devices/cam-1/streams")[0] == 401  # a role is needed
    status, answer = viewer.get("/api/devices/cam-9/streams")
    assert status == 404 and "cam-9" in answer["detail"]


def test_an_entry_that_does_not_follow_the_schema_is_named_not_guessed(api: tuple[ApiServer, Store]) -> None:
    server, store = api
    now = time.time()
    store.device_birth("cam-1", 1, CAPS_CPU, now - 20)
    data = two_stream_telemetry("cam-1", 1, now)
    data["workloads"]["yard"]["source_state"] = "sleeping"  # stored by an older scheduler, say
    data["models"]["old"] = {"fps": 3.0}
    store.record_telemetry("cam-1", 1, 1, data, now)
    status, answer = ApiClient(server.url, make_token(store, "viewer")).get("/api/devices/cam-1/streams")
    assert status == 200, answer
    assert [s["workload"] for s in answer["streams"]] == ["gate"]
    assert [m["model"] for m in answer["models"]] == ["det"]
    assert len(answer["skipped"]) == 2
    assert answer["skipped"][0].startswith("workload 'yard': source_state: ")
    assert answer["skipped"][1].startswith("model 'old': ")
