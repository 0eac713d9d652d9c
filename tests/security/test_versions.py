"""Issue #12, item 3: versions are the service's. A device that reports versions the scheduler never issued
(2^63-1, 2^53, 0, negatives, floats, strings), over topics its ACL allows, is refused and counted on SQLite and
PostgreSQL while the API answers and plans place; a device refuses a desired version that is out of range or
too far ahead and still accepts the next normal one. Property tests cover the integer edge cases on both stores.
"""

from __future__ import annotations

import json
import queue
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton_edge.device.agent import DeviceAgent
from lepton_edge.device.controller import ApplyResult
from lepton_edge.device.remote_config import RemoteConfig
from lepton_edge.device.state import ConfigState, StateStore
from lepton_edge.fleet.mqtt import IncomingMessage
from lepton_edge.fleet.protocol import (
    FLEET_REBIRTH_TOPIC,
    MAX_CONFIG_VERSION,
    MAX_CONFIG_VERSION_STEP,
    DesiredConfig,
    ProtocolError,
    ReportedConfig,
    TopicKind,
    birth_topic,
    config_desired_topic,
    config_reported_topic,
    death_topic,
    decode,
    encode,
)
from lepton_edge.scheduler.api import serve
from lepton_edge.scheduler.auth import TokenManager
from lepton_edge.scheduler.reports import ConfigReports
from lepton_edge.scheduler.service import SchedulerService
from lepton_edge.scheduler.simulator import DeviceSpec, SimDevice
from lepton_edge.scheduler.store import Store
from lepton_edge.scheduler.stores import open_store
from tests.device.helpers import LIVE_SOURCE, Recorder, agent_config, wait_until
from tests.support.production_broker import SCHEDULER_PASSWORD, Client, ProductionBroker, agent_mqtt, client_tls, dev
from tests.support.scheduler import fast_config, workload

AREA = "versions"
EDGES: list[Any] = [
    0,
    -1,
    1,
    2,
    3,
    4,
    2**31,
    2**53 - 1,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    2**64,
    1.0,
    3.0,
    0.5,
    -0.0,
    float(2**63),
    1e300,
    float("inf"),
    float("nan"),
    True,
    False,
    None,
    "3",
    [3],
]
VERSIONS = st.one_of(st.sampled_from(EDGES), st.integers(), st.floats())
ISSUED = 3
FORGED: list[Any] = [2**63 - 1, 2**63, -(2**63), 2**53, 2**53 - 1, 10**6, 0, -1, 1.5, 3.0, float(2**63), "7", None]
"""What the attacking device reports; none was issued to it (it holds at most version 1, its idle config)."""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fleet.db"
    return request.getfixturevalue("postgres_schema_url")


def report_payload(device_id: str, version: Any, outcome: str) -> bytes:
    applied = outcome == "applied"
    return json.dumps(
        {
            "device_id": device_id,
            "version": version,
            "outcome": outcome,
            "errors": [] if applied else ["no"],
            "timestamp": time.time(),
            "active_version": version if applied else 0,
        }
    ).encode()


def api_get(url: str, store: Store) -> tuple[int, Any]:
    """GET ``url`` with a new viewer token (the API authenticates every request): (status, decoded body)."""
    token = TokenManager(store, "cli:security-suite").create(f"viewer-{time.monotonic_ns()}", "viewer")[1]
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


# -- the scheduler side, through the production broker ------------------------------------------------------------


