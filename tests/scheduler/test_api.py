"""The scheduler's HTTP API over real HTTP (``serve`` on a free port), backed by the real fleet store."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.core.errors import ConfigError
from lepton_edge.fleet import protocol
from lepton_edge.scheduler.api import STATIC_DIR, ApiServer, serve
from lepton_edge.scheduler.models import Assignment, Workload
from lepton_edge.scheduler.store import Store
from lepton_edge.scheduler.stores import open_store
from tests.support.api_client import ApiClient, make_token
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------------------- test support


class StoreService:
    """The part of ``SchedulerService`` the API calls, over a real store: writes go to the store and
    every re-plan request is recorded, so tests can check the API asked for one."""

    def __init__(self, store: Store, *, is_leader: bool = True) -> None:
        self.store = store
        self.is_leader = is_leader
        self.replans: list[str] = []

    def add_workload(self, workload: Workload) -> Workload:
        stored = self.store.add_workload(workload)
        self.replan(f"workload {workload.workload_id} added")
        return stored

    def remove_workload(self, workload_id: str) -> bool:
        removed = self.store.delete_workload(workload_id)
        if removed:
            self.replan(f"workload {workload_id} removed")
        return removed

    def replan(self, reason: str) -> None:
        self.replans.append(reason)

    def stats(self) -> dict[str, Any]:
        return {"replans_requested": len(self.replans), "backlog": 0}


Http = ApiClient


CAPS_CUDA = {
    "accelerator": "cuda",
    "runtimes": {"onnxruntime": "1.17.1", "tensorrt": "8.6.2"},
    "cpu_count": 6,
    "memory_bytes": 8 << 30,
    "sources": ["cam0"],
    "artifacts": ["yolov8n"],
    "group": "gate",
}
CAPS_CPU = {**CAPS_CUDA, "accelerator": "cpu", "runtimes": {"onnxruntime": "1.17.1"}, "group": "lobby"}


def telemetry(
    device_id: str, session_id: int, seq: int, ts: float, *, fps: float, p50: float, temp: float, model: str
) -> dict[str, Any]:
    """A telemetry payload exactly as a device sends it (validated by the protocol schema)."""

    def pct(p: float) -> dict[str, float]:
        return {"p50": p, "p90": p * 1.3, "p99": p * 1.8, "max": p * 2.5}

    return protocol.Telemetry(
        device_id=device_id,
        session_id=session_id,
        seq=seq,
        timestamp=ts,
        interval_s=5.0,
        fps=fps,
        frames=seq * 150,
        drops={"stale": seq} if seq % 3 == 0 else {},
        latency_ms={"infer": pct(p50 * 0.6), "e2e": pct(p50)},
        frame_age_ms=pct(p50 / 4),
        sources={"cam0": "running"},
        artifact_id=model,
        cpu_percent=35.0,
        memory={"used_bytes": 2 << 30, "total_bytes": 8 << 30},
        disk={"used_bytes": 10 << 30, "total_bytes": 64 << 30},
        temperatures_c={"soc": temp, "gpu": temp - 3},
        gpu_percent=50.0,
        config_version=1,
        outbox={"depth": 0, "bytes": 0, "dropped": {}},
    ).model_dump(mode="json")


def fill_fleet(store: Store, now: float, *, points: int = 40) -> None:
    """Three devices with telemetry history (one dead, one hot), four workloads, three assignments, events."""
    fleet = [
        ("jetson-01", CAPS_CUDA, 30.0, 18.0, 55.0),
        ("jetson-02", CAPS_CUDA, 24.0, 25.0, 88.0),
        ("nuc-01", CAPS_CPU, 11.0, 60.0, 47.0),
    ]
    for i, (device_id, caps, fps, p50, temp) in enumerate(fleet):
        store.device_birth(device_id, 2, caps, now - points * 5 - 10)
        for k in range(points):
            ts = now - (points - k) * 5
            wobble = 1 + 0.05 * ((k + i) % 5 - 2)
            payload = telemetry(
                device_id, 2, k + 1, ts, fps=fps * wobble, p50=p50 * wobble, temp=temp, model="yolov8n"
            )
            store.record_telemetry(device_id, 2, k + 1, payload, ts)
    store.device_death("nuc-01", 2, now - 3, "connection_lost")
    for w in (
        Workload(
            workload_id="gate-east",
            source_uri="rtsp://10.0.0.5/1",
            model="yolov8n",
            required_fps=25,
            group="gate",
        ),
        Workload(workload_id="gate-west", source_uri="rtsp://10.0.0.6/1", model="yolov8n", required_fps=20),
        Workload(workload_id="lobby", source_uri="rtsp://10.0.1.9/main", model="yolov8n", required_fps=10),
        Workload(
            workload_id="parking", source_uri="csi://0", model="yolov8s", required_fps=15, runtime="tensorrt"
        ),
    ):
        store.add_workload(w)
    store.apply_plan(
        [
            Assignment("gate-east", "jetson-01", "applied", 3, now - 100),
            Assignment("gate-west", "jetson-02", "pending", 4, now - 10),
            Assignment("lobby", "nuc-01", "failed", 2, now - 50, "rejected: source unreachable"),
        ],
        [],
    )
    store.add_event("device.online", "jetson-01 came online (session 2)", device_id="jetson-01", ts=now - 200)
    store.add_event(
        "device.offline",
        "nuc-01 went offline: connection_lost",
        device_id="nuc-01",
        severity="warning",
        ts=now - 3,
    )
    store.add_event(
        "config.rejected",
        "nuc-01 rejected config v2: source unreachable",
        device_id="nuc-01",
        workload_id="lobby",
        severity="error",
        ts=now - 2,
    )


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/fleet.db")
    yield s
    s.close()


@pytest.fixture
def service(store: Store) -> StoreService:
    return StoreService(store)


@pytest.fixture
def server(service: StoreService) -> Iterator[ApiServer]:
    with serve(service, "127.0.0.1", 0) as running:
        yield running


@pytest.fixture
def http(server: ApiServer, store: Store) -> Http:
    return ApiClient.admin(server, store)


WORKLOAD = {
    "workload_id": "gate-3.people",
    "source_uri": "rtsp://10.1.2.3/main",
    "model": "yolov8n",
    "required_fps": 15,
}


# ------------------------------------------------------------------------------------------------ tests


def test_openapi_schema_lists_every_endpoint_and_cdn_docs_are_off(http: Http) -> None:
    status, schema = http.get("/openapi.json")
    assert status == 200
    paths = schema["paths"]
    expected = {
        "/api/devices": {"get"},
        "/api/devices/{device_id}": {"get"},
        "/api/devices/{device_id}/telemetry": {"get"},
        "/api/devices/{device_id}/streams": {"get"},
        "/api/devices/{device_id}/group": {"put"},
        "/api/devices/{device_id}/clips": {"get"},
        "/api/devices/{device_id}/clips/{clip_id}/fetch": {"post"},
        "/api/clips": {"get"},
        "/api/clips/{device_id}/{clip_id}": {"get"},
        "/api/workloads": {"get", "post"},
        "/api/workloads/{workload_id}": {"get", "put", "delete"},
        "/api/assignments": {"get"},
        "/api/events": {"get"},
        "/api/stats": {"get"},
        "/api/whoami": {"get"},
        "/api/tokens": {"get", "post"},
        "/api/tokens/{token_id}": {"delete"},
        "/api/audit": {"get"},
        "/healthz": {"get"},
    }
    assert {p for p in paths if not p.startswith("/api/rollouts")} == set(expected)  # rollouts: test_rollouts
    for path, methods in expected.items():
        assert set(paths[path]) == methods, path
    workload_schema = schema["components"]["schemas"]["Workload"]
    assert workload_schema["properties"]["required_fps"]["exclusiveMinimum"] == 0
    assert workload_schema["additionalProperties"] is False
    # the Swagger/ReDoc pages would load scripts from a CDN, so they are not served
    assert http.get("/docs")[0] == 404
    assert http.get("/redoc")[0] == 404


def test_workload_crud(http: Http, service: StoreService) -> None:
    assert http.get("/api/workloads") == (200, [])

    config = {"postprocess": {"type": "detect", "conf_threshold": 0.4}}
    status, created = http.call("POST", "/api/workloads", {**WORKLOAD, "config": config})
    assert status == 201
    assert created["workload"]["workload_id"] == "gate-3.people"
    assert created["workload"]["config"] == config
    assert created["workload"]["created_at"] > 0
    assert created["device_id"] is None and created["status"] is None
    assert service.replans == ["workload gate-3.people added"]

    status, got = http.get("/api/workloads/gate-3.people")
    assert status == 200 and got == created
    status, listed = http.get("/api/workloads")
    assert status == 200 and [w["workload"]["workload_id"] for w in listed] == ["gate-3.people"]

    # PUT without the id (it is the path's); created_at is kept; a re-plan is requested
    update = {k: v for k, v in WORKLOAD.items() if k != "workload_id"}
    status, updated = http.call(
        "PUT", "/api/workloads/gate-3.people", {**update, "required_fps": 22.5, "group": "gate"}
    )
    assert status == 200
    assert updated["workload"]["required_fps"] == 22.5 and updated["workload"]["group"] == "gate"
    assert updated["workload"]["created_at"] == created["workload"]["created_at"]
    assert service.store.get_workload("gate-3.people").required_fps == 22.5  # type: ignore[union-attr]
    assert service.replans[-1] == "workload gate-3.people updated"
    # PUT with the same id in the body is fine too (GET, edit, PUT back)
    status, _ = http.call("PUT", "/api/workloads/gate-3.people", {**updated["workload"], "required_fps": 30})
    assert status == 200

    # placed: the workload shows its device and status
    service.store.device_birth("jetson-01", 1, CAPS_CUDA, time.time())
    service.store.apply_plan([Assignment("gate-3.people", "jetson-01", "pending", 1, time.time())], [])
    status, got = http.get("/api/workloads/gate-3.people")
    assert (got["device_id"], got["status"]) == ("jetson-01", "pending")

    assert http.call("DELETE", "/api/workloads/gate-3.people") == (204, None)
    assert service.replans[-1] == "workload gate-3.people removed"
    assert service.store.get_workload("gate-3.people") is None
    assert http.get("/api/workloads") == (200, [])
    assert http.get("/api/assignments") == (200, [])


def test_duplicate_workload_is_409_and_keeps_the_first(http: Http, service: StoreService) -> None:
    assert http.call("POST", "/api/workloads", WORKLOAD)[0] == 201
    status, body = http.call("POST", "/api/workloads", {**WORKLOAD, "required_fps": 99})
    assert status == 409
    assert (
        "'gate-3.people' already exists" in body["detail"]
        and "PUT /api/workloads/gate-3.people" in body["detail"]
    )
    assert service.store.get_workload("gate-3.people").required_fps == 15  # type: ignore[union-attr]
    assert service.replans == ["workload gate-3.people added"]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"required_fps": 0}, "required_fps", "greater than 0"),
        ({"required_fps": -5}, "required_fps", "greater than 0"),
        ({"required_fps": "fast"}, "required_fps", "valid number"),
        ({"workload_id": "Gate 3"}, "workload_id", "must be a slug"),
        ({"workload_id": ""}, "workload_id", "must be a slug"),
        ({"pinned_device": "cams/1"}, "pinned_device", "must be a device id"),
        ({"source_uri": None}, "source_uri", "valid string"),
        ({"source_uri": ""}, "source_uri", "at least 1 character"),
        ({"sorce_uri": "rtsp://typo"}, "sorce_uri", "unknown field"),
        ({"artifact": {"url": "https://x/model.onnx"}}, "artifact", "sha256"),
    ],
)
def test_invalid_workload_is_422_naming_the_field(
    http: Http, service: StoreService, change: dict[str, Any], field: str, message: str
) -> None:
    status, error = http.call("POST", "/api/workloads", {**WORKLOAD, **change})
    assert status == 422, error
    assert error["detail"].startswith("POST /api/workloads: invalid request: ")
    problems = {p["field"]: p["message"] for p in error["problems"]}
    assert any(f == field or f.startswith(field + ".") for f in problems), problems
    assert message in error["detail"], error["detail"]
    assert service.store.list_workloads() == [] and service.replans == []


def test_missing_source_and_malformed_json_are_422(http: Http) -> None:
    status, error = http.call(
        "POST", "/api/workloads", {k: v for k, v in WORKLOAD.items() if k != "source_uri"}
    )
    assert status == 422
    assert error["problems"] == [
        {"location": "body", "field": "source_uri", "message": "required field is missing"}
    ]

    status, error = http.call("POST", "/api/workloads", raw=b'{"workload_id": "x",')
    assert status == 422
    assert "not valid JSON" in error["detail"]


def test_put_validates_like_post_and_refuses_renames(http: Http, service: StoreService) -> None:
    assert http.call("POST", "/api/workloads", WORKLOAD)[0] == 201
    status, error = http.call("PUT", "/api/workloads/gate-3.people", {**WORKLOAD, "workload_id": "gate-4"})
    assert status == 422
    assert "must equal the id in the path ('gate-3.people')" in error["detail"]
    status, error = http.call(
        "PUT", "/api/workloads/gate-3.people", {**WORKLOAD, "required_fps": 0, "colour": "red"}
    )
    assert status == 422
    assert {p["field"] for p in error["problems"]} == {"required_fps", "colour"}
    assert service.store.get_workload("gate-3.people").required_fps == 15  # type: ignore[union-attr]


def test_unknown_ids_are_404(http: Http) -> None:
    for method, path, body in [
        ("GET", "/api/devices/cam-404", None),
        ("GET", "/api/devices/cam-404/telemetry", None),
        ("PUT", "/api/devices/cam-404/group", {"group": "gate"}),
        ("GET", "/api/workloads/nope", None),
        ("PUT", "/api/workloads/nope", WORKLOAD | {"workload_id": "nope"}),
        ("DELETE", "/api/workloads/nope", None),
    ]:
        status, error = http.call(method, path, body)
        assert status == 404, (method, path, error)
        assert "not found" in error["detail"] and (
            "cam-404" in error["detail"] or "'nope'" in error["detail"]
        )
    status, error = http.get("/api/device")
    assert status == 404 and error["detail"] == "GET /api/device: no such endpoint; /openapi.json lists them"
    status, error = http.call("DELETE", "/api/devices")
    assert status == 405 and "no such endpoint" in error["detail"]
    # an id that cannot be a device id is a 422, not a lookup
    status, error = http.get("/api/devices/bad%20id")
    assert status == 422 and "must be a device id" in error["detail"]


def test_devices_with_latest_telemetry_and_history(http: Http, service: StoreService) -> None:
    now = time.time()
    fill_fleet(service.store, now, points=40)

    status, devices = http.get("/api/devices")
    assert status == 200
    by_id = {d["device_id"]: d for d in devices}
    assert list(by_id) == ["jetson-01", "jetson-02", "nuc-01"]
    j1, j2, nuc = by_id["jetson-01"], by_id["jetson-02"], by_id["nuc-01"]
    assert (j1["online"], j2["online"], nuc["online"]) == (True, True, False)
    assert nuc["offline_reason"] == "connection_lost"
    last = service.store.telemetry_history("jetson-01", limit=1)[0]["data"]
    assert j1["fps"] == pytest.approx(last["fps"])
    assert j1["latency_p50_ms"] == pytest.approx(last["latency_ms"]["e2e"]["p50"])
    assert j1["latency_p99_ms"] == pytest.approx(last["latency_ms"]["e2e"]["p99"])
    assert j1["model"] == "yolov8n" and j1["temperature_c"] == 55.0 and j1["group"] == "gate"
    assert j1["workloads"] == ["gate-east"] and j1["required_fps"] == 25
    assert j2["throttled"] is True and j2["temperature_c"] == 88.0
    assert "telemetry" not in j1  # the list stays small; the full payload is in GET /api/devices/{id}

    status, detail = http.get("/api/devices/jetson-01")
    assert status == 200 and detail["telemetry"] == last and detail["accelerator"] == "cuda"

    status, rows = http.get("/api/devices/jetson-01/telemetry")
    assert status == 200 and len(rows) == 40
    assert [r["seq"] for r in rows] == list(range(1, 41))
    assert rows[-1]["data"] == last and rows[-1]["fps"] == pytest.approx(last["fps"])
    status, rows = http.get(f"/api/devices/jetson-01/telemetry?since={rows[29]['ts']}&summary=true")
    assert [r["seq"] for r in rows] == list(range(31, 41))
    assert all(r["data"] is None and r["latency_p99_ms"] > r["latency_p50_ms"] > 0 for r in rows)
    assert rows[0]["temperature_c"] == 55.0
    status, rows = http.get("/api/devices/jetson-01/telemetry?limit=5")
    assert [r["seq"] for r in rows] == [36, 37, 38, 39, 40]
    status, error = http.get("/api/devices/jetson-01/telemetry?limit=0")
    assert status == 422 and error["problems"][0] == {
        "location": "query",
        "field": "limit",
        "message": "Input should be greater than or equal to 1 (got '0')",
    }


def test_set_device_group_replans_and_is_logged(http: Http, service: StoreService) -> None:
    service.store.device_birth("jetson-01", 1, CAPS_CUDA, time.time())
    status, device = http.call("PUT", "/api/devices/jetson-01/group", {"group": "parking"})
    assert status == 200 and device["group"] == "parking"
    assert service.store.get_device("jetson-01").group == "parking"  # type: ignore[union-attr]
    assert service.replans == ["group of device jetson-01 changed"]
    events = service.store.list_events()
    assert events[-1].kind == "device.group" and events[-1].device_id == "jetson-01"

    status, device = http.call("PUT", "/api/devices/jetson-01/group", {"group": None})
    assert status == 200 and device["group"] == "gate"  # back to the group the device announces

    for body in ({"group": ""}, {}, {"group": "x", "colour": "red"}):
        status, error = http.call("PUT", "/api/devices/jetson-01/group", body)
        assert status == 422, body
        assert "group" in error["detail"] or "colour" in error["detail"]


def test_events_poll_with_since_id_and_limit(http: Http, service: StoreService) -> None:
    ids = [
        service.store.add_event("test", f"event {i}", severity="info", details={"i": i}).id for i in range(6)
    ]
    status, events = http.get("/api/events")
    assert status == 200 and [e["id"] for e in events] == ids
    assert events[2]["message"] == "event 2" and events[2]["details"] == {"i": 2}
    assert [e["id"] for e in http.get(f"/api/events?since_id={ids[3]}")[1]] == ids[4:]
    assert [e["id"] for e in http.get("/api/events?limit=2")[1]] == ids[-2:]
    assert [e["id"] for e in http.get(f"/api/events?since_id={ids[0]}&limit=2")[1]] == ids[1:3]
    assert http.get(f"/api/events?since_id={ids[-1]}")[1] == []
    assert http.get("/api/events?limit=-1")[0] == 422


def test_assignments_stats_and_health(http: Http, service: StoreService) -> None:
    now = time.time()
    fill_fleet(service.store, now, points=3)
    status, assignments = http.get("/api/assignments")
    assert status == 200
    assert [(a["workload_id"], a["device_id"], a["status"]) for a in assignments] == [
        ("gate-east", "jetson-01", "applied"),
        ("gate-west", "jetson-02", "pending"),
        ("lobby", "nuc-01", "failed"),
    ]
    assert assignments[2]["reason"] == "rejected: source unreachable"

    status, stats = http.get("/api/stats")
    assert status == 200
    expected = {
        "devices": 3,
        "online": 2,
        "throttled": 1,
        "workloads": 4,
        "assigned": 3,
        "unplaced": 1,
        "failed": 1,
    }
    assert {k: stats[k] for k in expected} == expected
    assert stats["is_leader"] is True and stats["service"] == {"replans_requested": 0, "backlog": 0}
    assert abs(stats["time"] - time.time()) < 60

    status, health = http.get("/healthz")
    assert status == 200 and health["status"] == "ok" and health["schema_version"] >= 1


def test_store_outage_is_503_with_the_reason_and_the_server_survives(
    http: Http, service: StoreService, server: ApiServer
) -> None:
    service.store.device_birth("jetson-01", 1, CAPS_CUDA, time.time())
    service.store.close()  # the database is gone from under the running API
    for method, path, body in [
        ("GET", "/api/devices", None),
        ("GET", "/api/devices/jetson-01", None),
        ("GET", "/api/devices/jetson-01/telemetry", None),
        ("PUT", "/api/devices/jetson-01/group", {"group": "x"}),
        ("GET", "/api/workloads", None),
        ("POST", "/api/workloads", WORKLOAD),
        ("GET", "/api/workloads/x", None),
        ("PUT", "/api/workloads/x", {k: v for k, v in WORKLOAD.items() if k != "workload_id"}),
        ("DELETE", "/api/workloads/x", None),
        ("GET", "/api/assignments", None),
        ("GET", "/api/events", None),
        ("GET", "/api/stats", None),
    ]:
        status, error = http.call(method, path, body)
        assert status == 503, (method, path, error)
        assert error["detail"].startswith("the fleet store cannot answer: ") and "closed" in error["detail"]
    status, health = http.get("/healthz")
    assert status == 503 and health["status"] == "unavailable" and "closed" in health["reason"]
    assert server.running
    assert http.get("/")[0] == 200  # the dashboard still loads and shows the error


def test_postgres_outage_is_503_and_recovers(
    postgres_server: PostgresServer,
    postgres_schema_url: str,
) -> None:
    store = open_store(postgres_schema_url, connect_timeout=2)
    try:
        store.device_birth("jetson-01", 1, CAPS_CUDA, time.time())
        with serve(StoreService(store), "127.0.0.1", 0) as server:
            http = Http(server.url, make_token(store))
            assert http.get("/healthz")[0] == 200
            postgres_server.stop()
            try:
                status, error = http.get("/api/devices")
                assert status == 503
                assert "fleet store postgresql://" in error["detail"]
                status, health = http.get("/healthz")
                assert status == 503 and "fleet store" in health["reason"]
            finally:
                postgres_server.start()
            deadline = time.monotonic() + 20
            while http.get("/healthz")[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            status, devices = http.get("/api/devices")
            assert status == 200 and [d["device_id"] for d in devices] == ["jetson-01"]
    finally:
        store.close()


def test_serve_reports_a_taken_port_clearly(service: StoreService, server: ApiServer) -> None:
    with pytest.raises(
        ConfigError, match=rf"cannot listen on 127\.0\.0\.1:{server.port}: .*pick another api\.port"
    ):
        serve(service, "127.0.0.1", server.port)
    assert server.running


def test_stop_closes_the_port(service: StoreService) -> None:
    running = serve(service, "127.0.0.1", 0)
    assert Http(running.url).get("/healthz")[0] == 200
    running.stop()
    assert not running.running
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(running.url + "/healthz", timeout=5)


def test_dashboard_is_served_and_needs_no_network(http: Http) -> None:
    status, page = http.get("/")
    assert status == 200 and "<title>lepton-edge fleet</title>" in page
    for name in ("app.js", "style.css"):
        status, text = http.get(f"/static/{name}")
        assert status == 200 and len(text) > 500
    for path in sorted(STATIC_DIR.iterdir()):
        text = path.read_text(encoding="utf-8")
        # every resource is local: no absolute URL outside this server (the SVG namespace is not a request)
        urls = set(re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s\"')]*", text)) - {
            "http://www.w3.org/2000/svg"
        }
        assert urls == set(), (path.name, urls)
        assert "@import" not in text and "cdn" not in text.lower()
