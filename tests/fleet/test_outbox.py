"""The on-disk outbox (order, durability, bounds, expiry, counters) and the Forwarder with a real broker."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_edge.config.fleet import OutboxConfig
from lepton_edge.fleet.outbox import (
    MESSAGE_ID_PROPERTY,
    Forwarder,
    Outbox,
    OutboxDiskFull,
    OutboxError,
    OutboxFull,
    bench,
)
from tests.support.mosquitto import MessageCollector
from tests.support.tiny_fs import fill, mounted_tmpfs

ROOT = Path(__file__).parents[2]
TOPIC = "lepton/v1/devices/d/events"  # 26 bytes


def open_outbox(tmp_path: Path, **kwargs) -> Outbox:
    return Outbox(OutboxConfig(path=tmp_path / "outbox" / "outbox.db", **kwargs))


def payload_for(size: int) -> bytes:
    """A payload that makes a message on TOPIC exactly ``size`` stored bytes."""
    return b"x" * (size - len(TOPIC))


# -- the queue ----------------------------------------------------------------------------------------


def test_put_pending_ack_in_order(tmp_path):
    with open_outbox(tmp_path) as outbox:
        woken: list[int] = []
        outbox.add_listener(lambda: woken.append(1))
        ids = [outbox.put(TOPIC, f"m{i}".encode(), qos=1, priority="high" if i % 2 else "low") for i in range(5)]
        assert ids == sorted(ids) and len(set(ids)) == 5 and len(woken) == 5
        pending = outbox.pending()
        assert [m.payload for m in pending] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        assert [m.priority for m in pending] == ["low", "high", "low", "high", "low"]
        assert pending[0].uid == f"{outbox.instance}-{ids[0]}" == outbox.uid(ids[0])
        assert pending[0].topic == TOPIC and pending[0].qos == 1 and pending[0].retain is False
        assert [m.id for m in outbox.pending(2, after_id=ids[1])] == ids[2:4]
        assert outbox.depth() == 5 and outbox.bytes() == 5 * (len(TOPIC) + 2)

        assert outbox.ack(ids[1]) is True
        assert outbox.ack(ids[1]) is False  # already gone
        assert outbox.ack(10**9) is False
        assert [m.id for m in outbox.pending()] == [ids[0], ids[2], ids[3], ids[4]]
        assert outbox.depth() == 4 and outbox.bytes() == 4 * (len(TOPIC) + 2)


def test_invalid_puts_are_refused(tmp_path):
    with open_outbox(tmp_path) as outbox:
        with pytest.raises(ValueError, match="QoS 1 or 2"):
            outbox.put(TOPIC, b"x", qos=0)
        with pytest.raises(ValueError, match="priority must be 'high' or 'low'"):
            outbox.put(TOPIC, b"x", priority="urgent")  # type: ignore[arg-type]
    with pytest.raises(OutboxError, match="is closed"):
        outbox.put(TOPIC, b"x")


def test_messages_and_ids_survive_reopening(tmp_path):
    with open_outbox(tmp_path) as outbox:
        instance = outbox.instance
        first = outbox.put(TOPIC, b"a", retain=True)
        second = outbox.put(TOPIC, b"b", qos=2, priority="high")
    with open_outbox(tmp_path) as outbox:
        assert outbox.instance == instance
        assert [(m.id, m.payload, m.qos, m.retain, m.priority) for m in outbox.pending()] == [
            (first, b"a", 1, True, "low"),
            (second, b"b", 2, False, "high"),
        ]
        assert outbox.depth() == 2 and outbox.bytes() == 2 * (len(TOPIC) + 1)
        outbox.ack(first)
        outbox.ack(second)
    with open_outbox(tmp_path) as outbox:
        # Ids are never reused, even once the table is empty: uids stay unique for receivers.
        assert outbox.put(TOPIC, b"c") == second + 1


def test_a_killed_process_loses_no_put(tmp_path):
    path = tmp_path / "outbox.db"
    child = textwrap.dedent(
        f"""
        import os, signal
        from lepton_edge.fleet.outbox import Outbox
        from lepton_edge.config.fleet import OutboxConfig
        outbox = Outbox(OutboxConfig(path={str(path)!r}))
        for i in range(300):
            outbox.put("t/x", b"message %d" % i, priority="high")
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no checkpoint
        """
    )
    result = subprocess.run([sys.executable, "-c", child], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == -signal.SIGKILL
    with Outbox(OutboxConfig(path=path)) as outbox:  # the lock died with the process
        assert [m.payload for m in outbox.pending()] == [b"message %d" % i for i in range(300)]


def test_one_process_per_outbox_file(tmp_path):
    with open_outbox(tmp_path), pytest.raises(OutboxError, match="in use by another process"):
        open_outbox(tmp_path)


def test_a_file_that_is_not_an_outbox_is_refused(tmp_path):
    bad = tmp_path / "outbox" / "outbox.db"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match=r"not a usable outbox database.*move the file away"):
        open_outbox(tmp_path)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema', '99'), ('instance', 'x')")
    db.close()
    with pytest.raises(OutboxError, match="schema version 99"):
        Outbox(OutboxConfig(path=other))


def test_an_unopenable_path_says_so(tmp_path):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(OutboxError, match=r"a-folder: cannot open the database: .*permissions and free space"):
        Outbox(OutboxConfig(path=folder))


def test_full_outbox_drops_low_priority_oldest_first(tmp_path):
    with open_outbox(tmp_path, max_bytes=4096) as outbox:
        low = [outbox.put(TOPIC, payload_for(1000), priority="low") for _ in range(4)]
        assert outbox.bytes() == 4000
        newest_low = outbox.put(TOPIC, payload_for(1000), priority="low")
        assert [m.id for m in outbox.pending()] == [*low[1:], newest_low]  # the oldest low went
        high = outbox.put(TOPIC, payload_for(1500), priority="high")  # needs two low ones to go
        assert [m.id for m in outbox.pending()] == [low[3], newest_low, high]
        assert outbox.bytes() == 3500 and outbox.depth() == 3
        stats = outbox.stats()
        assert stats.dropped["full_low_priority"] == 3 and stats.over_bound == 0


def test_high_priority_is_never_dropped_silently(tmp_path):
    with open_outbox(tmp_path, max_bytes=4096) as outbox:
        low = outbox.put(TOPIC, payload_for(1000), priority="low")
        high = [outbox.put(TOPIC, payload_for(1000), priority="high") for _ in range(3)]
        # 4000 bytes stored. A new high message evicts the low one, then fits.
        high.append(outbox.put(TOPIC, payload_for(1000), priority="high"))
        assert low not in [m.id for m in outbox.pending()]
        # Only high messages now: a new low-priority message is itself refused...
        assert outbox.put(TOPIC, payload_for(500), priority="low") is None
        # ...and new high-priority messages are kept over the bound, up to twice the bound.
        for _ in range(4):
            high.append(outbox.put(TOPIC, payload_for(1000), priority="high"))
        assert outbox.bytes() == 8000
        with pytest.raises(OutboxFull, match=r"twice max_bytes=4096.*unreachable for too long"):
            outbox.put(TOPIC, payload_for(1000), priority="high")
        assert [m.id for m in outbox.pending()] == high  # every high-priority message is still there
        stats = outbox.stats()
        assert stats.dropped == {
            "full_low_priority": 2,
            "expired": 0,
            "full_high_priority": 1,
            "rejected": 0,
            "disk_full": 0,
        }
        assert stats.over_bound == 4 and stats.depth == 8 and stats.bytes == 8000


def test_a_low_message_larger_than_the_whole_bound_is_refused(tmp_path):
    with open_outbox(tmp_path, max_bytes=4096) as outbox:
        kept = outbox.put(TOPIC, payload_for(1000), priority="low")
        assert outbox.put(TOPIC, payload_for(5000), priority="low") is None
        assert [m.id for m in outbox.pending()] == [kept]  # nothing destroyed for a hopeless message


def test_old_messages_expire_and_are_counted(tmp_path):
    with open_outbox(tmp_path, max_age_s=60) as outbox:
        old = [outbox.put(TOPIC, b"old") for _ in range(3)]
        assert outbox.expire(now=time.time() + 30) == 0
        assert outbox.expire(now=time.time() + 61) == 3
        assert outbox.depth() == 0 and outbox.bytes() == 0 and outbox.ack(old[0]) is False
        assert outbox.stats().dropped["expired"] == 3
    with open_outbox(tmp_path, max_age_s=0.2) as outbox:
        outbox.put(TOPIC, b"short-lived")
        time.sleep(1.1)  # expiry runs at most once a second, from put() and pending()
        assert outbox.pending() == []
        assert outbox.stats().dropped["expired"] == 4  # counters survive reopening
    with open_outbox(tmp_path, max_age_s=None) as outbox:
        assert outbox.expire(now=time.time() + 10**9) == 0


def test_counters_survive_restarts(tmp_path):
    with open_outbox(tmp_path, max_bytes=4096) as outbox:
        outbox.put(TOPIC, payload_for(5000), priority="low")
        message = outbox.put(TOPIC, b"refused by the broker", priority="high")
        outbox.drop(message, "rejected")
    with open_outbox(tmp_path, max_bytes=4096) as outbox:
        stats = outbox.stats()
        assert stats.dropped["full_low_priority"] == 1 and stats.dropped["rejected"] == 1 and stats.depth == 0


# -- a full file system -------------------------------------------------------------------------------

RESERVE = 256 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for the test (needs root); skipped with the reason otherwise."""
    yield from mounted_tmpfs(tmp_path / "small", 8)


