"""Scenario 5: the file system holding the outbox fills up, then space comes back."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
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

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

TINY_FS_MIB = 4
FULL_S = 3.0


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs mounted for the test (needs root and mount); skipped with the reason otherwise."""
    if os.geteuid() != 0:
        pytest.skip("the disk-full scenario mounts a tiny tmpfs, which needs root (run the suite as root)")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TINY_FS_MIB}m,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): no tiny file system"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write a file in ``folder`` until the file system refuses another byte; returns it."""
    filler = folder / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            try:
                while True:
                    f.write(block[:size])
            except OSError:
                continue
    return filler


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
    first = wait_until(
        lambda: subscriber.first_new_after(freed_at, seen), 20, "a new message after freeing space"
    )
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
        record.note(
            "expected: the oldest telemetry is dropped (and counted) so the durable message is stored"
        )
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
        record.note(
            "expected: a drop reason (e.g. `disk_full`) counts the refused put, so telemetry shows it"
        )
        assert sum(outbox.stats().dropped.values()) >= 1
    finally:
        outbox.close()
