"""Scenario 7: a pipeline stage hangs; the systemd watchdog pings stop, and "systemd" restarts the device."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_edge.fleet.protocol import TopicKind
from tests.reliability.harness import (
    DeviceProcess,
    account,
    device_config,
    wait_all_delivered,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

WATCHDOG_S = 2.0


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket that records every notification with its time."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="lepton-notify-", dir="/tmp"))  # AF_UNIX paths are short
        self.path = self.folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode(errors="replace")))

    def times(self, line: str, since: float = 0.0) -> list[float]:
        """Arrival times of notifications containing the assignment ``line`` (e.g. ``WATCHDOG=1``)."""
        with self._lock:
            return [t for t, text in self.messages if t >= since and line in text.splitlines()]

    def status_lines(self, since: float = 0.0) -> list[str]:
        with self._lock:
            return [
                line
                for t, text in self.messages
                if t >= since
                for line in text.splitlines()
                if line.startswith("STATUS=")
            ]

    def close(self) -> None:
        self._closing.set()
        self.sock.close()
        self._thread.join(timeout=2)
        self.path.unlink(missing_ok=True)
        self.folder.rmdir()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    listener = NotifySocket()
    yield listener
    listener.close()


def test_stuck_inference_stops_the_watchdog_pings_and_a_restart_recovers(
    scenario, broker, subscriber, device_id, devices, color_model, tmp_path, notify_socket
):
    record = scenario(
        "7 watchdog on a stuck stage",
        f"under a stand-in systemd notify socket with WatchdogSec={WATCHDOG_S:g} s, every inference starts "
        "blocking forever (a hung driver call: no error, no progress); when the watchdog expires the test "
        "does what systemd does: SIGABRT, then start again",
    )
    stuck = tmp_path / "stuck"
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))}
    device = DeviceProcess(
        tmp_path / "device",
        device_config(tmp_path, color_model, broker.port, device_id),
        env=env,
        stuck_file=stuck,
    )
    devices.append(device)
    device.start()
    wait_until(lambda: notify_socket.times("READY=1"), 60, "READY=1")
    wait_until(
        lambda: len(notify_socket.times("WATCHDOG=1")) >= 3, 20, "three watchdog pings while frames flow"
    )
    pings = notify_socket.times("WATCHDOG=1")
    record.metrics["ping_interval_s"] = round((pings[-1] - pings[0]) / (len(pings) - 1), 2)

    stuck.touch()
    stuck_at = time.monotonic()
    # The ping in flight when the stage hung may still go out; after that, none.
    last_ping = wait_until(
        lambda: (p := notify_socket.times("WATCHDOG=1")) and time.monotonic() - p[-1] > WATCHDOG_S and p[-1],
        4 * WATCHDOG_S,
        f"{WATCHDOG_S:g} s without a watchdog ping",
    )
    fired_at = last_ping + WATCHDOG_S  # where systemd's watchdog expires
    assert not notify_socket.times("WATCHDOG=1", since=fired_at)
    assert last_ping - stuck_at <= WATCHDOG_S / 2 + 0.5, "at most the ping already due when the stage hung"
    assert device.alive, "the process must still be up (it hangs, it does not crash)"
    statuses = notify_socket.status_lines(since=stuck_at)
    assert statuses, "STATUS lines keep coming: the process is alive, its progress is not"
    record.note(
        f"pings every {record.metrics['ping_interval_s']} s while frames flowed; the last one came at "
        f"{last_ping - stuck_at:+.2f} s from the hang; then no ping for the {WATCHDOG_S:g} s watchdog period "
        f"while the process stayed up and kept sending STATUS ({statuses[-1]!r})"
    )
    before = subscriber.count(TopicKind.RESULT)
    time.sleep(0.5)
    assert subscriber.count(TopicKind.RESULT) == before, "no result can come out of a hung stage"

    # systemd: WatchdogSignal=SIGABRT, then Restart=on-failure.
    assert device.process is not None
    os.kill(device.pid, signal.SIGABRT)
    device.process.wait(10)
    record.note(f"SIGABRT ended the process with code {device.process.returncode}")
    stuck.unlink()
    seen = subscriber.uids()
    restarted_at = time.monotonic()
    device.start()
    first = wait_until(
        lambda: subscriber.first_new_after(restarted_at, seen, TopicKind.RESULT),
        60,
        "results after the restart",
    )
    wait_until(lambda: notify_socket.times("WATCHDOG=1", since=restarted_at), 10, "pings after the restart")
    record.recovery_s = first.at - fired_at
    record.recovery_means = (
        "from the watchdog expiring to the first new result of the restarted device (systemd's RestartSec= "
        "delay not included)"
    )

    code, _ = device.terminate()
    assert code == 0, device.log_tail()
    assert notify_socket.times("STOPPING=1", since=restarted_at)
    wait_all_delivered(device, subscriber)
    accounting = account(device, subscriber)
    record.set_accounting(accounting.summary())
    assert accounting.durable_lost == []
    assert accounting.conflicting_duplicates == []