def open_small(folder: Path) -> Outbox:
    return Outbox(OutboxConfig(path=folder / "outbox.db", disk_reserve_bytes=RESERVE))


def test_the_disk_reserve_is_kept_beside_the_database(tmp_path):
    path = tmp_path / "outbox" / "outbox.db"
    reserve = Path(f"{path}.reserve")
    with Outbox(OutboxConfig(path=path, disk_reserve_bytes=RESERVE)):
        assert reserve.stat().st_size == RESERVE
        assert reserve.stat().st_blocks * 512 >= RESERVE  # allocated, not a sparse file
    reserve.write_bytes(b"partial")  # e.g. a crash while it was written
    with Outbox(OutboxConfig(path=path, disk_reserve_bytes=RESERVE)):
        assert reserve.stat().st_size == RESERVE
    with Outbox(OutboxConfig(path=path, disk_reserve_bytes=0)):
        assert not reserve.exists()
    assert OutboxConfig.model_fields["disk_reserve_bytes"].default == 1024 * 1024


def test_a_full_disk_drops_the_oldest_telemetry_for_a_durable_message(small_fs):
    reserve = small_fs / "outbox.db.reserve"
    with open_small(small_fs) as outbox:
        low = [outbox.put(TOPIC, b"t" * 400, priority="low") for _ in range(300)]  # about 128 KiB
        high = outbox.put(TOPIC, b"kept", priority="high")
    # Closing deleted the WAL, so the next write must grow a file (an old WAL may have room to reuse).
    with open_small(small_fs) as outbox:
        filler = fill(small_fs)

        # Telemetry does not spend the reserve: it is refused and counted.
        with pytest.raises(OutboxDiskFull, match=r"outbox.db: database or disk is full: .*free some space"):
            outbox.put(TOPIC, b"t" * 400, priority="low")
        assert reserve.exists() and outbox.depth() == 301
        assert outbox.stats().dropped["disk_full"] == 1

        event = outbox.put(TOPIC, b"e" * 300, priority="high")
        stats = outbox.stats()
        assert not reserve.exists()  # spent to make room
        dropped = stats.dropped["full_low_priority"]
        assert 0 < dropped < len(low)  # only what was needed, oldest first
        assert [m.id for m in outbox.pending()] == [*low[dropped:], high, event]
        assert stats.depth == 301 - dropped + 1 and stats.dropped["disk_full"] == 1

        # More durable messages keep being stored while telemetry can make room (about 40 of 128 KiB).
        for _ in range(20):
            assert outbox.put(TOPIC, b"e" * 2000, priority="high") is not None
        assert outbox.stats().dropped["disk_full"] == 1

        filler.unlink()
        time.sleep(1.1)  # the reserve is retried at most once a second, from put()
        outbox.put(TOPIC, b"after", priority="high")
        assert reserve.stat().st_size == RESERVE
    with open_small(small_fs) as outbox:
        assert outbox.stats().dropped["disk_full"] == 1  # saved by the transactions after space came back


