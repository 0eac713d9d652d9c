"""Service-owned desired config versions (issue 12, item 3): whatever version a device reports, on both
stores, nothing raises, the store's allocator never moves because of a device, and GET /api/devices
stays 200. Reports travel the ingestion path (admission, then the report handler's store work)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton_edge.fleet.mqtt import IncomingMessage
from lepton_edge.fleet.protocol import (
    MAX_CONFIG_VERSION,
    DesiredConfig,
    ProtocolError,
    ReportedConfig,
    TopicKind,
    config_reported_topic,
    decode,
)
from lepton_edge.scheduler.api import serve
from lepton_edge.scheduler.reports import ConfigReports
from lepton_edge.scheduler.service import SchedulerService
from lepton_edge.scheduler.stores import open_store
from tests.support.api_client import ApiClient
from tests.support.scheduler import fast_config

EDGES: list[Any] = [
    0, -1, 1, 2, 3, 4, 2**31, 2**53 - 1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), 2**64,
    1.0, 3.0, 0.5, -0.0, float(2**63), 1e300, float("inf"), float("nan"), True, False, None, "3", [3],
]
VERSIONS = st.one_of(st.sampled_from(EDGES), st.integers(), st.floats())
ISSUED = 3


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fleet.db"
    return request.getfixturevalue("postgres_schema_url")


def report_payload(device_id: str, version: Any, outcome: str) -> bytes:
    applied = outcome == "applied"
    return json.dumps({
        "device_id": device_id, "version": version, "outcome": outcome, "errors": [] if applied else ["no"],
        "timestamp": time.time(), "active_version": version if applied else 0,
    }).encode()


def test_reported_versions_never_move_the_allocator(backend: str) -> None:
    store = open_store(backend)
    service = SchedulerService(fast_config(1, "sqlite://:memory:"), store=store)  # not started: no MQTT
    reports = ConfigReports(
        store, views=service.views, admission=service.admission, control=service.control,
        planner=service.planner, counts=service.counts, records_presence=lambda: True,
    )
    device = "cam-1"
    assert [store.next_desired_version(device) for _ in range(ISSUED)] == [1, 2, 3]

    def ingest(version: Any, outcome: str) -> None:
        message = IncomingMessage(config_reported_topic(device), report_payload(device, version, outcome), 1, True)
        admitted = service.admission.admit(TopicKind.CONFIG_REPORTED, message)
        if admitted is not None:
            reports.apply(*admitted)

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(version=VERSIONS, outcome=st.sampled_from(["applied", "rejected"]))
    def check(version: Any, outcome: str) -> None:
        before = store.get_device(device)
        assert before is not None
        rejected = dict(service.admission.rejected)
        ingest(version, outcome)  # never raises
        after = store.get_device(device)
        assert after is not None
        assert after.desired_version == ISSUED  # only the store's allocation moves it
        issued = type(version) is int and 1 <= version <= ISSUED
        assert after.reported_version in (before.reported_version, version if issued else None)
        if not issued:
            assert after.reported_version == before.reported_version
            grew = {k for k, n in service.admission.rejected.items() if n > rejected.get(k, 0)}
            # refused at parse time (out of range, float, bool, ...) or as a version never issued
            assert grew & {"malformed", "unissued_version"}, (version, grew)
            if type(version) is int and 1 <= version <= MAX_CONFIG_VERSION:
                assert "unissued_version" in grew

    try:
        check()
        for version in (2**63 - 1, 2**53, 2**53 - 1, 4, 0, -1):
            ingest(version, "applied")
        assert service.admission.rejected["unissued_version"] >= 2  # 2**53 - 1 and 4 were never issued
        assert store.next_desired_version(device) == ISSUED + 1  # the allocator works and did not jump
        with serve(service, "127.0.0.1", 0) as server:
            status, listed = ApiClient.admin(server, store, "viewer").get("/api/devices")
            assert status == 200
        assert device in json.dumps(listed)
    finally:
        store.close()


@settings(max_examples=100, deadline=None, database=None)
@given(version=VERSIONS)
def test_the_protocol_refuses_out_of_range_versions_at_parse_time(version: Any) -> None:
    valid = type(version) is int and 1 <= version <= MAX_CONFIG_VERSION
    desired = json.dumps({"version": version, "config": {}, "issued_at": 1.0, "issued_by": "s"}).encode()
    for kind, payload in ((TopicKind.CONFIG_DESIRED, desired), (TopicKind.CONFIG_REPORTED,
                                                                 report_payload("cam-1", version, "applied"))):
        try:
            decoded = decode(kind, payload, "t")
        except ProtocolError as e:
            assert not valid, e
            assert "version" in str(e) or "not valid JSON" in str(e)  # inf and nan are not JSON at all
        else:
            assert valid and isinstance(decoded, DesiredConfig | ReportedConfig) and decoded.version == version