class BrokerDevice:
    """A simulated device (its birth, will and answers from SimDevice) on a production-broker client with its
    own certificate: it may use only the topics the ACL gives its identity."""

    def __init__(self, clients: Any, device_id: str) -> None:
        self.device_id = device_id
        self.sim = SimDevice(DeviceSpec(device_id))
        self.sim.new_session()
        self.client: Client = clients(device_id, will=(death_topic(device_id), encode(self.sim.death())))
        self.client.connected()
        self.client.subscribe(config_desired_topic(device_id), FLEET_REBIRTH_TOPIC)
        self.client.publish(birth_topic(device_id), encode(self.sim.birth()), retain=True)
        self.fleet_rebirths = 0

    def answer_desired(self, timeout: float = 15.0) -> ReportedConfig:
        """Wait for the next new desired document, apply it as a device would, publish the report."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                topic, payload = self.client.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.device_id} received no new desired config within {timeout} s") from None
            if topic == FLEET_REBIRTH_TOPIC:
                self.fleet_rebirths += 1
                continue
            report = self.sim.apply(decode(TopicKind.CONFIG_DESIRED, payload, topic)) if payload else None
            if report is not None:
                self.client.publish(config_reported_topic(self.device_id), encode(report), retain=True)
                return report

    def drain_rebirths(self) -> int:
        """Fleet rebirths received so far, counting those among the messages still queued (it consumes them)."""
        while not self.client.messages.empty():
            topic, _ = self.client.messages.get_nowait()
            self.fleet_rebirths += topic == FLEET_REBIRTH_TOPIC
        return self.fleet_rebirths


@pytest.fixture
def scheduler(production_broker: ProductionBroker, backend: str, clients) -> Iterator[SchedulerService]:
    """A real scheduler on ``backend`` with the scheduler's identity; the retained documents it and the devices
    left on the module's broker are cleared afterwards."""
    config = fast_config(
        production_broker.local_port,
        backend,
        mqtt={"username": "scheduler", "password": SCHEDULER_PASSWORD},
        heartbeat_timeout_s=60.0,  # the simulated devices send no telemetry: liveness is not under test here
    )
    service = SchedulerService(config).start()
    try:
        assert service.wait_connected(5), service.mqtt.last_error
        yield service
    finally:
        service.stop()
        cleaner = clients("scheduler").connected()
        for device_id in ("cam-a", "cam-b"):
            for topic in (birth_topic(device_id), config_desired_topic(device_id), config_reported_topic(device_id)):
                cleaner.publish(topic, b"", retain=True)


def applied(service: SchedulerService, workload_id: str) -> bool:
    return any(a.workload_id == workload_id and a.status == "applied" for a in service.store.list_assignments())


def answer_until_placed(service: SchedulerService, device: BrokerDevice, workload_id: str) -> None:
    """Answer desired documents until the one that runs ``workload_id`` is applied and recorded."""
    while True:
        report = device.answer_desired()
        assert report.outcome == "applied", report.errors
        placed = [a for a in service.store.list_assignments() if a.workload_id == workload_id]
        if placed and placed[0].desired_version == report.version:
            break
    wait_until(lambda: applied(service, workload_id), 15)


def test_forged_reported_versions_are_refused_while_the_fleet_keeps_working(
    scheduler: SchedulerService, clients, backend: str, attack
) -> None:
    store_kind = backend.split(":", 1)[0]
    rec = attack(
        f"a device reports never-issued config versions (2^63-1, 2^53, 0, <0, floats, strings) [{store_kind}]", AREA
    )
    service = scheduler
    healthy, attacker = BrokerDevice(clients, "cam-a"), BrokerDevice(clients, "cam-b")
    wait_until(lambda: all(service.store.get_device(d) for d in ("cam-a", "cam-b")), 10)
    service.add_workload(workload("w1", pinned_device="cam-a"))
    answer_until_placed(service, healthy, "w1")
    before = service.store.get_device("cam-b")
    rejected = dict(service.rejected)

    for version in FORGED:  # only its own config/reported topic: the ACL allows it
        attacker.client.publish(config_reported_topic("cam-b"), report_payload("cam-b", version, "applied"))

    def grew() -> int:
        return sum(service.rejected.values()) - sum(rejected.values())

    wait_until(lambda: grew() >= len(FORGED), 15)
    time.sleep(0.3)
    assert grew() == len(FORGED), dict(service.rejected)
    malformed = service.rejected["malformed"] - rejected.get("malformed", 0)
    unissued = service.rejected["unissued_version"] - rejected.get("unissued_version", 0)
    assert unissued == 2  # 2^53 - 1 and 10^6 are valid integers the store never issued; the rest fail parsing
    after = service.store.get_device("cam-b")
    assert (after.desired_version, after.reported_version) == (before.desired_version, before.reported_version)

    with serve(service, "127.0.0.1", 0) as server:
        status, devices = api_get(f"{server.url}/api/devices", service.store)
    assert status == 200 and {"cam-a", "cam-b"} <= {d["device_id"] for d in devices}

    # plans that include the attacking device still place (on the issue's SQLite every such plan failed)
    service.add_workload(workload("w2", pinned_device="cam-b"))
    answer_until_placed(service, attacker, "w2")
    assert applied(service, "w1")
    assert healthy.drain_rebirths() == 0 and attacker.drain_rebirths() == 0  # no fleet-wide rebirth
    assert service.counts["fleet_rebirths"] == 0
    rec.refused_because(
        f"counted as ingest rejects: malformed={malformed} (out of range, float, string, null), "
        f"unissued_version={unissued}; GET /api/devices 200; a new workload placed"
    )
    rec.figures.update(forged=len(FORGED), malformed=malformed, unissued_version=unissued, fleet_rebirths=0)


