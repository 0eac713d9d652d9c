"""The control worker: store work handed over by the MQTT thread, applied in order; and the store's health."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from lepton_edge.scheduler.store import StoreError, StoreUnavailable

log = logging.getLogger("lepton_edge.scheduler.control")

CONTROL_QUEUE_MAX = 100_000


class StoreHealth:
    """Whether the store answers. ``on_recovered`` runs when it answers again after failing."""

    def __init__(self, on_recovered: Callable[[], None]) -> None:
        self.ok = True
        self.error: str | None = None
        self._on_recovered = on_recovered
        self._logged_at = 0.0

    def failed(self, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"
        was_ok, self.ok, self.error = self.ok, False, message
        now = time.monotonic()
        if was_ok or now - self._logged_at > 30:
            self._logged_at = now
            log.error("fleet store unavailable (%s); ingestion is queued and retried", message[:500])

    def recovered(self) -> None:
        if self.ok:
            return
        self.ok, self.error = True, None
        log.info("fleet store available again; resynchronising")
        self._on_recovered()

    def guard(self, fn: Callable[[], Any]) -> Any:
        """``fn()``, or None when the store fails (recorded)."""
        try:
            return fn()
        except StoreError as e:
            self.failed(e)
            return None


class ControlQueue:
    """Births, deaths, config reports and events applied to the store in arrival order, on one thread;
    an item is retried while the store is unavailable. When full, the oldest item is dropped (counted)."""

    def __init__(self, health: StoreHealth, counts: collections.Counter[str], stopping: threading.Event) -> None:
        self._health = health
        self._counts = counts
        self._stopping = stopping
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, fn: Callable[[], None]) -> None:
        with self._cond:
            if len(self._queue) >= CONTROL_QUEUE_MAX:
                self._queue.popleft()
                self._counts["control_dropped"] += 1
            self._queue.append(fn)
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def run(self) -> None:
        """The worker loop, until ``stopping`` is set."""
        while True:
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait(1.0)
                if self._stopping.is_set():
                    return
                fn = self._queue[0]
            try:
                fn()
            except StoreUnavailable as e:
                self._health.failed(e)
                if self._stopping.wait(1.0):
                    return
                continue  # retry the same item, in order
            except Exception:
                log.exception("scheduler control task failed; skipped")
            else:
                self._health.recovered()
            with self._cond:
                if self._queue and self._queue[0] is fn:
                    self._queue.popleft()
