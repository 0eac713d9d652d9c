"""What the API refuses before accepting anything (issue #12): workload configs a device could not run
(422 with the problems), bodies over the limit (413, unread) and unknown ``Host`` headers (400). The API runs
with ``insecure_local`` here: tokens are tested in test_auth.py."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.fleet.protocol import MAX_PAYLOAD_BYTES
from lepton_edge.scheduler.api import ApiServer, serve
from lepton_edge.scheduler.api.limits import BodyLimitMiddleware
from lepton_edge.scheduler.models import Workload
from lepton_edge.scheduler.service import SchedulerService
from lepton_edge.scheduler.simulator import FleetSimulator
from lepton_edge.scheduler.store import Store
from lepton_edge.scheduler.stores import open_store
from tests.support.scheduler import fast_config, wait_until, workload

pytestmark = pytest.mark.integration

WORKLOAD = {"workload_id": "gate-3", "source_uri": "rtsp://10.1.2.3/main", "model": "det.onnx", "required_fps": 5}


class _Service:
    """The part of ``SchedulerService`` the workload routes call, over a real store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.is_leader = True
        self.replans: list[str] = []

    def add_workload(self, w: Workload) -> Workload:
        stored = self.store.add_workload(w)
        self.replan(f"workload {w.workload_id} added")
        return stored

    def replan(self, reason: str) -> None:
        self.replans.append(reason)


def _call(
    server: ApiServer, method: str, path: str, body: Any = None, *, host: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if host is not None:
            all_headers["Host"] = host
        conn.request(method, path, body=data, headers=all_headers)
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(payload) if payload else None
    except ValueError:
        return response.status, payload.decode()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[_Service]:
    store = open_store(f"sqlite:///{tmp_path}/fleet.db")
    yield _Service(store)
    store.close()


@pytest.fixture
def server(service: _Service) -> Iterator[ApiServer]:
    with serve(service, "127.0.0.1", 0, insecure_local=True) as running:
        yield running


# ------------------------------------------------------------------------------------- workload config


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"threshold": 0.4}, "config.threshold", "unknown field in the device config"),
        ({"postprocess": {"type": "detect", "conf_threshold": "high"}}, "config.postprocess.detect.conf_threshold",
         "valid number"),
        ({"pipeline": {"stats_interval_s": -1}}, "config.pipeline.stats_interval_s", "greater than 0"),
        ({"idle": True}, "config", "idle: true runs no pipeline"),
        ({"sinks": [{"type": "console", "pad": "x" * (MAX_PAYLOAD_BYTES + 1)}]}, "config",
         f"over the protocol's {MAX_PAYLOAD_BYTES}-byte payload limit"),
    ],
)  # fmt: skip
def test_a_config_a_device_would_refuse_is_422_with_the_problems(
    server: ApiServer, service: _Service, config: dict[str, Any], field: str, message: str
) -> None:
    status, error = _call(server, "POST", "/api/workloads", {**WORKLOAD, "config": config})
    assert status == 422, error
    problems = {p["field"]: p["message"] for p in error["problems"]}
    assert field in problems and message in problems[field], problems
    assert service.store.list_workloads() == [] and service.replans == []


def test_put_checks_the_config_like_post(server: ApiServer, service: _Service) -> None:
    assert _call(server, "POST", "/api/workloads", WORKLOAD)[0] == 201
    update = {**WORKLOAD, "config": {"sinks": [{"type": "console", "pad": "x" * MAX_PAYLOAD_BYTES}]}}
    status, error = _call(server, "PUT", "/api/workloads/gate-3", update)
    assert status == 422 and error["problems"][0]["field"] == "config", error
    status, error = _call(server, "PUT", "/api/workloads/gate-3", {**WORKLOAD, "config": {"colour": "red"}})
    assert status == 422 and error["problems"][0]["field"] == "config.colour", error
    assert service.store.get_workload("gate-3").config == {}  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------- body and Host


def test_a_30_mb_body_is_413_before_it_is_sent(server: ApiServer, service: _Service) -> None:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.putrequest("POST", "/api/workloads")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(30 << 20))
        conn.endheaders()  # not one byte of the body: the answer must not wait for it
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 413
    assert "1048576-byte limit" in body["detail"] and "api.max_body_bytes" in body["detail"]
    assert service.store.list_workloads() == []
    # the server still answers
    assert _call(server, "POST", "/api/workloads", WORKLOAD)[0] == 201