def test_a_durable_message_with_no_telemetry_to_drop_is_refused_and_counted(small_fs):
    reserve = small_fs / "outbox.db.reserve"
    with open_small(small_fs) as outbox:
        kept = [outbox.put(TOPIC, b"h" * 400, priority="high") for _ in range(3)]
    with open_small(small_fs) as outbox:  # with no WAL file, as above
        filler = fill(small_fs)
        for _ in range(2):
            # SQLite fails this at COMMIT: the transaction must be rolled back and the totals recounted.
            with pytest.raises(OutboxDiskFull, match="disk is full"):
                outbox.put(TOPIC, b"h" * 300, priority="high")
        assert reserve.exists()  # nothing could be dropped with it: kept for when something can
        assert outbox.depth() == 3 and outbox.bytes() == 3 * (len(TOPIC) + 400)
        assert outbox.stats().dropped["disk_full"] == 2
        filler.unlink()
        # closed without another put: close() saves the counters kept in memory
    with open_small(small_fs) as outbox:
        assert outbox.stats().dropped["disk_full"] == 2
        later = outbox.put(TOPIC, b"later", priority="high")
        assert [m.id for m in outbox.pending()] == [*kept, later]


def test_bench_reports_a_rate(tmp_path, capsys):
    assert bench(count=200) > 0
    from lepton_edge.fleet.outbox import main

    main(["--bench", "--count", "200"])
    assert "messages/s" in capsys.readouterr().out


