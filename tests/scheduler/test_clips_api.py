"""The clip routes over real HTTP: roles, audit, a fetch from a device over real mosquitto, the fetched file."""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.scheduler.api import ApiServer, serve
from lepton_edge.scheduler.clips import ClipFetcher
from lepton_edge.scheduler.service import SchedulerService
from lepton_edge.scheduler.store import Store
from lepton_edge.scheduler.stores import open_store
from tests.device.test_clip_commands import write_clip
from tests.scheduler.test_api import StoreService
from tests.scheduler.test_clips import ClipDevice, make_fetcher
from tests.support.api_client import ApiClient, make_token
from tests.support.scheduler import fast_config, wait_until

pytestmark = pytest.mark.integration


class ClipService(StoreService):
    """The API's view of the service, with a clip fetcher."""

    def __init__(self, store: Store, clips: ClipFetcher | None) -> None:
        super().__init__(store)
        self.clips = clips


@pytest.fixture
def fleet(tmp_path: Path, mqtt_broker: Any, make_mqtt_client: Any, unique: str) -> Iterator[dict[str, Any]]:
    """A device with three clips on a real broker, a fetcher, and the API over a real SQLite store."""
    device_id = f"cam-{unique}"
    data = os.urandom(300_000)
    write_clip(tmp_path / "device-clips", "evt-1", data, end_wall=200.0)
    write_clip(tmp_path / "device-clips", "evt-0", b"older", end_wall=100.0)
    device = ClipDevice(make_mqtt_client, mqtt_broker.port, device_id, tmp_path / "device-clips").start()
    fetcher = make_fetcher(make_mqtt_client, mqtt_broker.port, tmp_path / "sched-clips", f"r-{unique}")
    with open_store(f"sqlite:///{tmp_path / 'fleet.db'}") as store:
        store.device_birth(device_id, 1, {"accelerator": "cpu"}, time.time())
        with serve(ClipService(store, fetcher), "127.0.0.1", 0) as server:
            yield {"server": server, "store": store, "device": device, "fetcher": fetcher, "data": data}
    fetcher.stop(2)
    device.stop()


def client(fleet: dict[str, Any], role: str | None) -> ApiClient:
    server: ApiServer = fleet["server"]
    return ApiClient(server.url, make_token(fleet["store"], role) if role else None)


