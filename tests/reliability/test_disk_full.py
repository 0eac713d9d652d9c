"""Scenario 5: the file system holding the outbox fills up, then space comes back."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lepton_edge.config.fleet import OutboxConfig
from lepton_edge.fleet.outbox import Outbox, OutboxError
from lepton_edge.fleet.protocol import TopicKind
from tests.reliability.harness import (
    DeviceProcess,
    account,
    device_config,
    request,
    results_by_session,
    wait_all_delivered,
    wait_until,
)
from tests.support.tiny_fs import TINY_FS_MIB, fill, tiny_fs_mount  # noqa: F401 (the tiny_fs fixture)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

FULL_S = 3.0


def test_full_disk_keeps_the_device_running_and_it_recovers_when_space_frees(
    scenario, broker, subscriber, device_id, devices, color_model, tmp_path, tiny_fs
):
    record = scenario(
        "5 outbox disk full",
        f"the outbox lives on a {TINY_FS_MIB} MiB tmpfs; another file fills it to the last byte for "
        f"{FULL_S:g} s, then is deleted",
    )
    config = device_config(
        tmp_path, color_model, broker.port, device_id, agent={"outbox": {"path": str(tiny_fs / "outbox.db")}}
    )
    device = DeviceProcess(tmp_path / "device", config)
    devices.append(device)
    device.start()
    wait_until(lambda: subscriber.count(TopicKind.RESULT) >= 20, 60, "20 results before the fault")

    filler = fill(tiny_fs)
    full_since = time.time()
    wait_until(
        lambda: any(r["event"] == "put_failed" and r["t"] >= full_since for r in device.ledger()),
        10,
        "a put refused by the full disk",
    )
    time.sleep(FULL_S)
    assert device.alive, f"the device died on a full disk:\n{device.log_tail()}"
    stats = request(broker.port, device_id, "stats").result
    results_sink = stats["results"]
    assert results_sink["errors"] > 0 and "disk is full" in (results_sink["last_error"] or "")
    assert stats["pipeline"]["results"] > 0
    record.note(
        f"while full: the pipeline kept running; the results sink counted {results_sink['errors']} failed "
        f"write(s) (`stats` command: {results_sink['last_error']!r}); each failure is logged"
    )

    seen = subscriber.uids()
    filler.unlink()
    freed_at, freed_wall = time.monotonic(), time.time()
    first = wait_until(lambda: subscriber.first_new_after(freed_at, seen), 20, "a new message after freeing space")
    record.recovery_s = first.at - freed_at
    record.recovery_means = "from the filler file being deleted to the first new message delivered"
    wait_until(
        lambda: sum(r["event"] == "put" and r["t"] >= freed_wall for r in device.ledger()) >= 10,
        20,
        "puts succeeding again",
    )

    code, _ = device.terminate()
    assert code == 0, device.log_tail()
    wait_all_delivered(device, subscriber)
    accounting = account(device, subscriber)
    record.set_accounting(accounting.summary())
    outbox = device.outbox_state()
    refused = accounting.put_failures
    record.metrics["outbox_drop_counters"] = {k: v for k, v in outbox["dropped"].items() if v}
    record.note(
        f"{refused.get('high', 0)} durable and {refused.get('low', 0)} telemetry message(s) were refused "
        "at put (never stored, so never promised); every message that was stored was delivered"
    )
    reported = [t.outbox.dropped for t in subscriber.decoded(TopicKind.TELEMETRY)]
    record.note(
        "the refused puts are counted in the outbox's drop counters as `disk_full` (telemetry reports "
        f"{reported[-1] if reported else {}}); result seq numbers still skip nothing"
    )
    assert accounting.durable_lost == []
    assert accounting.conflicting_duplicates == []
    assert refused.get("high", 0) > 0  # the fault really refused durable messages
    assert outbox["depth"] == 0
    for session, seqs in results_by_session(subscriber).items():
        assert sorted(seqs) == list(range(1, max(seqs) + 1)), f"session {session} has a gap in its results"


# -- the outbox on a full disk, directly


def _outbox_with_telemetry(folder: Path, count: int = 50) -> Outbox:
    outbox = Outbox(OutboxConfig(path=folder / "outbox.db"))
    for i in range(count):
        outbox.put("lepton/v1/devices/d/telemetry", b"t" * 400 + str(i).encode(), priority="low")
    return outbox


def test_full_disk_drops_stored_telemetry_before_refusing_a_durable_message(scenario, tiny_fs):
    record = scenario(
        "5b disk full: telemetry dropped first",
        "the outbox holds 50 telemetry messages when the file system fills; then a durable message is put",
    )
    outbox = _outbox_with_telemetry(tiny_fs)
    try:
        fill(tiny_fs)
        record.note("expected: the oldest telemetry is dropped (and counted) so the durable message is stored")
        message_id = outbox.put("lepton/v1/devices/d/events", b"e" * 300, priority="high")
        assert message_id is not None
        assert outbox.stats().dropped["full_low_priority"] > 0
    finally:
        outbox.close()


def test_puts_refused_by_a_full_disk_are_counted_once_space_is_back(scenario, tiny_fs):
    record = scenario(
        "5c disk full: refusals counted",
        "a durable put is refused by a full file system; space comes back; the outbox's counters are read",
    )
    # No telemetry stored: nothing can be dropped to make room, so the durable put is really refused.
    outbox = _outbox_with_telemetry(tiny_fs, count=0)
    try:
        filler = fill(tiny_fs)
        with pytest.raises(OutboxError, match="disk is full"):
            outbox.put("lepton/v1/devices/d/results", b"r" * 300, priority="high")
        filler.unlink()
        outbox.put("lepton/v1/devices/d/results", b"r" * 300, priority="high")
        record.note("expected: a drop reason (e.g. `disk_full`) counts the refused put, so telemetry shows it")
        assert sum(outbox.stats().dropped.values()) >= 1
    finally:
        outbox.close()


def test_a_device_restarted_on_a_full_state_disk_starts_and_serves(
    scenario, broker, subscriber, device_id, devices, color_model, tmp_path, tiny_fs
):
    """Issue #12 item 3: a full state disk made every start fail (ENOSPC writing the session counter)."""
    record = scenario(
        "5d restart on a full state disk",
        f"the whole state folder (session counter, config, outbox) lives on a {TINY_FS_MIB} MiB tmpfs; the "
        "device runs, stops, the disk is filled to the last byte, and the device is started again",
    )
    config = device_config(tmp_path, color_model, broker.port, device_id, agent={"state_dir": str(tiny_fs / "state")})
    device = DeviceProcess(tmp_path / "device", config)
    devices.append(device)
    device.start()
    wait_until(lambda: subscriber.count(TopicKind.RESULT) >= 5, 60, "results before the disk fills")
    code, _ = device.terminate()
    assert code == 0, device.log_tail()
    filler = fill(tiny_fs)
    assert os.statvfs(tiny_fs).f_bavail == 0

    restarted_at = time.monotonic()
    before = subscriber.count(TopicKind.RESULT)
    device.start()

    def serving() -> bool:
        assert device.alive, f"the device died on a full state disk:\n{device.log_tail()}"
        return subscriber.count(TopicKind.RESULT) >= before + 5

    wait_until(serving, 60, "results after the restart")
    record.recovery_s = time.monotonic() - restarted_at
    record.recovery_means = "from the restart on the full disk to the fifth new result delivered"
    time.sleep(1.0)
    assert device.alive, f"the device died on a full state disk:\n{device.log_tail()}"
    sessions = sorted({t.session_id for t in subscriber.decoded(TopicKind.TELEMETRY)})
    assert len(sessions) == 2 and sessions[0] < sessions[1], sessions  # the counter still increases
    stats = request(broker.port, device_id, "stats").result
    record.note(f"after the restart on a full disk: stats outbox {stats.get('outbox')}")
    filler.unlink()
    code, _ = device.terminate()
    assert code == 0, device.log_tail()