# -- the forwarder ------------------------------------------------------------------------------------


def start_subscriber(make_mqtt_client, broker, unique, **kwargs) -> MessageCollector:
    received = MessageCollector()
    sub = make_mqtt_client(broker, f"sub-{unique}", **kwargs)
    sub.subscribe(f"fw/{unique}/#", received)
    sub.start()
    assert sub.wait_connected(10)
    assert sub.wait_subscribed(5)
    return received


def first_arrivals(messages) -> list[str]:
    """Message uids in order of first arrival, duplicates dropped as a receiver would."""
    seen: dict[str, None] = {}
    for m in messages:
        seen.setdefault(m.user_properties[MESSAGE_ID_PROPERTY], None)
    return list(seen)


def test_forwarder_delivers_in_order_and_deletes_on_ack(mqtt_broker, make_mqtt_client, unique, tmp_path):
    received = start_subscriber(make_mqtt_client, mqtt_broker, unique)
    client = make_mqtt_client(mqtt_broker, f"dev-{unique}")
    client.start()
    assert client.wait_connected(10)
    with open_outbox(tmp_path) as outbox:
        # A safety timer of a minute: only wake-on-put can deliver within the test's timeouts.
        forwarder = Forwarder(outbox, client, max_inflight=4, safety_wake_s=60)
        forwarder.start()
        try:
            time.sleep(0.2)  # the forwarder is idle, waiting
            ids = [outbox.put(f"fw/{unique}/{i % 3}", f"{i}".encode(), priority="high") for i in range(25)]
            assert forwarder.wait_idle(10)
            messages = received.wait_for(25)
            assert [m.payload for m in messages] == [f"{i}".encode() for i in range(25)]
            assert first_arrivals(messages) == [outbox.uid(i) for i in ids]
            assert outbox.depth() == 0 and forwarder.acknowledged == 25
        finally:
            forwarder.stop()


