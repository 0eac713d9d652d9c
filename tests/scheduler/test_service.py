"""The scheduler service against a real mosquitto and simulated devices (SQLite store): liveness,
placement pushes, rejected configs, health triggers and hostile messages."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.fleet.mqtt import IncomingMessage
from lepton_edge.fleet.protocol import (
    Birth,
    Capabilities,
    Death,
    Event,
    RebirthRequest,
    TopicKind,
    birth_topic,
    death_topic,
    decode,
    encode,
    events_topic,
    rebirth_topic,
    subscription,
    telemetry_topic,
)
from lepton_edge.scheduler.desired import device_config_for, device_conflicts, device_document
from lepton_edge.scheduler.exclusions import plan_with_exclusions
from lepton_edge.scheduler.models import Workload
from lepton_edge.scheduler.service import SchedulerService
from lepton_edge.scheduler.simulator import IDLE_CONFIG, DeviceSpec, FleetSimulator, SimDevice
from lepton_edge.scheduler.stores import open_store
from tests.support.mosquitto import MessageCollector
from tests.support.scheduler import DesiredRecorder, fast_config, wait_until, workload


@pytest.fixture
def start_service(fresh_broker, tmp_path: Path) -> Iterator:
    services: list[SchedulerService] = []

    def start(**overrides) -> SchedulerService:
        config = fast_config(fresh_broker.port, f"sqlite:///{tmp_path}/fleet.db", **overrides)
        service = SchedulerService(config).start()
        assert service.wait_connected(5), service.mqtt.last_error
        services.append(service)
        return service

    yield start
    for service in services:
        service.stop()


@pytest.fixture
def fleet(fresh_broker, unique: str) -> Iterator:
    sims: list[FleetSimulator] = []

    def make(devices, rate_hz: float = 5.0, **kwargs) -> FleetSimulator:
        sim = FleetSimulator("127.0.0.1", fresh_broker.port, devices, rate_hz=rate_hz, prefix=unique,
                             mode="device", **kwargs)
        sims.append(sim)
        return sim.start()

    yield make
    for sim in sims:
        sim.stop()


@pytest.fixture
def recorder(fresh_broker, make_mqtt_client, unique: str) -> DesiredRecorder:
    rec = DesiredRecorder()
    client = make_mqtt_client(fresh_broker, f"recorder-{unique}")
    client.subscribe(subscription(TopicKind.CONFIG_DESIRED), rec)
    client.start()
    assert client.wait_connected(5)
    return rec


def online(service: SchedulerService, *device_ids: str) -> bool:
    devices = [service.store.get_device(d) for d in device_ids]
    return all(d is not None and d.online for d in devices)


def assignment(service: SchedulerService, workload_id: str, status: str | None = None):
    for a in service.store.list_assignments():
        if a.workload_id == workload_id and (status is None or a.status == status):
            return a
    return None


def event_kinds(service: SchedulerService) -> list[str]:
    return [e.kind for e in service.store.list_events(limit=1000)]


# ----------------------------------------------------------------------------------------- liveness


@pytest.mark.integration
def test_birth_online_stale_death_ignored_matching_death_offline(start_service, fleet, make_mqtt_client,
                                                                 fresh_broker, unique) -> None:
    service = start_service()
    sim = fleet(1)
    (device_id,) = sim.devices
    wait_until(lambda: online(service, device_id), what="the device online after its birth")
    stored = service.store.get_device(device_id)
    session = sim.device(device_id).session_id
    assert stored.session_id == session and stored.accelerator == "cpu"

    other = make_mqtt_client(fresh_broker, f"other-{unique}")
    other.start()
    assert other.wait_connected(5)
    stale = Death(device_id=device_id, session_id=session - 1, reason="connection_lost")
    other.publish(death_topic(device_id), encode(stale)).wait(5)
    wait_until(lambda: service.counts["stale_deaths"] >= 1, what="the stale death to be seen")
    assert online(service, device_id)

    sim.kill(device_id)  # the broker publishes the will of the current session
    wait_until(lambda: not online(service, device_id), what="the device offline after its will")
    assert service.store.get_device(device_id).offline_reason == "connection_lost"
    # the event is written by the control thread after the state change: wait for it, then check both
    wait_until(lambda: "device.offline" in event_kinds(service), what="the device.offline event")
    kinds = event_kinds(service)
    assert "device.online" in kinds and "device.offline" in kinds


def _birth(device_id: str, session: int) -> IncomingMessage:
    birth = Birth(device_id=device_id, session_id=session, timestamp=time.time(), config_version=0,
                  software_version="x", capabilities=Capabilities(accelerator="cpu", runtimes={}, cpu_count=1,
                                                                  memory_bytes=1, sources=[], artifacts=[]))
    return IncomingMessage(birth_topic(device_id), encode(birth), 1, False)


def _death(device_id: str, session: int) -> IncomingMessage:
    death = Death(device_id=device_id, session_id=session, reason="connection_lost")
    return IncomingMessage(death_topic(device_id), encode(death), 1, False)


@pytest.mark.parametrize(("offset", "stale"), [(-1, True), (0, False), (1, False), (5, False)])
def test_only_a_death_of_an_older_session_is_ignored(tmp_path: Path, offset: int, stale: bool) -> None:
    # the newer session's birth was missed: its death still means the device is gone (fleet.protocol.is_stale_death)
    store = open_store(f"sqlite:///{tmp_path}/fleet.db")
    service = SchedulerService(fast_config(1, "sqlite://:memory:"), store=store)  # not started: handlers alone
    try:
        service.ingestion.on_birth(_birth("cam-1", 7))
        assert service.views.get("cam-1").online
        service.ingestion.on_death(_death("cam-1", 7 + offset))
        assert service.views.get("cam-1").online is stale
        assert service.counts["stale_deaths"] == (1 if stale else 0)
        assert len(service.control) == (1 if stale else 2)  # the birth, and the death to write
    finally:
        store.close()


@pytest.mark.integration
def test_a_death_of_a_newer_session_than_the_known_one_takes_the_device_offline(start_service, fleet,
                                                                                make_mqtt_client, fresh_broker,
                                                                                unique) -> None:
    service = start_service()
    sim = fleet(1)
    (device_id,) = sim.devices
    wait_until(lambda: online(service, device_id), what="the device online after its birth")
    session = sim.device(device_id).session_id
    other = make_mqtt_client(fresh_broker, f"other-{unique}")
    other.start()
    assert other.wait_connected(5)
    newer = Death(device_id=device_id, session_id=session + 1, reason="connection_lost")  # its birth was missed
    other.publish(death_topic(device_id), encode(newer)).wait(5)
    wait_until(lambda: not online(service, device_id), what="the device offline after the newer session's death")
    assert service.counts["stale_deaths"] == 0
    assert service.store.get_device(device_id).offline_reason == "connection_lost"


@pytest.mark.integration
def test_silent_device_goes_offline_and_comes_back_on_rebirth(start_service, fleet) -> None:
    service = start_service(heartbeat_timeout_s=1.0)
    sim = fleet(1, rate_hz=0.2)  # one telemetry message every 5 s: silent for longer than the timeout
    (device_id,) = sim.devices
    wait_until(lambda: online(service, device_id), what="the device online")
    wait_until(lambda: not online(service, device_id), timeout=10, what="the liveness sweep to mark it offline")
    assert "no message for 1 s" in service.store.get_device(device_id).offline_reason
    offline_events = [e for e in service.store.list_events() if e.kind == "device.offline"]
    assert offline_events and offline_events[-1].details["reason"] == "heartbeat_timeout"
    # its next telemetry is from a session the service counts as ended: it asks for a rebirth
    wait_until(lambda: sim.device(device_id).rebirth_requests >= 1, timeout=15, what="a rebirth request")
    wait_until(lambda: online(service, device_id), what="the device online again after its rebirth")


@pytest.mark.integration
def test_sequence_gap_and_unknown_device_get_rebirth_requests(start_service, fleet, make_mqtt_client,
                                                              fresh_broker, unique) -> None:
    service = start_service()
    sim = fleet(1, rate_hz=10)
    (device_id,) = sim.devices
    device = sim.device(device_id)
    wait_until(lambda: service.counts["telemetry_written"] >= 3, what="telemetry written")
    births = device.births_sent
    device.skip(5)  # the next message arrives after a gap of five
    wait_until(lambda: device.rebirth_requests >= 1, what="the device to receive a rebirth request")
    wait_until(lambda: device.births_sent > births, what="the device to answer with a birth")
    assert online(service, device_id)

    # telemetry of a device never born: not stored, and the device is asked for a rebirth
    ghost = f"ghost-{unique}"
    requests = MessageCollector()
    client = make_mqtt_client(fresh_broker, ghost)
    client.subscribe(rebirth_topic(ghost), requests)
    client.start()
    assert client.wait_connected(5)
    assert client.wait_subscribed(5)
    ghost_device = SimDevice(DeviceSpec(ghost), session_base=41)
    ghost_device.new_session()
    client.publish(telemetry_topic(ghost), ghost_device.telemetry_payload(time.time(), 1.0))
    request = decode(TopicKind.REBIRTH, requests.wait_for(1)[0].payload)
    assert isinstance(request, RebirthRequest) and "birth was not seen" in request.reason
    assert service.store.get_device(ghost) is None
    assert service.rejected["unknown_session"] >= 1


def test_a_telemetry_batch_the_store_refuses_is_written_one_by_one(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/fleet.db")
    service = SchedulerService(fast_config(1, "sqlite://:memory:"), store=store)  # not started: the writer alone
    try:
        ok = {"fps": 5.0, "artifact_id": "det.onnx"}
        service.writer.write_batch([
            ("cam-1", 1, 1, ok, 1.0),
            ("cam-2", 1, 1, {"fps": float("nan")}, 1.0),  # not JSON: the store refuses the batch, then this one
            ("cam-1", 1, 2, ok, 2.0),
        ])
        assert [r["seq"] for r in store.telemetry_history("cam-1")] == [1, 2]
        assert store.get_device("cam-2") is None
        assert service.counts["telemetry_write_errors"] == 1
    finally:
        store.close()


# ---------------------------------------------------------------------------------------- placement


@pytest.mark.integration
def test_placement_pushes_retained_desired_configs_with_rising_versions(start_service, fleet, recorder,
                                                                        make_mqtt_client, fresh_broker,
                                                                        unique) -> None:
    service = start_service()
    sim = fleet(2)
    wait_until(lambda: online(service, *sim.devices), what="both devices online")
    w1 = workload("w1", fps=5)
    service.add_workload(w1)
    placed = wait_until(lambda: assignment(service, "w1", "applied"), what="w1 applied")
    host = placed.device_id
    first = recorder.latest(host)
    assert first is not None and first.version == placed.desired_version
    assert first.config == device_document([w1]) and first.issued_by == "r1"
    assert sim.device(host).config == device_document([w1])

    changed = w1.model_copy(update={"source_uri": "synthetic://shapes?fps=4&id=w1b", "required_fps": 4.0})
    service.store.update_workload(changed)
    service.replan("w1 updated")
    wait_until(lambda: recorder.running(host) == changed.source_uri, what="the updated config pushed")
    second = recorder.latest(host)
    assert second.version > first.version
    wait_until(lambda: (a := assignment(service, "w1", "applied")) and a.desired_version == second.version,
               what="the new version applied")

    late = MessageCollector()  # a device connecting now receives the latest document, retained
    client = make_mqtt_client(fresh_broker, f"late-{unique}")
    client.subscribe(f"lepton/v1/devices/{host}/config/desired", late)
    client.start()
    message = late.wait_for(1)[0]
    assert message.retain and decode(TopicKind.CONFIG_DESIRED, message.payload).version == second.version

    assert service.remove_workload("w1") is True
    wait_until(lambda: recorder.latest(host).config == IDLE_CONFIG, what="an idle config for the freed device")
    assert recorder.latest(host).version > second.version
    wait_until(lambda: not sim.device(host).running, what="the device to stop running the workload")
    assert assignment(service, "w1") is None
    assert service.remove_workload("w1") is False


@pytest.mark.integration
def test_rejected_config_marks_assignment_failed_and_replans(start_service, fleet) -> None:
    service = start_service()
    sim = fleet(2)
    first, second = sorted(sim.devices)
    wait_until(lambda: online(service, first, second), what="both devices online")
    sim.set_fail(first, "rejected")
    service.add_workload(workload("w1"))  # both idle: the tie goes to the first id, which rejects it
    moved = wait_until(lambda: assignment(service, "w1", "applied"), what="w1 applied somewhere")
    assert moved.device_id == second
    rejected = [e for e in service.store.list_events(limit=1000) if e.kind == "config.rejected"]
    assert rejected and rejected[0].device_id == first and rejected[0].workload_id == "w1"
    assert service.store.get_device(first).last_outcome == "rejected"

    # a config every device rejects (the device's own schema refuses it) ends up unplaced, with the reason
    bad = workload("bad", config={"postprocess": {"type": "detect", "conf_threshold": 7}})
    sim.set_fail(first, None)
    service.add_workload(bad)
    wait_until(lambda: "bad" in service.unplaced and assignment(service, "bad") is None,
               what="the invalid workload to be unplaced")
    assert "excluding" in service.unplaced["bad"]
    assert any(e.kind == "placement.unplaced" and e.workload_id == "bad" for e in service.store.list_events())
    # undisturbed: the bad one joined w1's device and left it again; w1 stayed there and kept running
    wait_until(lambda: (a := assignment(service, "w1", "applied")) and a.device_id == second, what="w1 applied")
    assert sim.device(second).starts["w1"] == 1


@pytest.mark.integration
def test_a_workload_too_large_for_the_default_capacity_is_placed_once_capacity_is_learned(start_service,
                                                                                          fleet) -> None:
    service = start_service()
    sim = fleet(1, rate_hz=10)
    (device_id,) = sim.devices
    wait_until(lambda: online(service, device_id), what="the device online")
    service.add_workload(workload("big", fps=25))  # over 80 % of the 10 fps assumed of an unmeasured CPU
    wait_until(lambda: "gives 10 fps" in service.unplaced.get("big", ""), what="the workload too large")
    assert service.unplaced["big"].startswith("too_large") and service.counts["capacity_replans"] == 0

    # the device runs the model from its local config, measured at 20 fps: still too large, one re-plan
    sim.set_capacity(device_id, 20.0)
    sim.run_local(device_id, device_config_for(workload("local", fps=30)))
    wait_until(lambda: "gives 20 fps" in service.unplaced.get("big", ""), what="a re-plan with 20 fps learned")
    time.sleep(1.0)  # ten more reports of the same capacity: no more re-plans
    assert service.counts["capacity_replans"] == 1 and assignment(service, "big") is None

    sim.set_capacity(device_id, 60.0)  # faster now: the learned capacity rises past 25 / 80 %
    placed = wait_until(lambda: assignment(service, "big", "applied"), what="the workload placed and applied")
    assert placed.device_id == device_id and "big" not in service.unplaced
    assert service.store.get_device(device_id).fps_capacity["det.onnx"] >= 25 / 0.8
    placed_events = [e for e in service.store.list_events(limit=1000) if e.kind == "placement.placed"]
    assert placed_events and "runs det.onnx at up to" in placed_events[-1].message


@pytest.mark.integration
def test_throttled_device_loses_its_workload(start_service, fleet) -> None:
    service = start_service(placement={"thermal_limit_c": 80})
    sim = fleet(2)
    wait_until(lambda: online(service, *sim.devices), what="both devices online")
    service.add_workload(workload("w1"))
    host = wait_until(lambda: assignment(service, "w1", "applied"), what="w1 applied").device_id
    sim.set_temperature(host, 92.5)
    moved = wait_until(lambda: (a := assignment(service, "w1", "applied")) and a.device_id != host and a,
                       what="w1 moved off the hot device")
    assert moved.device_id != host
    assert service.store.get_device(host).throttled
    assert any(e.kind == "device.health" and e.device_id == host for e in service.store.list_events())


@pytest.mark.integration
def test_under_rate_device_loses_its_workload(start_service, fleet) -> None:
    service = start_service()
    sim = fleet(2, rate_hz=10)
    wait_until(lambda: online(service, *sim.devices), what="both devices online")
    service.add_workload(workload("w1", fps=5))
    host = wait_until(lambda: assignment(service, "w1", "applied"), what="w1 applied").device_id
    sim.set_capacity(host, 2.0)  # it now delivers 2 of the 5 fps required
    moved = wait_until(lambda: (a := assignment(service, "w1", "applied")) and a.device_id != host and a,
                       what="w1 moved off the slow device")
    assert moved.device_id != host
    assert service.store.get_device(host).fps_capacity["det.onnx"] < 5


def test_packing_exclusions_and_conflicts_are_pure() -> None:
    from lepton_edge.scheduler.models import Assignment, Device
    from lepton_edge.scheduler.placement import PlacementInput

    def device(i: int) -> Device:
        return Device(device_id=f"d{i}", online=True, session_id=1, last_seen=0.0, capabilities={}, group=None,
                      accelerator="cpu", runtimes={"onnxruntime": "1"}, desired_version=0, reported_version=0,
                      last_outcome=None, telemetry=None, throttled=False, temperature_c=None)

    def plan(inp: PlacementInput, excluded: dict[str, set[str]]) -> Any:
        return plan_with_exclusions(inp, excluded, headroom=0.8, hysteresis=0.15, conflicts=device_conflicts)

    small = [Workload(workload_id=f"w{i}", source_uri="x", model="m", required_fps=1) for i in range(3)]
    inp = PlacementInput([device(0), device(1)], small, [Assignment("w2", "d1", "applied", 1, 0.0)])
    packed = plan(inp, {})
    assert packed.assignments == {"w0": "d0", "w1": "d0", "w2": "d1"} and not packed.unplaced  # two on d0
    assert packed == plan(inp, {})  # deterministic

    running = [Assignment("w0", "d0", "applied", 1, 0.0), Assignment("w2", "d1", "applied", 1, 0.0)]
    inp = PlacementInput([device(0), device(1), device(2)], [small[0], small[2]], running)
    excluded = plan(inp, {"w2": {"d1"}})
    assert excluded.assignments == {"w0": "d0", "w2": "d2"} and excluded.moved == ["w2"]
    stuck = plan(inp, {"w2": {"d1", "d2"}})
    assert stuck.assignments == {"w0": "d0", "w2": "d0"}  # packed with w0, where it may go
    stuck = plan(inp, {"w2": {"d0", "d1", "d2"}})
    assert stuck.assignments["w2"] is None and "d0, d1, d2 (a failed config)" in stuck.unplaced["w2"]

    # device-level settings that differ keep two workloads apart; the one already there stays
    slow, fast = ({"pipeline": {"stats_interval_s": v}} for v in (5.0, 1.0))
    a, b = (Workload(workload_id=i, source_uri="x", model="m", required_fps=1, config=c) for i, c in (("a", slow),
                                                                                                    ("b", fast)))
    same = Workload(workload_id="c", source_uri="x", model="m", required_fps=1, config=slow)
    inp = PlacementInput([device(0)], [a, b, same], [Assignment("b", "d0", "applied", 1, 0.0)])
    apart = plan(inp, {})
    assert apart.assignments == {"a": None, "b": "d0", "c": None}
    assert "a conflict on d0: device-level setting pipeline.stats_interval_s differs from workload b's" in (
        apart.unplaced["a"]
    )
    inp = PlacementInput([device(0), device(1)], [a, b, same], [Assignment("b", "d0", "applied", 1, 0.0)])
    assert plan(inp, {}).assignments == {"a": "d1", "b": "d0", "c": "d1"}


@pytest.mark.integration
def test_device_events_are_recorded_once(start_service, fleet, make_mqtt_client, fresh_broker, unique) -> None:
    service = start_service()
    sim = fleet(1)
    (device_id,) = sim.devices
    wait_until(lambda: online(service, device_id), what="the device online")
    event = Event(device_id=device_id, session_id=sim.device(device_id).session_id, id="ev-1",
                  kind="source.reconnected", severity="warning", message="camera back after 3 s",
                  details={"attempts": 2}, timestamp=time.time())
    client = make_mqtt_client(fresh_broker, f"outbox-{unique}")
    client.start()
    assert client.wait_connected(5)
    for _ in range(2):  # an outbox resends after an outage: the same id twice
        client.publish(events_topic(device_id), encode(event)).wait(5)
    recorded = wait_until(lambda: [e for e in service.store.list_events() if e.kind == "device.source.reconnected"],
                          what="the device event recorded")
    wait_until(lambda: service.counts["duplicate_events"] == 1, what="the duplicate to be dropped")
    assert len(recorded) == 1 and recorded[0].device_id == device_id and recorded[0].severity == "warning"
    assert recorded[0].details["attempts"] == 2 and recorded[0].details["event_id"] == "ev-1"

# ------------------------------------------------------------------------------------------ hostile


@pytest.mark.integration
def test_hostile_messages_are_counted_and_survived(start_service, fleet, make_mqtt_client, fresh_broker,
                                                   unique) -> None:
    service = start_service(ingest={"device_rate_hz": 5, "device_burst": 10})
    sim = fleet(1, rate_hz=2)
    (victim,) = sim.devices
    wait_until(lambda: online(service, victim), what="the device online")
    mallory = f"mallory-{unique}"
    client = make_mqtt_client(fresh_broker, mallory)
    client.start()
    assert client.wait_connected(5)

    impostor = SimDevice(DeviceSpec(victim), session_base=10**6)
    impostor.new_session()
    spoofed_telemetry = impostor.telemetry_payload(time.time(), 1.0)  # says device_id=victim
    spoofed_birth = Birth(device_id=victim, session_id=10**6, timestamp=time.time(), config_version=0,
                          software_version="x", capabilities=Capabilities(accelerator="cpu", runtimes={},
                          cpu_count=1, memory_bytes=1, sources=[], artifacts=[]))
    attacks = [
        (telemetry_topic(mallory), spoofed_telemetry),
        (birth_topic(mallory), encode(spoofed_birth)),
        (telemetry_topic(mallory), b"{not json"),
        (telemetry_topic(mallory), b'{"device_id": "' + mallory.encode() + b'", "seq": "7"}'),
        (telemetry_topic(mallory), b"\xff\xfe\x00"),
        (telemetry_topic(mallory), b"[" * 100_000),
        (birth_topic(mallory), json.dumps({"device_id": mallory, "x": "y" * 300_000}).encode()),
        (death_topic(mallory), b'{"device_id": "' + mallory.encode() + b'", "session_id": -1, "reason": "x"}'),
    ]
    for topic, payload in attacks:
        client.publish(topic, payload, qos=1).wait(5)
    flooder = f"flood-{unique}"
    for _ in range(300):
        client.publish(telemetry_topic(flooder), b"{}", qos=0)
    wait_until(lambda: service.rejected["spoofed"] >= 2, what="spoofed messages rejected")
    wait_until(lambda: service.rejected["malformed"] >= 6, what="malformed messages rejected")
    wait_until(lambda: service.rejected["flood"] >= 200, what="the flood rejected")

    # still alive: the real device's telemetry keeps flowing into the store, and its state is untouched
    written = service.counts["telemetry_written"]
    wait_until(lambda: service.counts["telemetry_written"] >= written + 3, what="ingestion to continue")
    assert all(t.is_alive() for t in service._threads)
    stored = service.store.get_device(victim)
    assert stored.online and stored.session_id == sim.device(victim).session_id
    assert service.store.get_device(mallory) is None
    kinds = set(event_kinds(service))
    assert {"ingest.rejected.spoofed", "ingest.rejected.malformed", "ingest.rejected.flood"} <= kinds
    stats = service.stats()
    assert stats["rejected"]["flood"] >= 200 and stats["backlog"] >= 0


# ------------------------------------------------------------------------------------------- config


def test_example_config_is_valid_and_lists_every_option(tmp_path: Path) -> None:
    import yaml
    from pydantic import BaseModel

    from lepton_edge.config.scheduler import SchedulerConfig, load_scheduler_config
    from lepton_edge.core.errors import ConfigError

    example = Path(__file__).resolve().parents[2] / "deploy" / "scheduler.example.yaml"
    config = load_scheduler_config(example)
    assert config.store_url == f"sqlite:///{example.parent.resolve() / 'scheduler.db'}"
    assert config.mqtt.client_id == "lepton-scheduler-r1"

    def missing(model: type[BaseModel], data: dict, where: str) -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            if name not in data:
                out.append(f"{where}{name}")
            elif isinstance(data[name], dict) and isinstance(field.annotation, type) and issubclass(
                    field.annotation, BaseModel):
                out += missing(field.annotation, data[name], f"{where}{name}.")
        return out

    assert missing(SchedulerConfig, yaml.safe_load(example.read_text()), "") == []

    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt: {port: 1884}\nheartbeat_timeot_s: 3\nreplicas: {shared_subscriptions: true}\n")
    with pytest.raises(ConfigError) as err:
        load_scheduler_config(bad)
    assert "bad.yaml" in str(err.value) and "heartbeat_timeot_s" in str(err.value)
    bad.write_text("mqtt: {port: 1884}\nreplicas: {shared_subscriptions: true}\n")
    with pytest.raises(ConfigError, match="postgresql"):
        load_scheduler_config(bad)


def test_key_and_certificate_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    from lepton_edge.config.scheduler import load_scheduler_config

    path = tmp_path / "etc" / "scheduler.yaml"
    path.parent.mkdir()
    path.write_text(
        "mqtt: {port: 1884}\ndesired_signing_key: keys/desired.key\n"
        "api: {tls_cert: certs/api.crt, tls_key: /abs/api.key, client_ca: ../ca.crt}\n"
    )
    config = load_scheduler_config(path)
    assert config.desired_signing_key == path.parent / "keys" / "desired.key"
    assert config.api.tls_cert == path.parent / "certs" / "api.crt"
    assert config.api.tls_key == Path("/abs/api.key") and config.api.client_ca == tmp_path / "ca.crt"


@pytest.mark.integration
def test_run_scheduler_serves_the_api_until_stopped(fresh_broker, tmp_path: Path, fleet) -> None:
    pytest.importorskip("fastapi", reason="the scheduler API needs fastapi (pip install 'lepton-edge[scheduler]')")
    pytest.importorskip("uvicorn", reason="the scheduler API needs uvicorn (pip install 'lepton-edge[scheduler]')")
    import threading

    from lepton_edge.scheduler.service import run_scheduler
    from lepton_edge.scheduler.stores import open_store
    from tests.support.api_client import ApiClient, make_token
    from tests.support.mosquitto import free_port

    port = free_port()
    config = fast_config(fresh_broker.port, f"sqlite:///{tmp_path}/fleet.db", api={"enabled": True, "port": port})
    with open_store(config.store_url) as store:
        client = ApiClient(f"http://127.0.0.1:{port}", make_token(store, "operator"))
    stop = threading.Event()
    result: dict[str, int] = {}
    runner = threading.Thread(target=lambda: result.setdefault("rc", run_scheduler(config, stop=stop)))
    runner.start()
    base = f"http://127.0.0.1:{port}"

    def get(path: str):
        try:
            status, body = client.get(path)
        except OSError:
            return None
        return body if status == 200 else None

    try:
        sim = fleet(1)
        (device_id,) = sim.devices
        stats = wait_until(lambda: (s := get("/api/stats")) and s["online"] == 1 and s,
                           what="the API to show the device")
        assert stats["is_leader"] and stats["service"]["replica_id"] == "r1"
        body = {"workload_id": "w1", "source_uri": "synthetic://shapes?fps=5", "model": "det.onnx", "required_fps": 5}
        assert ApiClient(base).call("POST", "/api/workloads", body)[0] == 401  # no token, no change
        assert client.call("POST", "/api/workloads", body)[0] == 201
        wait_until(lambda: [(a["device_id"], a["status"]) for a in get("/api/assignments") or []]
                   == [(device_id, "applied")], what="the workload placed and applied")
    finally:
        stop.set()
        runner.join(30)
    assert result == {"rc": 0}
    assert get("/api/stats") is None  # the API is down
