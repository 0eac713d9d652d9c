"""The fleet store: the same behaviour suite against SQLite and a real throwaway PostgreSQL."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from lepton_edge.scheduler.migrations import postgres as pg_migrations
from lepton_edge.scheduler.migrations import sqlite as sqlite_migrations
from lepton_edge.scheduler.models import Assignment, Workload
from lepton_edge.scheduler.store import (
    EncodedJson,
    Store,
    StoreConflict,
    StoreError,
    StoreNotFound,
    StoreUnavailable,
    learn_capacity,
)
from lepton_edge.scheduler.stores import open_store
from tests.support.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[2]
CAPS = {"accelerator": "cuda", "runtimes": {"onnxruntime": "1.17", "tensorrt": "8.6"}, "cpu_count": 4,
        "memory_bytes": 8 << 30, "sources": ["cam0"], "artifacts": ["yolo"]}

OpenStore = Callable[..., Store]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store of each backend (a schema of its own on PostgreSQL)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fleet.db"
    return request.getfixturevalue("postgres_schema_url")


@pytest.fixture
def open_(backend: str) -> Iterator[OpenStore]:
    """``open_(**options)``: another store on the same database, closed after the test."""
    stores: list[Store] = []

    def make(**options: object) -> Store:
        store = open_store(backend, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(open_: OpenStore) -> Store:
    return open_()


def workload(workload_id: str = "cam-1", **overrides: object) -> Workload:
    fields: dict[str, object] = {"workload_id": workload_id, "source_uri": "rtsp://10.0.0.5/stream", "model": "yolo",
                                 "required_fps": 10.0}
    return Workload(**(fields | overrides))


def telemetry(seq: int, **overrides: object) -> dict[str, object]:
    data: dict[str, object] = {"seq": seq, "fps": 20.0, "artifact_id": "yolo",
                               "latency_ms": {"infer": {"p50": 10.0, "p90": 12.0, "p99": 15.0, "max": 20.0}},
                               "temperatures_c": {"cpu": 50.0, "gpu": 61.5}}
    return data | overrides


# ---------------------------------------------------------------------------------------- schema


def test_migrate_is_idempotent_and_numbered(store: Store, open_: OpenStore, backend: str) -> None:
    latest = (sqlite_migrations if backend.startswith("sqlite") else pg_migrations).MIGRATIONS[-1].version
    assert store.schema_version() == latest
    store.migrate()
    store.migrate()
    assert store.schema_version() == latest
    store.add_workload(workload())
    second = open_()  # migrates again on open
    assert second.schema_version() == latest
    assert [w.workload_id for w in second.list_workloads()] == ["cam-1"]


def test_an_unmigrated_database_reports_version_zero(backend: str) -> None:
    with open_store(backend, migrate=False) as store:
        assert store.schema_version() == 0
        store.migrate()
        assert store.schema_version() >= 1


def test_closed_store_refuses_calls(backend: str) -> None:
    store = open_store(backend)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_devices()


# -------------------------------------------------------------------------------------- presence


def test_births_and_deaths_follow_the_session_rules(store: Store) -> None:
    assert store.get_device("cam-a") is None
    assert store.device_birth("cam-a", 2, CAPS, ts=100.0)
    dev = store.get_device("cam-a")
    assert dev is not None
    assert (dev.online, dev.session_id, dev.accelerator, dev.last_seen) == (True, 2, "cuda", 100.0)
    assert dev.runtimes == CAPS["runtimes"]
    assert dev.capabilities == CAPS

    # an older session's birth is stale and changes nothing
    assert not store.device_birth("cam-a", 1, {"accelerator": "cpu"}, ts=101.0)
    assert store.get_device("cam-a").accelerator == "cuda"  # type: ignore[union-attr]

    # a death of an older session is stale; the device stays online
    assert not store.device_death("cam-a", 1, ts=102.0, reason="connection_lost")
    assert store.get_device("cam-a").online  # type: ignore[union-attr]

    assert store.device_death("cam-a", 2, ts=103.0, reason="connection_lost")
    dev = store.get_device("cam-a")
    assert dev is not None
    assert (dev.online, dev.offline_reason, dev.status_since) == (False, "connection_lost", 103.0)

    assert store.device_birth("cam-a", 3, CAPS, ts=104.0)
    dev = store.get_device("cam-a")
    assert dev is not None
    assert (dev.online, dev.offline_reason, dev.session_id, dev.status_since) == (True, None, 3, 104.0)


def test_retained_death_before_birth_of_the_same_session_leaves_it_offline(store: Store) -> None:
    # a late scheduler receives the retained death and birth of session 5 in either order
    assert store.device_death("cam-b", 5, ts=10.0, reason="shutdown")
    assert store.device_birth("cam-b", 5, CAPS, ts=10.0)
    assert not store.get_device("cam-b").online  # type: ignore[union-attr]
    assert not store.device_birth("cam-b", 4, CAPS, ts=11.0)
    assert store.device_birth("cam-b", 6, CAPS, ts=12.0)
    assert store.get_device("cam-b").online  # type: ignore[union-attr]


def test_death_of_a_newer_session_whose_birth_was_missed_applies(store: Store) -> None:
    store.device_birth("cam-c", 1, CAPS, ts=1.0)
    assert store.device_death("cam-c", 2, ts=2.0, reason="connection_lost")
    dev = store.get_device("cam-c")
    assert dev is not None and not dev.online and dev.session_id == 2
    assert not store.device_birth("cam-c", 1, CAPS, ts=3.0)


def test_seen_and_liveness_timeouts(store: Store) -> None:
    store.device_seen("nobody", 5.0)  # unknown devices are ignored
    assert store.get_device("nobody") is None
    store.device_birth("cam-d", 1, CAPS, ts=10.0)
    store.device_seen("cam-d", 30.0)
    store.device_seen("cam-d", 20.0)  # an older time never moves last_seen back
    assert store.get_device("cam-d").last_seen == 30.0  # type: ignore[union-attr]

    # a message arrived after the liveness check read last_seen: the timeout loses
    assert not store.mark_offline("cam-d", 40.0, "no telemetry for 30 s", last_seen_before=25.0)
    assert store.get_device("cam-d").online  # type: ignore[union-attr]
    assert store.mark_offline("cam-d", 40.0, "no telemetry for 30 s", last_seen_before=35.0)
    assert not store.mark_offline("cam-d", 41.0, "again")
    dev = store.get_device("cam-d")
    assert dev is not None
    assert (dev.online, dev.offline_reason, dev.status_since) == (False, "no telemetry for 30 s", 40.0)
    assert not store.mark_offline("nobody", 41.0, "unknown")


def test_groups_from_capabilities_and_operator(store: Store) -> None:
    store.device_birth("cam-e", 1, CAPS | {"group": "dock"}, ts=1.0)
    assert store.get_device("cam-e").group == "dock"  # type: ignore[union-attr]
    store.set_device_group("cam-e", "gate")
    assert store.get_device("cam-e").group == "gate"  # type: ignore[union-attr]
    store.device_birth("cam-e", 2, CAPS | {"group": "dock"}, ts=2.0)  # a rebirth keeps the operator's choice
    assert store.get_device("cam-e").group == "gate"  # type: ignore[union-attr]
    store.set_device_group("cam-e", None)
    assert store.get_device("cam-e").group == "dock"  # type: ignore[union-attr]
    with pytest.raises(StoreNotFound, match="no device 'ghost'"):
        store.set_device_group("ghost", "x")


def test_list_devices_is_ordered(store: Store) -> None:
    for i, name in enumerate(["b", "c", "a"]):
        store.device_birth(name, 1, CAPS, ts=float(i))
    assert [d.device_id for d in store.list_devices()] == ["a", "b", "c"]


# ------------------------------------------------------------------------------------- telemetry


def test_telemetry_history_is_bounded_and_ordered(open_: OpenStore) -> None:
    store = open_(history_limit=5)
    store.device_birth("cam-t", 1, CAPS, ts=1.0)
    for seq in range(1, 13):
        assert store.record_telemetry("cam-t", 1, seq, telemetry(seq), ts=100.0 + seq)
    rows = store.telemetry_history("cam-t", limit=1000)
    assert [r["seq"] for r in rows] == [8, 9, 10, 11, 12]
    assert [r["ts"] for r in rows] == [108.0, 109.0, 110.0, 111.0, 112.0]
    assert rows[-1]["data"] == telemetry(12)
    assert rows[-1]["session_id"] == 1
    assert [r["seq"] for r in store.telemetry_history("cam-t", since=110.0)] == [11, 12]
    assert [r["seq"] for r in store.telemetry_history("cam-t", limit=2)] == [11, 12]
    assert store.telemetry_history("nobody") == []
    with pytest.raises(StoreError, match="limit"):
        store.telemetry_history("cam-t", limit=0)
    # past the store's periodic trims too (in batches, as the scheduler writes)
    store.record_telemetry_batch([("cam-t", 1, seq, telemetry(seq), 100.0 + seq) for seq in range(13, 30)])
    store.record_telemetry_batch([("cam-t", 1, seq, telemetry(seq), 100.0 + seq) for seq in range(30, 41)])
    assert [r["seq"] for r in store.telemetry_history("cam-t", limit=1000)] == [36, 37, 38, 39, 40]
    assert [r["seq"] for r in store.telemetry_history("cam-t", since=0.0, limit=1000)] == [36, 37, 38, 39, 40]


def test_telemetry_updates_the_device_and_rejects_stale_messages(store: Store) -> None:
    store.device_birth("cam-t", 3, CAPS, ts=1.0)
    assert store.record_telemetry("cam-t", 3, 1, telemetry(1), ts=50.0)
    dev = store.get_device("cam-t")
    assert dev is not None
    assert dev.telemetry == telemetry(1)
    assert (dev.last_seen, dev.temperature_c, dev.throttled) == (50.0, 61.5, False)
    assert dev.fps_capacity == {"yolo": 100.0}  # 1000 / 10 ms infer p50 beats the 20 fps measured

    assert not store.record_telemetry("cam-t", 2, 9, telemetry(9), ts=51.0)  # older session
    assert not store.record_telemetry("cam-t", 3, 1, telemetry(1, fps=1.0), ts=52.0)  # duplicate
    assert [r["seq"] for r in store.telemetry_history("cam-t")] == [1]

    hot = telemetry(2, temperatures_c={"soc": 91.0})
    assert store.record_telemetry("cam-t", 3, 2, hot, ts=53.0)
    dev = store.get_device("cam-t")
    assert dev is not None and dev.throttled and dev.temperature_c == 91.0
    assert store.record_telemetry("cam-t", 3, 3, telemetry(3, throttled=True, temperatures_c={}), ts=54.0)
    dev = store.get_device("cam-t")
    assert dev is not None and dev.throttled and dev.temperature_c is None


def test_telemetry_of_a_device_not_yet_born_is_kept(store: Store) -> None:
    assert store.record_telemetry("early", 4, 7, telemetry(7), ts=5.0)
    dev = store.get_device("early")
    assert dev is not None and not dev.online and dev.telemetry == telemetry(7)
    assert store.device_birth("early", 4, CAPS, ts=6.0)
    assert store.get_device("early").online  # type: ignore[union-attr]


def test_a_telemetry_batch_gives_what_the_same_messages_one_by_one_give(open_: OpenStore) -> None:
    store = open_(history_limit=3)
    for prefix in ("batch", "single"):
        store.device_birth(f"{prefix}-a", 2, CAPS, ts=1.0)
        store.device_birth(f"{prefix}-b", 1, CAPS, ts=1.0)
    messages = [  # devices interleaved and out of id order; each device's own order matters
        ("b", 1, 1, telemetry(1, fps=10.0), 10.0),
        ("a", 2, 1, telemetry(1), 10.0),
        ("b", 1, 2, telemetry(2, fps=30.0, temperatures_c={"soc": 90.0}), 11.0),
        ("a", 1, 9, telemetry(9), 11.0),  # an older session: ignored
        ("b", 1, 2, telemetry(2, fps=99.0), 12.0),  # a duplicate: ignored
        ("a", 2, 2, telemetry(2, latency_ms={"infer": {"p50": 40.0, "p90": 41.0, "p99": 42.0, "max": 43.0}}), 12.0),
        ("b", 1, 3, telemetry(3), 13.0),
        ("b", 1, 4, telemetry(4, artifact_id="other"), 14.0),
    ]
    stored = store.record_telemetry_batch([(f"batch-{d}", *rest) for d, *rest in messages])
    singles = [store.record_telemetry(f"single-{d}", *rest) for d, *rest in messages]
    assert stored == sum(singles) == 6
    for device in ("a", "b"):
        batch, single = store.get_device(f"batch-{device}"), store.get_device(f"single-{device}")
        assert batch is not None and single is not None
        assert (batch.telemetry, batch.fps_capacity, batch.temperature_c, batch.throttled, batch.last_seen) == (
            single.telemetry, single.fps_capacity, single.temperature_c, single.throttled, single.last_seen)
        assert store.telemetry_history(f"batch-{device}") == store.telemetry_history(f"single-{device}")
    assert [r["seq"] for r in store.telemetry_history("batch-b")] == [2, 3, 4]  # bounded to 3
    assert store.get_device("batch-a").fps_capacity == {"yolo": 77.5}  # type: ignore[union-attr]  # 100 -> 25
    assert store.record_telemetry_batch([]) == 0


def test_a_telemetry_batch_is_one_transaction(store: Store) -> None:
    store.device_birth("cam-ok", 1, CAPS, ts=1.0)
    bad = telemetry(1, fps=float("nan"))  # not valid JSON: the store refuses it
    with pytest.raises(StoreError, match="JSON"):
        store.record_telemetry_batch([("cam-ok", 1, 1, telemetry(1), 5.0), ("cam-z", 1, 1, bad, 5.0)])
    assert store.telemetry_history("cam-ok") == []
    assert store.get_device("cam-ok").telemetry is None  # type: ignore[union-attr]
    assert store.record_telemetry_batch([("cam-ok", 1, 1, telemetry(1), 5.0)]) == 1


def test_telemetry_given_with_its_json_text_is_stored_as_that_text(store: Store) -> None:
    store.device_birth("cam-j", 1, CAPS, ts=1.0)
    data = telemetry(1)
    text = json.dumps(data | {"fps": 20})  # the same values, with fps written as an integer
    assert store.record_telemetry_batch([("cam-j", 1, 1, EncodedJson(data, text), 5.0)]) == 1
    device = store.get_device("cam-j")
    assert device is not None and device.telemetry == data and device.fps_capacity == {"yolo": 100.0}
    # what comes back is the text (an integer), not a new encoding of the mapping (a float)
    assert type(device.telemetry["fps"]) is int
    assert type(store.telemetry_history("cam-j")[0]["data"]["fps"]) is int


def test_sqlite_set_based_telemetry_writes_match_the_per_row_ones(tmp_path: Path, monkeypatch) -> None:
    """SQLite >= 3.38 writes a batch in a few statements; older ones row by row: the same result."""
    from lepton_edge.scheduler import store_sqlite

    rng = random.Random(7)
    messages = []
    for i in range(300):  # several devices, several messages each, real-looking clocks and temperatures
        device = f"cam-{rng.randrange(20):02d}"
        data = telemetry(i, fps=rng.uniform(1, 90), temperatures_c={"cpu": rng.uniform(30, 95)})
        messages.append((device, 1 + i // 150, i + 1, data, time.time() + rng.random()))
    results = []
    for set_based in (True, False):
        monkeypatch.setattr(store_sqlite, "_SET_BASED", set_based)
        with open_store(f"sqlite:///{tmp_path}/{set_based}.db", history_limit=7) as store:
            stored = [store.record_telemetry_batch(messages[i:i + 64]) for i in range(0, len(messages), 64)]
            devices = store.list_devices()
            histories = [store.telemetry_history(d.device_id, limit=1000) for d in devices]
            results.append((stored, devices, histories))
    assert results[0] == results[1]
    assert sum(results[0][0]) == 300 and all(len(h) == 7 for h in results[0][2])


@pytest.mark.integration
def test_postgres_replicas_writing_batches_in_opposite_orders_do_not_deadlock(postgres_schema_url: str) -> None:
    stores = [open_store(postgres_schema_url) for _ in range(2)]
    devices = [f"cam-{i:02d}" for i in range(40)]
    errors: list[Exception] = []

    def write(store: Store, order: list[str], first_seq: int) -> None:
        try:
            for round_ in range(25):
                seq = first_seq + 2 * round_
                store.record_telemetry_batch([(d, 1, seq, telemetry(seq), float(seq)) for d in order])
        except Exception as e:  # a deadlock surfaces as a StoreError in one of the two
            errors.append(e)

    try:
        threads = [
            threading.Thread(target=write, args=(stores[0], devices, 1)),
            threading.Thread(target=write, args=(stores[1], devices[::-1], 2)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        assert stores[0].get_device("cam-00").telemetry["seq"] == 50  # type: ignore[union-attr]
    finally:
        for store in stores:
            store.close()


def test_capacity_learning_is_smoothed_and_per_model() -> None:
    first = learn_capacity({}, {"artifact_id": "m", "fps": 30.0, "latency_ms": {}})
    assert first == {"m": 30.0}
    # the slowest concurrent stage bounds throughput: 1000 / 25 ms = 40 fps
    second = learn_capacity(first, {"artifact_id": "m", "fps": 5.0,
                                    "latency_ms": {"infer": {"p50": 20.0}, "postprocess": {"p50": 25.0}}})
    assert second == {"m": pytest.approx(30.0 + 0.3 * (40.0 - 30.0))}
    assert learn_capacity(second, {"artifact_id": "n", "fps": 8.0}) == {**second, "n": 8.0}
    assert learn_capacity(second, {"artifact_id": None, "fps": 8.0}) == second
    assert learn_capacity(second, {"artifact_id": "m", "fps": 0.0, "latency_ms": {}}) == second


def test_capacity_of_a_batching_device_is_each_models_fps_over_its_busy_fraction() -> None:
    # 4 streams batched: 48 frames/s inferred with the worker busy 60 % of the time -> 80 fps at this batch size,
    # whatever the single-stream latencies say (the per-model figures win)
    data = {"artifact_id": "det", "fps": 50.0, "latency_ms": {"infer": {"p50": 40.0}},
            "models": {"det": {"fps": 48.0, "batch_mean": 3.9, "busy": 0.6, "streams": 4},
                       "cls": {"fps": 12.0, "batch_mean": 1.0, "busy": 0.3, "streams": 1},
                       "idle": {"fps": 0.2, "batch_mean": 1.0, "busy": 0.01, "streams": 1}}}
    first = learn_capacity({"old": 5.0}, data)
    assert first == {"old": 5.0, "det": pytest.approx(80.0), "cls": pytest.approx(40.0)}  # "idle" taught nothing
    busier = {**data, "models": {"det": {"fps": 90.0, "batch_mean": 4.0, "busy": 0.9, "streams": 4}}}
    assert learn_capacity(first, busier)["det"] == pytest.approx(80.0 + 0.3 * (100.0 - 80.0))  # smoothed
    nothing = {**data, "models": {"det": {"fps": 0.0, "batch_mean": 0.0, "busy": 0.0, "streams": 4}}}
    assert learn_capacity(first, nothing) == first


# ------------------------------------------------------------------------------------- workloads


def test_workload_crud(store: Store) -> None:
    stored = store.add_workload(workload("cam-2", group="dock", config={"detect": {"score_threshold": 0.4}}))
    assert stored.created_at is not None and stored.created_at > 0
    store.add_workload(workload("cam-1", pinned_device="jet-1", accelerator="cuda", runtime="tensorrt"))
    assert [w.workload_id for w in store.list_workloads()] == ["cam-1", "cam-2"]
    assert store.get_workload("cam-2") == stored
    assert store.get_workload("nope") is None

    with pytest.raises(StoreConflict, match="'cam-2' already exists"):
        store.add_workload(workload("cam-2"))

    updated = store.update_workload(workload("cam-2", required_fps=25.0, group=None))
    assert updated.required_fps == 25.0 and updated.created_at == stored.created_at
    assert store.get_workload("cam-2") == updated
    with pytest.raises(StoreNotFound, match="'ghost'"):
        store.update_workload(workload("ghost"))

    store.apply_plan([Assignment("cam-2", "jet-1", "pending", 1, 1.0)], [])
    assert store.delete_workload("cam-2")
    assert not store.delete_workload("cam-2")
    assert store.list_assignments() == []
    assert [w.workload_id for w in store.list_workloads()] == ["cam-1"]


def test_workload_artifacts_round_trip(store: Store) -> None:
    artifact = {"url": "https://models.example/yolo.tar", "size": 1234, "sha256": "AB" * 32}
    stored = store.add_workload(workload(artifact=artifact))
    assert store.get_workload("cam-1").artifact == {**artifact, "sha256": "ab" * 32}  # type: ignore[union-attr]
    assert stored.artifact == store.get_workload("cam-1").artifact  # type: ignore[union-attr]


def test_invalid_workloads_are_rejected_with_the_field() -> None:
    with pytest.raises(ValidationError, match="required_fps"):
        workload(required_fps=0)
    with pytest.raises(ValidationError, match="workload_id"):
        workload("Has Spaces")
    with pytest.raises(ValidationError, match="extra"):
        workload(unknown=1)
    with pytest.raises(ValidationError, match="sha256"):
        workload(artifact={"url": "https://x.example/m.onnx", "size": 1, "sha256": "zz"})


# ----------------------------------------------------------------------------------- assignments


def test_apply_plan_upserts_and_removes(store: Store) -> None:
    for name in ("a", "b", "c"):
        store.add_workload(workload(name))
    store.apply_plan([Assignment("a", "d1", "pending", 1, 10.0), Assignment("b", "d1", "pending", 1, 10.0)], [])
    store.apply_plan(
        [Assignment("b", "d2", "pending", 4, 11.0, "moved: d1 went offline"), Assignment("c", "d2", "pending", 4, 11.0),
         Assignment("deleted-meanwhile", "d2", "pending", 4, 11.0)],
        ["a"],
    )
    assert store.list_assignments() == [
        Assignment("b", "d2", "pending", 4, 11.0, "moved: d1 went offline"),
        Assignment("c", "d2", "pending", 4, 11.0),
    ]


def test_apply_plan_is_atomic(store: Store) -> None:
    for name in ("a", "b", "c"):
        store.add_workload(workload(name))
    before = [Assignment("a", "d1", "pending", 1, 1.0), Assignment("b", "d1", "applied", 1, 1.0)]
    store.apply_plan(before, [])
    # the upserts run, then the removals fail on a value no database can take: all of it is rolled back
    with pytest.raises(StoreError):
        store.apply_plan([Assignment("a", "d2", "pending", 2, 2.0), Assignment("c", "d2", "pending", 2, 2.0)],
                         ["b", object()])  # type: ignore[list-item]
    assert store.list_assignments() == before


def test_assignment_status(store: Store) -> None:
    store.add_workload(workload("a"))
    store.apply_plan([Assignment("a", "d1", "pending", 3, 1.0)], [])
    assert not store.set_assignment_status("a", "applied", desired_version=2)  # an older report
    assert store.list_assignments()[0].status == "pending"
    assert store.set_assignment_status("a", "failed", "model did not load", desired_version=3)
    assert store.list_assignments()[0] == Assignment("a", "d1", "failed", 3, 1.0, "model did not load")
    assert store.set_assignment_status("a", "applied")
    assert not store.set_assignment_status("ghost", "applied")
    with pytest.raises(StoreError, match="status must be one of"):
        store.set_assignment_status("a", "done")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status must be one of"):
        Assignment("a", "d1", "done", 1, 1.0)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------- desired config


def test_desired_versions_are_monotonic_and_owned_by_the_store(store: Store, open_: OpenStore) -> None:
    assert [store.next_desired_version("d1") for _ in range(3)] == [1, 2, 3]
    assert store.next_desired_version("d2") == 1  # per device
    # a version the store never issued to the device is ignored and never moves the allocator
    assert not store.record_reported("d1", 10, "applied", [])
    assert not store.record_reported("d2", 2, "applied", [])
    assert store.next_desired_version("d1") == 4
    assert store.record_reported("d1", 3, "applied", [])
    assert not store.record_reported("d1", 2, "rejected", ["late"])  # older reports are ignored
    assert store.record_reported("d1", 4, "rolled_back", ["health check failed"])
    dev = store.get_device("d1")
    assert dev is not None
    assert (dev.reported_version, dev.last_outcome, dev.last_errors, dev.desired_version) == (
        4, "rolled_back", ["health check failed"], 4)
    store.close()
    assert open_().next_desired_version("d1") == 5  # across a restart


def test_desired_versions_from_two_threads_are_unique(store: Store) -> None:
    results: dict[int, list[int]] = {0: [], 1: []}

    def allocate(k: int) -> None:
        for _ in range(40):
            results[k].append(store.next_desired_version("shared"))

    threads = [threading.Thread(target=allocate, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r == sorted(r) for r in results.values())
    assert sorted(results[0] + results[1]) == list(range(1, 81))


# ---------------------------------------------------------------------------------------- events


def test_events(open_: OpenStore) -> None:
    store = open_(event_limit=4)
    first = store.add_event("device.online", "cam-a came online", device_id="cam-a", ts=1.0)
    assert (first.kind, first.device_id, first.severity, first.details, first.time) == (
        "device.online", "cam-a", "info", {}, 1.0)
    for i in range(5):
        store.add_event("placement.moved", f"moved {i}", workload_id=f"w{i}", severity="warning",
                        details={"from": "a", "to": "b", "n": i}, ts=2.0 + i)
    events = store.list_events()
    assert [e.message for e in events] == ["moved 1", "moved 2", "moved 3", "moved 4"]  # bounded, oldest first
    assert events[-1].details == {"from": "a", "to": "b", "n": 4}
    assert [e.message for e in store.list_events(limit=2)] == ["moved 3", "moved 4"]
    assert [e.message for e in store.list_events(since_id=events[1].id)] == ["moved 3", "moved 4"]
    assert [e.message for e in store.list_events(limit=1, since_id=events[1].id)] == ["moved 3"]
    with pytest.raises(StoreError, match="severity"):
        store.add_event("x", "y", severity="fatal")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ open_store


def test_open_store_explains_bad_urls(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no scheme"):
        open_store("fleet.db")
    with pytest.raises(StoreError, match="unknown scheme 'mysql'"):
        open_store("mysql://u:secret@h/db")
    with pytest.raises(StoreError, match="sqlite:////absolute"):
        open_store(f"sqlite://{tmp_path}/missing/fleet.db")  # three slashes: a relative path
    with pytest.raises(StoreError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/missing/fleet.db")
    with open_store("sqlite://:memory:") as mem:
        mem.device_birth("x", 1, CAPS, ts=1.0)
        assert mem.get_device("x") is not None


def test_sqlite_store_leads_alone(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/fleet.db") as store:
        assert store.leader() is None
        assert store.try_lead("replica-a")
        assert store.try_lead("replica-a")
        assert store.leader() == "replica-a"
        store.release_lead("replica-b")  # not the holder: nothing happens
        assert store.leader() == "replica-a"
        store.release_lead("replica-a")
        assert store.leader() is None


# ------------------------------------------------------------------------------- PostgreSQL only

pg = pytest.mark.integration


@pg
def test_postgres_leadership_moves_when_the_leader_goes(postgres_schema_url: str) -> None:
    a, b = open_store(postgres_schema_url), open_store(postgres_schema_url)
    try:
        assert a.leader() is None
        assert a.try_lead("replica-a")
        assert not b.try_lead("replica-b")
        assert a.try_lead("replica-a")  # confirming does not stack locks
        assert b.leader() == a.leader() == "replica-a"

        a.close()  # a leader that stops frees the lock at once
        assert b.leader() is None
        assert b.try_lead("replica-b")
        assert b.leader() == "replica-b"

        c = open_store(postgres_schema_url)
        try:
            assert not c.try_lead("replica-c")
            b.release_lead("replica-b")
            assert c.leader() is None
            assert c.try_lead("replica-c")
            assert not b.try_lead("replica-b")
            assert b.leader() == "replica-c"
        finally:
            c.close()
    finally:
        a.close()
        b.close()


@pg
def test_postgres_leader_whose_connection_is_killed_loses_the_lead(postgres_schema_url: str) -> None:
    import psycopg

    a, b = open_store(postgres_schema_url), open_store(postgres_schema_url)
    try:
        assert a.try_lead("replica-a")
        with psycopg.connect(postgres_schema_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchall()
        assert killed == [(True,)]
        # the backend exits (and its lock goes) shortly after being told to: a standby retries until then
        deadline = time.monotonic() + 20
        while not b.try_lead("replica-b"):
            assert time.monotonic() < deadline, "the killed leader's lock was never freed"
            time.sleep(0.05)
        with pytest.raises(StoreUnavailable, match="not leading"):
            a.try_lead("replica-a")  # its lock connection is gone: it must stop acting as leader
        assert not a.try_lead("replica-a")  # reconnected, but replica-b holds the lock now
        assert a.leader() == "replica-b"
    finally:
        a.close()
        b.close()


@pg
def test_postgres_desired_versions_from_two_processes(postgres_schema_url: str) -> None:
    open_store(postgres_schema_url).close()  # migrate once, before both start
    script = (
        "import sys\n"
        "from lepton_edge.scheduler.stores import open_store\n"
        "with open_store(sys.argv[1]) as s:\n"
        "    print(' '.join(str(s.next_desired_version('shared')) for _ in range(40)))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, postgres_schema_url], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append([int(v) for v in out.split()])
    assert all(o == sorted(o) and len(o) == 40 for o in outputs)
    assert sorted(outputs[0] + outputs[1]) == list(range(1, 81))


@pg
def test_postgres_concurrent_migrations_apply_once(postgres_schema_url: str) -> None:
    errors: list[BaseException] = []
    stores: list[Store] = []

    def open_one() -> None:
        try:
            stores.append(open_store(postgres_schema_url))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert {s.schema_version() for s in stores} == {pg_migrations.MIGRATIONS[-1].version}
    finally:
        for s in stores:
            s.close()


@pg
def test_postgres_outage_raises_store_unavailable_and_recovers(
    postgres_server: PostgresServer, postgres_schema_url: str
) -> None:
    store = open_store(postgres_schema_url, connect_timeout=2)
    try:
        store.device_birth("cam-o", 1, CAPS, ts=1.0)
        assert store.try_lead("replica-a")
        postgres_server.stop()
        try:
            with pytest.raises(StoreUnavailable, match="fleet store postgresql://") as info:
                store.get_device("cam-o")
            assert "server" in str(info.value)
            with pytest.raises(StoreUnavailable):
                store.add_event("x", "during the outage")
            with pytest.raises(StoreUnavailable, match="not leading"):
                store.try_lead("replica-a")
        finally:
            postgres_server.start()
        # back: the same store works again, and nothing written before the outage was lost
        dev = store.get_device("cam-o")
        assert dev is not None and dev.online
        assert store.add_event("x", "after the outage").message == "after the outage"
        assert store.try_lead("replica-a")
        assert store.leader() == "replica-a"

        # a restart between two calls: the pooled connection is dead, nothing was sent on it, so the
        # call is retried on a fresh connection instead of failing
        postgres_server.stop()
        postgres_server.start()
        assert store.get_device("cam-o") == dev
    finally:
        store.close()


@pg
def test_postgres_unreachable_server_fails_at_open_with_a_clear_message() -> None:
    from tests.support.mosquitto import free_port

    url = f"postgresql://lepton:s3cret@127.0.0.1:{free_port()}/fleet"
    pytest.importorskip("psycopg")
    with pytest.raises(StoreUnavailable, match="cannot connect to the fleet store") as info:
        open_store(url, connect_timeout=2)
    assert "s3cret" not in str(info.value)
    assert "lepton:***@" in str(info.value)