def test_messages_put_while_the_broker_is_down_arrive_in_order_after_it_returns(
    fresh_broker, make_mqtt_client, unique, tmp_path
):
    # The subscriber's persistent session is saved at the broker's graceful stop and restored after.
    received = start_subscriber(make_mqtt_client, fresh_broker, unique, session_expiry_s=300)
    client = make_mqtt_client(fresh_broker, f"dev-{unique}")
    client.start()
    assert client.wait_connected(10)
    with open_outbox(tmp_path) as outbox:
        forwarder = Forwarder(outbox, client, max_inflight=8)
        forwarder.start()
        try:
            ids = [outbox.put(f"fw/{unique}/a", f"before {i}".encode()) for i in range(5)]
            assert forwarder.wait_idle(10)
            fresh_broker.stop()
            ids += [outbox.put(f"fw/{unique}/b", f"during {i}".encode()) for i in range(40)]
            time.sleep(0.3)
            assert outbox.depth() == 40  # nothing is deleted without a PUBACK
            fresh_broker.start()
            assert forwarder.wait_idle(15)
        finally:
            forwarder.stop()
        expected = [f"before {i}".encode() for i in range(5)] + [f"during {i}".encode() for i in range(40)]
        messages = received.wait_for(45)
        assert first_arrivals(messages) == [outbox.uid(i) for i in ids]
        by_uid = {m.user_properties[MESSAGE_ID_PROPERTY]: m.payload for m in messages}
        assert [by_uid[outbox.uid(i)] for i in ids] == expected
        assert outbox.depth() == 0


def test_unacknowledged_messages_survive_a_crash_and_are_resent(fresh_broker, make_mqtt_client, unique, tmp_path):
    received = start_subscriber(make_mqtt_client, fresh_broker, unique)
    client = make_mqtt_client(fresh_broker, f"dev-{unique}")
    client.start()
    assert client.wait_connected(10)
    outbox = open_outbox(tmp_path)
    forwarder = Forwarder(outbox, client, max_inflight=5)
    forwarder.start()
    fresh_broker.pause()  # the broker reads nothing and acknowledges nothing
    try:
        ids = [outbox.put(f"fw/{unique}/x", f"{i}".encode()) for i in range(12)]
        deadline = time.monotonic() + 10
        while forwarder.in_flight < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert forwarder.in_flight == 5 and forwarder.published == 5  # bounded in flight
        time.sleep(0.3)
        assert outbox.depth() == 12  # sent but not acknowledged: still stored
        # The device process "dies": forwarder and client go away without any acknowledgement.
        forwarder.stop(drain_timeout=0.1)
        client.stop(timeout=0.1)
        outbox.close()
    finally:
        fresh_broker.resume()

    # A new process: reopen the outbox and forward again. Everything is resent from the oldest.
    outbox = open_outbox(tmp_path)
    assert [m.id for m in outbox.pending()] == ids
    client = make_mqtt_client(fresh_broker, f"dev2-{unique}")
    client.start()
    assert client.wait_connected(10)
    forwarder = Forwarder(outbox, client, max_inflight=5)
    forwarder.start()
    try:
        assert forwarder.wait_idle(15)
    finally:
        forwarder.stop()
    # The first process's messages may also have reached the broker: receivers drop duplicates by uid.
    messages = received.wait_for(12)
    assert first_arrivals(messages) == [outbox.uid(i) for i in ids]
    assert outbox.depth() == 0
    outbox.close()


