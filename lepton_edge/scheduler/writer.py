"""The telemetry writer: accepted telemetry written in batches, one transaction per batch on the SQL stores,
so ingestion keeps up with thousands of devices."""

from __future__ import annotations

import collections
import logging
import math
import threading
import time

from lepton_edge.config.scheduler import IngestConfig
from lepton_edge.scheduler.control import StoreHealth
from lepton_edge.scheduler.store import Store, StoreError, StoreUnavailable, TelemetryItem

log = logging.getLogger("lepton_edge.scheduler.writer")


class TelemetryWriter:
    """A queue filled by the MQTT thread (:meth:`put`) and emptied in batches by :meth:`run`."""

    def __init__(
        self,
        store: Store,
        ingest: IngestConfig,
        health: StoreHealth,
        counts: collections.Counter[str],
        stopping: threading.Event,
    ) -> None:
        self._store = store
        self._ingest = ingest
        self._health = health
        self._counts = counts
        self._stopping = stopping
        self.stop_deadline = math.inf
        """Once stopping: the queue is written until this monotonic time, then the rest is given up."""
        self._queue: collections.deque[TelemetryItem] = collections.deque()
        self._cond = threading.Condition()
        self.enqueued = 0
        self._written = 0
        self._written_cond = threading.Condition()
        self.backlog_peak = 0

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def oldest(self) -> float | None:
        """Receive time of the oldest queued message."""
        try:
            return self._queue[0][4]
        except IndexError:  # empty (the writer may empty it at any moment)
            return None

    def full(self) -> bool:
        return len(self._queue) >= self._ingest.queue_max

    def put(self, item: TelemetryItem) -> None:
        """Queue one message (the caller checked :meth:`full`)."""
        # no lock per message: only the MQTT thread appends, and deque appends and pops are atomic
        self._queue.append(item)
        self.enqueued += 1
        self._counts["telemetry"] += 1
        depth = len(self._queue)
        if depth > self.backlog_peak:
            self.backlog_peak = depth
        if depth == self._ingest.batch_size:  # a full batch: write it now (else within flush_interval_s)
            self.wake()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_written(self, mark: int, timeout: float) -> None:
        """Wait until the first ``mark`` messages ever queued are written (so a plan sees them)."""
        deadline = time.monotonic() + timeout
        with self._written_cond:
            while self._written < mark and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._written_cond.wait(min(remaining, 0.05))

    def _next_batch(self) -> list[TelemetryItem] | None:
        """The next batch (empty: look again), or None when stopping and done."""
        ingest, queue = self._ingest, self._queue
        with self._cond:
            while not queue and not self._stopping.is_set():
                self._cond.wait(ingest.flush_interval_s)
            if self._stopping.is_set() and (not queue or time.monotonic() > self.stop_deadline):
                if queue:
                    log.warning("stopping: %d telemetry message(s) not written in time", len(queue))
                return None
            if len(queue) < ingest.batch_size and not self._stopping.is_set():
                age = time.time() - queue[0][4]
                if age < ingest.flush_interval_s:
                    self._cond.wait(ingest.flush_interval_s - age)
            return [queue.popleft() for _ in range(min(len(queue), ingest.batch_size))]

    def run(self) -> None:
        """The writer loop, until stopping (after writing what is queued, within ``stop_deadline``)."""
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            try:
                self.write_batch(batch)
            except StoreUnavailable as e:
                self._health.failed(e)
                with self._cond:
                    self._queue.extendleft(reversed(batch))  # keep order; retried once the store answers
                if self._stopping.wait(1.0):
                    return
                continue
            except Exception:  # a bug must not end ingestion: the batch is lost, logged and counted
                log.exception("writing a telemetry batch of %d message(s) failed; dropped", len(batch))
                self._counts["telemetry_write_errors"] += len(batch)
            else:
                self._health.recovered()
                self._counts["telemetry_written"] += len(batch)
                self._counts["write_batches"] += 1
            with self._written_cond:
                self._written += len(batch)
                self._written_cond.notify_all()

    def write_batch(self, batch: list[TelemetryItem]) -> None:
        """Write one batch in one transaction (the store orders it by device, so replicas cannot deadlock).

        StoreUnavailable propagates (the batch is retried). When the store refuses the batch for another
        reason, its messages are written one by one and a refused one is skipped and counted, so one bad
        row cannot stall ingestion."""
        try:
            self._store.record_telemetry_batch(batch)
            return
        except StoreUnavailable:
            raise
        except StoreError as e:
            log.warning("a telemetry batch failed (%s); writing its messages one by one", e)
        for item in batch:
            try:
                self._store.record_telemetry(*item)
            except StoreUnavailable:
                raise
            except StoreError as e:
                self._counts["telemetry_write_errors"] += 1
                log.warning("telemetry of %s seq %d not stored: %s", item[0], item[2], e)
