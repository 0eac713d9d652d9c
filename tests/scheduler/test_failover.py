"""Failover: a dead device's workload moves; a dead leader's standby takes over (two replica processes on
PostgreSQL); a store outage is survived and the fleet state resynchronised afterwards."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_edge.fleet.protocol import TopicKind, subscription
from lepton_edge.scheduler.desired import device_document
from lepton_edge.scheduler.service import SchedulerService
from lepton_edge.scheduler.simulator import IDLE_CONFIG, FleetSimulator
from lepton_edge.scheduler.stores import open_store
from tests.support.scheduler import DesiredRecorder, fast_config, wait_until, workload

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def recorder(fresh_broker, make_mqtt_client, unique: str) -> DesiredRecorder:
    rec = DesiredRecorder()
    client = make_mqtt_client(fresh_broker, f"recorder-{unique}")
    client.subscribe(subscription(TopicKind.CONFIG_DESIRED), rec)
    client.start()
    assert client.wait_connected(5)
    return rec


@pytest.fixture
def fleet(fresh_broker, unique: str) -> Iterator:
    sims: list[FleetSimulator] = []

    def make(devices: int, rate_hz: float = 5.0) -> FleetSimulator:
        sim = FleetSimulator("127.0.0.1", fresh_broker.port, devices, rate_hz=rate_hz, prefix=unique, mode="device")
        sims.append(sim)
        return sim.start()

    yield make
    for sim in sims:
        sim.stop()


def applied_on(store, workload_id: str) -> str | None:
    for a in store.list_assignments():
        if a.workload_id == workload_id and a.status == "applied":
            return a.device_id
    return None


def test_dead_device_workload_moves_and_the_rest_stays(fresh_broker, tmp_path, fleet, recorder) -> None:
    config = fast_config(fresh_broker.port, f"sqlite:///{tmp_path}/fleet.db")
    with SchedulerService(config) as service:
        sim = fleet(3)
        wait_until(lambda: sum(d.online for d in service.store.list_devices()) == 3, what="three devices online")
        w1, w2 = workload("w1"), workload("w2")
        service.add_workload(w1)
        service.add_workload(w2)
        host1 = wait_until(lambda: applied_on(service.store, "w1"), what="w1 applied")
        host2 = wait_until(lambda: applied_on(service.store, "w2"), what="w2 applied")
        assert host1 != host2  # spread: each goes to the least utilised device
        (spare,) = set(sim.devices) - {host1, host2}
        version_before = recorder.latest(host1).version

        sim.kill(host1)
        wait_until(lambda: applied_on(service.store, "w1") == spare, what="w1 applied on the spare device")
        assert recorder.latest(spare).config == device_document([w1])
        assert sim.device(spare).config == device_document([w1])
        assert recorder.latest(host1).config == IDLE_CONFIG  # waiting for it, retained, if it comes back
        assert recorder.latest(host1).version > version_before
        assert applied_on(service.store, "w2") == host2  # untouched
        moves = [e for e in service.store.list_events(limit=1000) if e.kind == "placement.moved"]
        assert [(e.workload_id, e.details["from"], e.details["to"]) for e in moves] == [("w1", host1, spare)]


# ------------------------------------------------------------------------------------- PostgreSQL


def start_replica(tmp_path: Path, port: int, url: str, replica_id: str) -> subprocess.Popen[bytes]:
    config = fast_config(port, url, replica_id, replicas={"shared_subscriptions": True}, leader_check_s=0.3)
    path = tmp_path / f"{replica_id}.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json", exclude={"mqtt": {"password"}})))
    log = open(tmp_path / f"{replica_id}.log", "wb")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "lepton_edge.cli", "--log-level", "info", "scheduler", "--config", str(path)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def test_leader_takeover_between_two_replicas(postgres_schema_url, fresh_broker, tmp_path, fleet,
                                              recorder) -> None:
    url = postgres_schema_url
    observer = open_store(url)
    processes = []
    try:
        first = start_replica(tmp_path, fresh_broker.port, url, "replica-a")
        processes.append(first)
        wait_until(lambda: observer.leader() == "replica-a", what="replica-a to lead")
        second = start_replica(tmp_path, fresh_broker.port, url, "replica-b")
        processes.append(second)
        sim = fleet(3)
        wait_until(lambda: sum(d.online for d in observer.list_devices()) == 3, what="three devices online")
        time.sleep(1.0)  # replica-b connected and subscribed (its log says so; it is only a standby)
        observer.add_workload(workload("w1"))  # the leader notices it in the store
        host = wait_until(lambda: applied_on(observer, "w1"), what="w1 applied")
        assert recorder.latest(host).issued_by == "replica-a"

        first.send_signal(signal.SIGKILL)  # its database connection dies, and the leader lock with it
        first.wait(10)
        wait_until(lambda: observer.leader() == "replica-b", what="replica-b to take over")
        sim.kill(host)
        new_host = wait_until(lambda: (d := applied_on(observer, "w1")) != host and d, what="w1 moved")
        assert recorder.latest(new_host).issued_by == "replica-b"
        assert recorder.latest(new_host).config == device_document([workload("w1")])
        # telemetry is still ingested by the survivor (a shared subscription with one member left)
        before = observer.get_device(new_host).telemetry["seq"]
        wait_until(lambda: observer.get_device(new_host).telemetry["seq"] > before, what="telemetry ingested")

        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
        log = (tmp_path / "replica-b.log").read_text()
        assert "now the placement leader" in log and "stopped" in log
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        observer.close()


def test_store_outage_is_survived_and_resynchronised(postgres_server, postgres_schema_url,
                                                     fresh_broker, fleet) -> None:
    config = fast_config(fresh_broker.port, postgres_schema_url)
    with SchedulerService(config) as service:
        sim = fleet(2)
        wait_until(lambda: sum(d.online for d in service.store.list_devices()) == 2, what="two devices online")
        service.add_workload(workload("w1"))
        host = wait_until(lambda: applied_on(service.store, "w1"), what="w1 applied")
        (spare,) = set(sim.devices) - {host}

        postgres_server.stop()
        try:
            wait_until(lambda: not service.store_ok, what="the service to notice the outage")
            sim.kill(host)  # a death during the outage must not be lost
            wait_until(lambda: service.stats()["backlog"] > 0, what="telemetry to queue up")
            assert all(t.is_alive() for t in service._threads)
            wait_until(lambda: not service.is_leader, what="the leadership given up (no store, no leader)")
        finally:
            postgres_server.start()
        assert sim.device(host).alive is False
        wait_until(lambda: service.store_ok and service.is_leader, what="the store back and the leadership")
        wait_until(lambda: applied_on(service.store, "w1") == spare, what="w1 moved to the survivor")
        assert not service.store.get_device(host).online
        wait_until(lambda: service.stats()["backlog"] == 0, what="the queued telemetry written")
        assert service.counts["store_recoveries"] >= 1
        wait_until(lambda: sim.device(spare).rebirth_requests >= 1, what="a fleet rebirth after the outage")