def test_messages_in_flight_when_the_connection_drops_are_resent_before_newer_ones(
    fresh_broker, make_mqtt_client, unique, tmp_path
):
    received = start_subscriber(make_mqtt_client, fresh_broker, unique)
    # One message on the wire at a time: the rest of what the forwarder hands over waits in the client.
    client = make_mqtt_client(fresh_broker, f"dev-{unique}", max_inflight=1)
    client.start()
    assert client.wait_connected(10)
    with open_outbox(tmp_path) as outbox:
        forwarder = Forwarder(outbox, client, max_inflight=10)
        # Runs after the forwarder's own hook: on reconnect the forwarder is awake while the client has
        # not yet resent the old messages. Sending anything newer now would overtake them.
        client.add_on_connected(lambda c: time.sleep(0.3) if c.connection_count > 1 else None)
        forwarder.start()
        try:
            fresh_broker.pause()
            ids = [outbox.put(f"fw/{unique}/y", f"old {i}".encode()) for i in range(3)]
            deadline = time.monotonic() + 10
            while forwarder.in_flight < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert forwarder.in_flight == 3
            # The connection drops while they wait for PUBACKs; newer messages arrive meanwhile.
            client._paho.socket().shutdown(2)  # type: ignore[union-attr]
            while client.connected and time.monotonic() < deadline:
                time.sleep(0.02)
            ids += [outbox.put(f"fw/{unique}/y", f"new {i}".encode()) for i in range(3)]
            fresh_broker.resume()
            assert forwarder.wait_idle(15)
        finally:
            forwarder.stop()
        assert client.connection_count >= 2
        messages = received.wait_for(6)
        assert first_arrivals(messages) == [outbox.uid(i) for i in ids]
        assert outbox.depth() == 0


def test_a_restarted_client_gets_everything_unacknowledged_again(fresh_broker, make_mqtt_client, unique, tmp_path):
    received = start_subscriber(make_mqtt_client, fresh_broker, unique)
    client = make_mqtt_client(fresh_broker, f"dev-{unique}")
    client.start()
    assert client.wait_connected(10)
    with open_outbox(tmp_path) as outbox:
        forwarder = Forwarder(outbox, client, max_inflight=4)
        forwarder.start()
        try:
            fresh_broker.pause()
            try:
                ids = [outbox.put(f"fw/{unique}/z", f"{i}".encode()) for i in range(10)]
                deadline = time.monotonic() + 10
                while forwarder.in_flight < 4 and time.monotonic() < deadline:
                    time.sleep(0.02)
                client.stop(timeout=0.1)  # the in-flight handles fail: "client stopped"
                deadline = time.monotonic() + 10
                while forwarder.in_flight and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert forwarder.in_flight == 0 and outbox.depth() == 10
            finally:
                fresh_broker.resume()
            client.start()  # same client and forwarder: the forwarder starts again from the oldest
            assert forwarder.wait_idle(15)
        finally:
            forwarder.stop()
        messages = received.wait_for(10)
        assert first_arrivals(messages) == [outbox.uid(i) for i in ids]
        assert outbox.depth() == 0


def test_messages_the_broker_refuses_are_dropped_counted_and_do_not_block(make_mqtt_client, unique, tmp_path):
    from tests.support.mosquitto import MosquittoBroker

    with MosquittoBroker(tmp_path / "broker", acl="topic readwrite fw/#\n") as broker:
        received = start_subscriber(make_mqtt_client, broker, unique)
        client = make_mqtt_client(broker, f"dev-{unique}")
        client.start()
        assert client.wait_connected(10)
        with open_outbox(tmp_path) as outbox:
            forwarder = Forwarder(outbox, client)
            forwarder.start()
            try:
                outbox.put(f"fw/{unique}/ok", b"1")
                outbox.put("forbidden/topic", b"2", priority="high")
                outbox.put(f"fw/{unique}/ok", b"3")
                assert forwarder.wait_idle(10)
            finally:
                forwarder.stop()
            assert received.wait_for(2) and received.payloads == [b"1", b"3"]
            assert outbox.stats().dropped["rejected"] == 1 and forwarder.rejected == 1
