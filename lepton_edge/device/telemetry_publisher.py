"""The telemetry loop: one message every ``agent.telemetry_interval_s``, numbered per session.

Telemetry goes through the outbox at low priority (dropped oldest-first when the outbox is full). The
interval is read from the running config each round, so a shorter one applied remotely applies at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from lepton_edge.core.errors import LeptonError, error_text
from lepton_edge.device.telemetry import TelemetryCollector
from lepton_edge.fleet.outbox import Outbox
from lepton_edge.fleet.protocol import encode, telemetry_topic

log = logging.getLogger(__name__)


class TelemetryPublisher:
    """Queues a :class:`TelemetryCollector` message every ``interval_s()`` seconds, or at once on :meth:`now`."""

    def __init__(
        self,
        collector: TelemetryCollector,
        outbox: Outbox,
        session_id: int,
        interval_s: Callable[[], float],
        stopping: threading.Event,
    ) -> None:
        self.collector = collector
        self.outbox = outbox
        self._interval_s = interval_s
        self._stopping = stopping
        self._lock = threading.Lock()
        self._session_id = session_id
        self._seq = 0
        self._wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lepton-agent-telemetry", daemon=True)

    def new_session(self, session_id: int) -> None:
        """Number from 1 again, and count frames and drops from zero, for ``session_id``."""
        with self._lock:
            self._session_id = session_id
            self._seq = 0
            self.collector.new_session()

    def publish(self) -> int | None:
        """Build and queue one telemetry message; returns its seq (None if it could not be queued)."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            message = self.collector.build(self._session_id, seq, self._interval_s())
        try:
            self.outbox.put(telemetry_topic(self.collector.device_id), encode(message), qos=1, priority="low")
        except (LeptonError, ValueError) as e:
            log.error("cannot queue telemetry: %s", error_text(e))
            return None
        return seq

    def now(self) -> None:
        """Publish the next message now instead of at the end of the interval."""
        self._wake.set()

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the loop to end (call once ``stopping`` is set)."""
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stopping.is_set():
            interval = self._interval_s()
            next_at = min(next_at, time.monotonic() + interval)  # a shorter interval applies at once
            if self._wake.wait(max(0.0, next_at - time.monotonic())):
                self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.publish()
            except Exception:
                log.exception("building telemetry failed")
            next_at = time.monotonic() + interval
