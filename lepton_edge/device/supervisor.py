"""The one supervision loop of the device service, with or without the agent.

It runs a :class:`Supervised` service until its pipeline ends by itself (the source ended, ``max_frames``),
``duration_s`` passes or SIGTERM/SIGINT arrives (a second signal aborts, discarding frames in flight).
Under systemd (``Type=notify``) it reports ``READY=1`` when the service says it is ready, STATUS lines, and
``STOPPING=1``. The watchdog is fed by progress: results while a pipeline runs, this loop's rounds while
idle (so an idle device is not restarted, but a hung one is). While a pipeline runs and has no console sink,
a stats line is logged every ``pipeline.stats_interval_s``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from lepton_edge.core.errors import LeptonError
from lepton_edge.core.metrics import RateMeter
from lepton_edge.device.controller import RuntimeController
from lepton_edge.device.systemd import FrameWatchdog, ServiceNotifier

log = logging.getLogger(__name__)

ROUND_S = 0.2
"""How often the loop checks for the end, the deadline, readiness and the stats line."""


class Supervised(Protocol):
    """A service the supervisor runs: the pipeline alone, or the agent."""

    runtime: RuntimeController
    watch_before_ready: bool
    """True: the watchdog runs from the start (the service is alive before it is ready); False: from READY."""

    def start(self) -> Any: ...

    def stop(self) -> None: ...

    def ready_status(self) -> str | None:
        """READY's status text once the service is ready, else None."""

    def details(self) -> str:
        """Fields added to STATUS and to the final ``done`` line (may be empty)."""


class Supervisor:
    """Runs a :class:`Supervised` service; see the module docstring."""

    def __init__(self, service: Supervised, *, duration_s: float | None = None,
                 notifier: ServiceNotifier | None = None) -> None:
        self.service = service
        self.runtime = service.runtime
        self.notifier = notifier or ServiceNotifier()
        self.stop_requested = threading.Event()
        self._deadline = None if duration_s is None else time.monotonic() + duration_s
        self._idle_rounds = 0
        self._ready = False
        self._status_rate = RateMeter(self.runtime.stats)
        self._log_rate = RateMeter(self.runtime.stats)
        self._next_log = 0.0
        self._watchdog = FrameWatchdog(lambda: self.runtime.stats.results + self._idle_rounds, self._status,
                                       notifier=self.notifier)

    def run(self) -> int:
        """Run to the end; returns the exit code (the error, if any, is logged)."""
        restore = install_signal_handlers(self.stop_requested.set, self.runtime.abort)
        error: LeptonError | None = None
        try:
            self.service.start()
            self._next_log = time.monotonic() + self.runtime.config.pipeline.stats_interval_s
            if self.service.watch_before_ready:
                self._watchdog.start()
            error = self._loop()
        finally:
            self._watchdog.stop()  # no STATUS or ping may follow STOPPING=1
            self.notifier.stopping()
            try:
                self.service.stop()
            except LeptonError as e:
                error = error or e
            finally:
                restore()
        if error is not None:
            log.error("%s", error)
            return error.exit_code
        self._log_done()
        return 0

    def _loop(self) -> LeptonError | None:
        while not self.stop_requested.is_set():
            if self.runtime.idle:
                self._idle_rounds += 1
            if not self._ready:
                self._check_ready()
            try:
                if self.runtime.wait_finished(ROUND_S):
                    return None  # the source ended or max_frames was reached
            except LeptonError as e:
                return e
            if self._deadline is not None and time.monotonic() >= self._deadline:
                return None
            self._log_stats_when_due()
        return None

    def _check_ready(self) -> None:
        status = self.service.ready_status()
        if status is None:
            return
        self._ready = True
        self.notifier.ready(status)
        if not self.service.watch_before_ready:
            self._watchdog.start()

    def _status(self) -> str:
        stats = self.runtime.stats
        state = "idle" if self.runtime.idle else "running"
        text = f"{state} fps={self._status_rate.update():.1f} source={stats.source_state} results={stats.results}"
        details = self.service.details()
        return f"{text} {details}" if details else text

    def _log_stats_when_due(self) -> None:
        pipelines = self.runtime.pipelines.values()
        if time.monotonic() < self._next_log or not pipelines or any(
                s.name == "console" for pipeline in pipelines for s in pipeline.sinks):
            return
        self._next_log = time.monotonic() + self.runtime.config.pipeline.stats_interval_s
        snap = self.runtime.stats.snapshot()
        lat = snap["latency_ms"]
        log.info("stats fps=%.1f results=%d e2e_p50_ms=%.2f e2e_p99_ms=%.2f infer_p50_ms=%.2f age_p99_ms=%.2f "
                 "source=%s drops=%d", self._log_rate.update(), snap["results"], lat["e2e"]["p50"],
                 lat["e2e"]["p99"], lat["infer"]["p50"], lat["frame_age"]["p99"], snap["source_state"],
                 sum(snap["drops"].values()))

    def _log_done(self) -> None:
        snap = self.runtime.stats.snapshot()
        e2e = snap["latency_ms"]["e2e"]
        details = self.service.details()
        log.info("done frames=%d results=%d drops=%s fps=%.1f e2e_p50_ms=%.2f e2e_p99_ms=%.2f%s",
                 snap["frames_in"], snap["results"], snap["drops"] or "none",
                 snap["results"] / max(snap["uptime_s"], 1e-9), e2e["p50"], e2e["p99"],
                 f" {details}" if details else "")


def install_signal_handlers(stop: Callable[[], None], abort: Callable[[], None]) -> Callable[[], None]:
    """SIGTERM/SIGINT: ``stop()``; a second one: ``abort()``. Returns a function that restores the previous
    handlers. Does nothing off the main thread (Python allows handlers only there)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    count = 0

    def handler(signum: int, _frame: Any) -> None:
        nonlocal count
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            log.info("%s received: stopping (finishing frames in flight; again to abort)", name)
            stop()
        else:
            log.warning("%s received again: aborting", name)
            abort()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