def test_reported_versions_never_move_the_allocator(backend: str, attack) -> None:
    rec = attack(
        f"property: any reported version (hypothesis) leaves the store's allocator alone [{backend[:6]}]", AREA
    )
    store = open_store(backend)
    service = SchedulerService(fast_config(1, "sqlite://:memory:"), store=store)  # not started: no MQTT
    reports = ConfigReports(
        store,
        views=service.views,
        admission=service.admission,
        control=service.control,
        planner=service.planner,
        counts=service.counts,
        records_presence=lambda: True,
    )
    device = "cam-1"
    assert [store.next_desired_version(device) for _ in range(ISSUED)] == [1, 2, 3]

    def ingest(version: Any, outcome: str) -> None:
        message = IncomingMessage(config_reported_topic(device), report_payload(device, version, outcome), 1, True)
        admitted = service.admission.admit(TopicKind.CONFIG_REPORTED, message)
        if admitted is not None:
            reports.apply(*admitted)

    @settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
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
            status, listed = api_get(f"{server.url}/api/devices", store)
        assert status == 200 and device in json.dumps(listed)
        rec.refused_because(f"ingest rejects {dict(service.admission.rejected)}; allocator at {ISSUED + 1}")
        rec.figures.update(service.admission.rejected)
    finally:
        store.close()


@settings(max_examples=100, deadline=None, database=None)
@given(version=VERSIONS)
def test_the_protocol_refuses_out_of_range_versions_at_parse_time(version: Any) -> None:
    valid = type(version) is int and 1 <= version <= MAX_CONFIG_VERSION
    desired = json.dumps({"version": version, "config": {}, "issued_at": 1.0, "issued_by": "s"}).encode()
    for kind, payload in (
        (TopicKind.CONFIG_DESIRED, desired),
        (TopicKind.CONFIG_REPORTED, report_payload("cam-1", version, "applied")),
    ):
        try:
            decoded = decode(kind, payload, "t")
        except ProtocolError as e:
            assert not valid, e
            assert "version" in str(e) or "not valid JSON" in str(e)  # inf and nan are not JSON at all
        else:
            assert valid and isinstance(decoded, DesiredConfig | ReportedConfig) and decoded.version == version


# -- the device side: desired versions ----------------------------------------------------------------------------


def test_a_huge_or_far_desired_version_is_refused_by_a_real_device_which_takes_the_next_one(
    production_broker: ProductionBroker, pki: dict[str, Path], color_model: Path, tmp_path: Path, attack
) -> None:
    scheduler = Recorder.connect(
        production_broker.port, "scheduler", dev("cam-a", "#"), tls=client_tls(pki, "scheduler")
    )
    mqtt = agent_mqtt(pki, "cam-a")
    agent = DeviceAgent(agent_config(tmp_path, color_model, production_broker.port, "cam-a", agent={"mqtt": mqtt}))
    agent.start()

    def push(version: int) -> None:
        config = {
            "model": {"path": str(color_model)},
            "source": {"uri": LIVE_SOURCE},
            "postprocess": {"type": "classify", "top_k": 1 + version % 2},
        }
        document = {"version": version, "config": config, "issued_at": time.time(), "issued_by": "scheduler"}
        topic = config_desired_topic("cam-a")
        assert scheduler.client.publish(topic, json.dumps(document).encode(), qos=1, retain=True).wait(5)

    def report(version: int) -> ReportedConfig:
        return scheduler.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == version, timeout=15)

    try:
        assert agent.client.wait_connected(10), agent.client.last_error
        push(1)
        assert report(1).outcome == "applied"
        huge = attack("desired config version 2^63-1 pushed to a device (lock-out)", AREA)
        before = agent.rejections.counts["config/desired"]
        push(2**63 - 1)
        wait_until(lambda: agent.rejections.counts["config/desired"] == before + 1)
        event = scheduler.wait(TopicKind.EVENT, lambda e: e.kind == "message.rejected")
        assert "version" in event.details["reason"] and str(MAX_CONFIG_VERSION) in event.details["reason"]
        assert agent.remote.handled_version == 1
        far = attack(f"desired config version more than {MAX_CONFIG_VERSION_STEP} above the device's", AREA)
        far_version = 1 + MAX_CONFIG_VERSION_STEP + 1
        push(far_version)
        refused = report(far_version)
        assert refused.outcome == "rejected" and refused.active_version == 1
        assert f"more than {MAX_CONFIG_VERSION_STEP} above the current v1" in refused.errors[0]
        push(2)  # the next normal version still applies
        assert report(2).outcome == "applied" and agent.config_version == 2
        results = len(scheduler.of(TopicKind.RESULT))
        wait_until(lambda: len(scheduler.of(TopicKind.RESULT)) >= results + 3)
        huge.refused_because(event.details["reason"])
        huge.figures["rejected config/desired"] = agent.rejections.counts["config/desired"] - before
        far.refused_because(refused.errors[0])
    finally:
        agent.stop()
        scheduler.client.publish(config_desired_topic("cam-a"), b"", qos=1, retain=True).wait(5)
        scheduler.stop()


