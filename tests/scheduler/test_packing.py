"""Several workloads per device: packed by capacity (learned from batched throughput), one device's death
moves its workloads only, and one workload that fails on a device (its camera, or its config) moves alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_edge.fleet.protocol import TopicKind, subscription
from lepton_edge.scheduler.desired import device_document
from lepton_edge.scheduler.service import SchedulerService
from lepton_edge.scheduler.simulator import DeviceSpec, FleetSimulator, batch_gain
from tests.support.scheduler import DesiredRecorder, fast_config, wait_until, workload

pytestmark = pytest.mark.integration


@pytest.fixture
def service(fresh_broker, tmp_path: Path) -> Iterator[SchedulerService]:
    with SchedulerService(fast_config(fresh_broker.port, f"sqlite:///{tmp_path}/fleet.db")) as service:
        assert service.wait_connected(5), service.mqtt.last_error
        yield service


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

    def make(count: int, capacity_fps: float) -> FleetSimulator:
        # CUDA devices: placement assumes 100 fps of a model it has not measured, so several fit at once
        specs = [DeviceSpec(f"{unique}-{i}", accelerator="cuda", capacity_fps=capacity_fps) for i in range(count)]
        sim = FleetSimulator("127.0.0.1", fresh_broker.port, specs, rate_hz=10.0, mode="device")
        sims.append(sim)
        return sim.start()

    yield make
    for sim in sims:
        sim.stop()


def hosts(service: SchedulerService, status: str = "applied") -> dict[str, str]:
    """Workload -> device, for the assignments with ``status``."""
    return {a.workload_id: a.device_id for a in service.store.list_assignments() if a.status == status}


def on(placed: dict[str, str], device_id: str) -> set[str]:
    return {w for w, d in placed.items() if d == device_id}


def all_applied(service: SchedulerService, n: int) -> dict[str, str] | None:
    placed = hosts(service)
    return placed if len(placed) == n and not hosts(service, "pending") else None


def test_workloads_are_packed_by_learned_batched_capacity_and_a_dead_device_moves_only_its_own(
    service, fleet, recorder
) -> None:
    sim = fleet(3, capacity_fps=40.0)
    wait_until(lambda: sum(d.online for d in service.store.list_devices()) == 3, what="three devices online")
    for i in range(6):
        service.store.add_workload(workload(f"w{i}", fps=10))
    service.replan("six workloads added")  # one plan for all six
    placed = wait_until(lambda: all_applied(service, 6), what="six workloads applied")
    assert sorted(len(on(placed, d)) for d in sim.devices) == [2, 2, 2]  # least utilised first: two each

    for device_id in sim.devices:  # one document per device: its two workloads, one shared model entry
        mine = on(placed, device_id)
        document = recorder.latest(device_id).config
        assert set(document["workloads"]) == mine and len(document["models"]) == 1
        assert document == device_document([service.store.get_workload(w) for w in mine])
        assert set(sim.device(device_id).workloads) == mine
    # two streams batched run 40 x 1.25 = 50 fps, which the devices report (fps 20 / busy 0.4) and the
    # scheduler learns: more than the 40 fps one stream would show
    learned = 40.0 * batch_gain(2)
    wait_until(
        lambda: all(d.fps_capacity.get("det.onnx") == pytest.approx(learned) for d in service.store.list_devices()),
        what="capacity learned from the per-model telemetry",
    )

    dead = sorted(sim.devices)[0]
    orphans = on(placed, dead)
    sim.kill(dead)
    after = wait_until(
        lambda: (p := all_applied(service, 6)) and not on(p, dead) and p, what="the dead device's workloads moved"
    )
    for survivor in set(sim.devices) - {dead}:
        assert on(placed, survivor) <= on(after, survivor)  # kept what it had
        assert all(sim.device(survivor).starts[w] == 1 for w in on(placed, survivor))  # never restarted
    assert set(orphans) == {w for w in after if placed[w] != after[w]}  # nothing else moved
    moves = [e for e in service.store.list_events(limit=1000) if e.kind == "placement.moved"]
    assert sorted(e.workload_id for e in moves) == sorted(orphans)


def test_a_workload_whose_camera_dies_or_whose_config_is_refused_moves_alone(service, fleet) -> None:
    sim = fleet(2, capacity_fps=40.0)
    wait_until(lambda: sum(d.online for d in service.store.list_devices()) == 2, what="two devices online")
    for i in range(4):
        service.store.add_workload(workload(f"w{i}", fps=5))
    service.replan("four workloads added")
    placed = wait_until(lambda: all_applied(service, 4), what="four workloads applied")
    first, second = sorted(sim.devices)
    assert len(on(placed, first)) == len(on(placed, second)) == 2

    # the camera of one workload on the first device dies: that workload moves, its neighbour stays
    blind, neighbour = sorted(on(placed, first))
    sim.fail_source(first, blind, "rtsp: connection refused")
    moved = wait_until(lambda: (p := all_applied(service, 4)) and p.get(blind) == second and p,
                       what="the blind workload moved to the other device")
    assert moved[neighbour] == first and sim.device(first).starts[neighbour] == 1
    assert on(moved, second) == on(placed, second) | {blind}
    failed = [e for e in service.store.list_events(limit=1000) if e.kind == "workload.failed"]
    assert [(e.workload_id, e.device_id) for e in failed] == [(blind, first)]
    assert "rtsp: connection refused" in failed[0].message

    # the second device refuses one workload's new config (reported per workload): only that one moves
    refused = sorted(on(placed, second))[0]
    sim.set_fail_workload(second, refused, "rejected")
    changed = service.store.get_workload(refused).model_copy(update={"config": {"postprocess": {"type": "detect"}}})
    service.store.update_workload(changed)
    service.replan(f"{refused} changed")
    final = wait_until(lambda: (p := all_applied(service, 4)) and p.get(refused) == first and p,
                       what="the refused workload moved to the first device")
    assert on(final, second) == on(moved, second) - {refused}
    assert all(sim.device(second).starts[w] == 1 for w in on(final, second))  # the others kept running
    report = next(r for r in reversed(sim.device(second).reports) if refused in r.workloads)
    assert report.outcome == "rejected" and report.workloads[refused].outcome == "rejected"  # the document's: worst
    assert all(o.outcome == "applied" for w, o in report.workloads.items() if w != refused)
    rejected = [e for e in service.store.list_events(limit=1000) if e.kind == "config.rejected"]
    assert [(e.workload_id, e.device_id) for e in rejected] == [(refused, second)]
    assert "simulated failure" in rejected[0].details["errors"][0]