def download(fleet: dict[str, Any], path: str, role: str = "viewer") -> tuple[int, str, bytes]:
    request = urllib.request.Request(fleet["server"].url + path)
    request.add_header("Authorization", f"Bearer {make_token(fleet['store'], role)}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read()


def test_every_clip_route_has_a_role(fleet: dict[str, Any]) -> None:
    device_id = fleet["device"].device_id
    routes = [
        ("GET", f"/api/devices/{device_id}/clips", "viewer"),
        ("POST", f"/api/devices/{device_id}/clips/evt-0/fetch", "operator"),
        ("GET", "/api/clips", "viewer"),
        ("GET", f"/api/clips/{device_id}/evt-0", "viewer"),
    ]
    rank = {"viewer": 0, "operator": 1, "admin": 2}
    callers = {role: client(fleet, role) for role in (None, "viewer", "operator", "admin")}
    for method, path, needed in routes:
        for role, caller in callers.items():
            status, answer = caller.call(method, path)
            if role is None:
                assert status == 401, (method, path, answer)
            elif rank[role] < rank[needed]:
                assert status == 403, (role, method, path, answer)
                assert f"it needs {needed!r}" in answer["detail"]
            else:
                assert status in (200, 202, 404), (role, method, path, answer)


def test_an_operator_fetches_a_clip_and_a_viewer_downloads_it(fleet: dict[str, Any]) -> None:
    device_id, data = fleet["device"].device_id, fleet["data"]
    viewer, operator = client(fleet, "viewer"), client(fleet, "operator")

    status, listed = viewer.get(f"/api/devices/{device_id}/clips")
    assert status == 200 and listed["source"] == "device", listed
    assert [c["id"] for c in listed["clips"]] == ["evt-1", "evt-0"] and listed["clips"][0]["bytes"] == len(data)

    status, _, _ = download(fleet, f"/api/clips/{device_id}/evt-1")
    assert status == 404  # not fetched yet
    status, job = viewer.call("POST", f"/api/devices/{device_id}/clips/evt-1/fetch")
    assert status == 403  # a viewer may not fetch
    status, job = operator.call("POST", f"/api/devices/{device_id}/clips/evt-1/fetch")
    assert status in (200, 202) and job["device_id"] == device_id and job["clip_id"] == "evt-1", job

    def complete() -> dict[str, Any] | None:
        jobs = {j["clip_id"]: j for j in viewer.get("/api/clips")[1]}
        return jobs["evt-1"] if jobs.get("evt-1", {}).get("state") == "complete" else None

    done = wait_until(complete, 30, "the fetch to complete")
    assert done["progress"] == 1.0 and done["fetched"] == done["size"] == len(data)
    assert done["sha256"] == hashlib.sha256(data).hexdigest() and done["requested_by"].startswith("token:")
    status, kind, body = download(fleet, f"/api/clips/{device_id}/evt-1")
    assert status == 200 and kind == "video/mp4" and body == data

    status, again = operator.call("POST", f"/api/devices/{device_id}/clips/evt-1/fetch")
    assert status == 200 and again["state"] == "complete"  # idempotent: nothing fetched again


def test_fetches_are_audited_refusals_included(fleet: dict[str, Any]) -> None:
    device_id = fleet["device"].device_id
    since = time.time() - 1
    assert client(fleet, "viewer").call("POST", f"/api/devices/{device_id}/clips/evt-0/fetch")[0] == 403
    assert client(fleet, "operator").call("POST", f"/api/devices/{device_id}/clips/evt-0/fetch")[0] in (200, 202)
    status, entries = client(fleet, "admin").get(f"/api/audit?since={since}")
    assert status == 200
    fetches = [e for e in entries if e["action"] == f"POST /api/devices/{device_id}/clips/evt-0/fetch"]
    assert [(e["role"], e["status"]) for e in fetches] == [("viewer", 403), ("operator", fetches[1]["status"])]
    assert fetches[1]["status"] in (200, 202)
    assert all(e["target"] == f"{device_id},evt-0" for e in fetches)
    assert "needs 'operator'" in fetches[0]["detail"]["reason"]
    assert fetches[1]["detail"]["clip"] == "evt-0" and "state" in fetches[1]["detail"]


def test_bad_ids_unknown_devices_and_a_silent_device(fleet: dict[str, Any]) -> None:
    device_id = fleet["device"].device_id
    operator = client(fleet, "operator")
    assert operator.call("POST", f"/api/devices/{device_id}/clips/.hidden/fetch")[0] == 422
    assert operator.call("POST", f"/api/devices/{device_id}/clips/evt.part/fetch")[0] == 422
    assert operator.call("POST", f"/api/devices/{device_id}/clips/a%2F..%2Fb/fetch")[0] in (404, 422)
    assert operator.call("POST", "/api/devices/ghost/clips/evt-0/fetch")[0] == 404
    assert operator.get("/api/devices/ghost/clips")[0] == 404
    fleet["device"].stop()
    status, listed = operator.get(f"/api/devices/{device_id}/clips")
    assert status == 200 and listed["source"] == "scheduler" and "no answer" in listed["error"]


def test_a_replica_without_a_fetcher_answers_503(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'fleet.db'}") as store:
        store.device_birth("cam-1", 1, {"accelerator": "cpu"}, time.time())
        with serve(ClipService(store, None), "127.0.0.1", 0) as server:
            status, answer = ApiClient(server.url, make_token(store, "viewer")).get("/api/clips")
    assert status == 503 and "does not fetch clips" in answer["detail"]


def test_a_scheduler_replica_fetches_beside_its_store_and_records_the_fetch(
    tmp_path: Path, mqtt_broker: Any, make_mqtt_client: Any, unique: str
) -> None:
    device_id = f"cam-{unique}"
    data = os.urandom(200_000)
    write_clip(tmp_path / "device-clips", "evt-9", data)
    device = ClipDevice(make_mqtt_client, mqtt_broker.port, device_id, tmp_path / "device-clips").start()
    config = fast_config(mqtt_broker.port, f"sqlite:///{tmp_path / 'fleet.db'}", replica_id=f"r-{unique}")
    try:
        with SchedulerService(config) as service, serve(service, "127.0.0.1", 0) as server:
            assert service.wait_connected(10) and service.mqtt.wait_subscribed(5)
            service.store.device_birth(device_id, 1, {"accelerator": "cpu"}, time.time())
            operator = ApiClient(server.url, make_token(service.store, "operator"))
            status, job = operator.call("POST", f"/api/devices/{device_id}/clips/evt-9/fetch")
            assert status in (200, 202), job

            def recorded() -> list[Any]:
                return operator.get(f"/api/events?device={device_id}&kind=clip.fetched")[1]

            (event,) = wait_until(recorded, 30, "the clip.fetched event")
            assert event["details"]["clip"] == "evt-9" and event["details"]["bytes"] == len(data)
            assert event["details"]["requested_by"].startswith("token:")
            assert (tmp_path / "clips" / device_id / "evt-9.mp4").read_bytes() == data  # beside the store
    finally:
        device.stop()