class FakeController:
    """Records what the remote config would apply (process() alone, no pipeline)."""

    def __init__(self) -> None:
        self.applied: list[int] = []

    def apply(self, config: Any, version: int) -> ApplyResult:
        self.applied.append(version)
        return ApplyResult("applied", [], frozenset())


def test_desired_versions_apply_only_when_greater_and_within_the_step(
    tmp_path: Path, color_model: Path, attack
) -> None:
    rec = attack("property: desired versions (hypothesis) apply only when greater and within the step", AREA)
    local = agent_config(tmp_path, color_model, 1, "steps")
    store = StateStore(local.agent.state_dir)
    sent: list[ReportedConfig] = []
    remote = RemoteConfig(local, store, report=sent.append, event=lambda *a: None)
    controller = FakeController()
    remote.controller = controller  # type: ignore[assignment]  # process() alone, no worker thread

    @settings(
        max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        current=st.one_of(st.just(0), st.integers(1, MAX_CONFIG_VERSION)),
        offset=st.one_of(
            st.sampled_from([-1, 0, 1, MAX_CONFIG_VERSION_STEP, MAX_CONFIG_VERSION_STEP + 1]),
            st.integers(-(2**53), 2**53),
        ),
    )
    def check(current: int, offset: int) -> None:
        version = current + offset
        if not 1 <= version <= MAX_CONFIG_VERSION:
            return  # the protocol refuses it before this point (test_the_protocol_refuses_out_of_range_versions...)
        remote.state = ConfigState(current, current, {"idle": True} if current else None)
        before, applied = len(sent), len(controller.applied)
        desired = DesiredConfig(version=version, config={"idle": True}, issued_at=time.time(), issued_by="s")
        result = remote.process(desired)
        if version <= current:
            assert result is None and len(sent) == before  # old: ignored
        elif version > current + MAX_CONFIG_VERSION_STEP:
            assert result is not None and result.outcome == "rejected"
            assert str(MAX_CONFIG_VERSION_STEP) in result.errors[0]
            assert len(controller.applied) == applied  # keeps its config ...
            assert remote.state.handled_version == current and remote.state.active_version == current  # and version
            assert sent[-1].version == version and sent[-1].outcome == "rejected"  # reported with the reason
        else:
            assert result is not None and result.outcome == "applied"
            assert controller.applied[-1] == version and remote.state.active_version == version

    check()
    # the issue's attack: a huge version is refused and later configs still apply
    remote.state = ConfigState(5, 5, {"idle": True})
    huge = DesiredConfig(version=MAX_CONFIG_VERSION, config={"idle": True}, issued_at=time.time(), issued_by="x")
    assert remote.process(huge) is not None and remote.handled_version == 5
    nxt = DesiredConfig(version=6, config={"idle": True}, issued_at=time.time(), issued_by="s")
    assert remote.process(nxt) is not None and remote.state.active_version == 6
    rec.refused_because(sent[-2].errors[0])


def test_a_persisted_out_of_range_handled_version_no_longer_locks_the_device_out(
    tmp_path: Path, color_model: Path, attack
) -> None:
    rec = attack("a device restarted with handled version 2^63-1 persisted by the old attack", AREA)
    local = agent_config(tmp_path, color_model, 1, "locked")
    store = StateStore(local.agent.state_dir)
    store.save_config_state(ConfigState(2**63 - 1, 0, None))  # what the issue's attack left behind
    events: list[tuple[Any, ...]] = []
    remote = RemoteConfig(local, store, report=lambda r: None, event=lambda *a: events.append(a))
    assert remote.initial_config() == (local, 0)
    assert remote.handled_version == 0 and store.load_config_state().handled_version == 0
    fallback = next(e for e in events if e[0] == "config.fallback")
    remote.controller = FakeController()  # type: ignore[assignment]
    nxt = DesiredConfig(version=7, config={"idle": True}, issued_at=time.time(), issued_by="s")
    result = remote.process(nxt)
    assert result is not None and result.outcome == "applied"
    rec.refused_because(f"config.fallback: {fallback[3]['reason']}; v7 applied next")