def test_a_body_streamed_without_length_is_cut_at_the_limit() -> None:
    read: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            read.append(len(message["body"]))
            if not message.get("more_body"):
                return

    chunks = [{"type": "http.request", "body": b"x" * 65536, "more_body": True} for _ in range(480)]  # 30 MiB

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("the middleware must not answer by itself here")

    limited = BodyLimitMiddleware(app, max_bytes=1 << 20)
    scope = {"type": "http", "headers": [(b"transfer-encoding", b"chunked")]}
    with pytest.raises(Exception) as caught:
        asyncio.run(limited(scope, receive, send))
    assert getattr(caught.value, "status_code", None) == 413
    assert sum(read) <= 1 << 20 and len(chunks) == 480 - 17  # it stopped at the 17th 64 KiB chunk


def test_a_small_body_passes_and_a_chunked_one_is_counted(server: ApiServer) -> None:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        body = json.dumps(WORKLOAD).encode()
        conn.request(
            "POST", "/api/workloads", body=iter([body]), headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )  # fmt: skip
        assert conn.getresponse().status == 201
    finally:
        conn.close()


def test_an_unknown_host_is_400(server: ApiServer) -> None:
    assert _call(server, "GET", "/api/workloads", host="evil.example")[0] == 400
    assert _call(server, "GET", "/api/workloads", host=f"evil.example:{server.port}")[0] == 400
    for host in ("127.0.0.1", f"127.0.0.1:{server.port}", f"localhost:{server.port}"):
        assert _call(server, "GET", "/api/workloads", host=host)[0] == 200, host


def test_allowed_hosts_from_the_scheduler_config(service: _Service) -> None:
    config = fast_config(1, "sqlite:///x.db", api={"allowed_hosts": ["api.example"]})
    assert config.api.trusted_hosts == ["api.example"]
    assert fast_config(1, "sqlite:///x.db", api={"host": "10.0.0.5"}).api.trusted_hosts == [
        "10.0.0.5", "localhost", "127.0.0.1"
    ]  # fmt: skip
    assert fast_config(1, "sqlite:///x.db").api.max_body_bytes == 1 << 20
    with serve(service, "127.0.0.1", 0, allowed_hosts=config.api.trusted_hosts, insecure_local=True) as running:
        assert _call(running, "GET", "/api/workloads", host="api.example")[0] == 200
        assert _call(running, "GET", "/api/workloads", host="127.0.0.1")[0] == 400


# ------------------------------------------------------------------------------------- end to end


def test_a_valid_workload_is_201_and_placed_and_a_stored_oversized_one_is_logged(
    fresh_broker: Any, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    service = SchedulerService(fast_config(fresh_broker.port, f"sqlite:///{tmp_path}/fleet.db")).start()
    sim = FleetSimulator("127.0.0.1", fresh_broker.port, 2, rate_hz=5.0, prefix=unique, mode="device")
    try:
        assert service.wait_connected(5)
        sim.start()
        wait_until(lambda: all((d := service.store.get_device(i)) and d.online for i in sim.devices), what="online")
        with serve(service, "127.0.0.1", 0, insecure_local=True) as server:
            body = workload("w1", fps=5).model_dump(exclude={"created_at"})
            status, created = _call(server, "POST", "/api/workloads", body)
            assert status == 201, created
            wait_until(
                lambda: any(a.workload_id == "w1" and a.status == "applied" for a in service.store.list_assignments()),
                what="w1 applied",
            )
        # a workload stored before the API checked it: logged and recorded, never a traceback
        big = workload("legacy", fps=1, config={"sinks": [{"type": "console", "pad": "x" * MAX_PAYLOAD_BYTES}]})
        service.store.add_workload(big)
        service.replan("legacy added")
        wait_until(
            lambda: any(e.kind == "config.undeliverable" for e in service.store.list_events(limit=100)),
            what="the undeliverable event",
        )
        assert any("cannot be sent and is skipped" in r.getMessage() for r in caplog.records)
        assert not any(r.exc_info for r in caplog.records if r.name.startswith("lepton_edge.scheduler"))
        time.sleep(0.2)
        assert any(a.workload_id == "w1" and a.status == "applied" for a in service.store.list_assignments())
    finally:
        sim.stop()
        service.stop()
