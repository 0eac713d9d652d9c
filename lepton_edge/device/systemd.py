"""systemd integration without a dependency: ``sd_notify`` and a watchdog fed only by real progress.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``; the service reports ``READY=1`` when it is up,
``STATUS=...`` lines that ``systemctl status`` shows, and ``STOPPING=1`` when it shuts down. With
``WatchdogSec=`` systemd also passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``) and restarts the service if
no ``WATCHDOG=1`` arrives in time. :class:`FrameWatchdog` sends that ping only while a progress counter
(frames completed) advances, so a stuck pipeline stage is restarted instead of looking alive.

Outside systemd every call is a no-op that returns False.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

DEFAULT_STATUS_INTERVAL_S = 5.0
"""Seconds between STATUS lines when systemd's watchdog is off."""


def _socket_address(value: str) -> str | None:
    """``$NOTIFY_SOCKET`` as a Python AF_UNIX address: a path, or ``@name`` for an abstract socket."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, newline-separated assignments) to systemd.

    Returns True when the datagram was sent; False when ``$NOTIFY_SOCKET`` is unset (not run by systemd
    with ``Type=notify``), unsupported, or unreachable.
    """
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = _socket_address(target)
    if address is None:
        log.warning("NOTIFY_SOCKET=%r is not a socket path or @abstract name; systemd notifications are off",
                    target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as e:
        log.warning("cannot notify systemd at NOTIFY_SOCKET=%s: %s", target, e)
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ServiceNotifier:
    """The service's side of the systemd notify protocol. ``environ`` defaults to ``os.environ``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    @property
    def enabled(self) -> bool:
        """True when systemd listens (``$NOTIFY_SOCKET`` is set)."""
        return bool(self.environ.get("NOTIFY_SOCKET"))

    def notify(self, state: str) -> bool:
        return notify(state, self.environ)

    def ready(self, status: str | None = None) -> bool:
        """The service is up: systemd considers the start complete."""
        return self.notify("READY=1" if status is None else f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def stopping(self) -> bool:
        """The service is shutting down (draining frames, flushing sinks)."""
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """One watchdog keep-alive ping."""
        return self.notify("WATCHDOG=1")

    def watchdog_timeout(self) -> float | None:
        """systemd's watchdog timeout in seconds, or None when the watchdog is off or meant for another PID."""
        usec = self.environ.get("WATCHDOG_USEC")
        if not usec:
            return None
        pid = self.environ.get("WATCHDOG_PID")
        if pid:
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                log.warning("WATCHDOG_PID=%r is not a process id; ignoring the watchdog", pid)
                return None
        try:
            timeout_us = int(usec)
        except ValueError:
            log.warning("WATCHDOG_USEC=%r is not an integer; ignoring the watchdog", usec)
            return None
        return timeout_us / 1e6 if timeout_us > 0 else None

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of systemd's timeout (None when the watchdog is off for us)."""
        timeout = self.watchdog_timeout()
        return None if timeout is None else timeout / 2


class FrameWatchdog:
    """Pings the systemd watchdog only while ``progress()`` advances, and sends periodic STATUS lines.

    Every ``interval`` seconds (half the watchdog timeout by default) it reads ``progress()`` (a counter
    such as the number of results produced); if the counter grew since the last ping it sends
    ``WATCHDOG=1``, otherwise it withholds the ping, so a stalled pipeline makes systemd restart the
    service. ``status()`` (optional) builds the STATUS text, e.g. ``"fps=29.8 state=streaming results=1234"``.
    Pings are sent only when systemd's watchdog is meant for this process.
    """

    def __init__(
        self,
        progress: Callable[[], int],
        status: Callable[[], str] | None = None,
        *,
        notifier: ServiceNotifier | None = None,
        interval: float | None = None,
    ) -> None:
        self.notifier = notifier or ServiceNotifier()
        self.progress = progress
        self.status_text = status
        self.watchdog_enabled = self.notifier.watchdog_interval() is not None
        if interval is None:
            interval = self.notifier.watchdog_interval() or DEFAULT_STATUS_INTERVAL_S
        self.interval = interval
        if self.interval <= 0:
            raise ValueError(f"FrameWatchdog interval must be positive, got {interval}")
        self.pings = 0
        self.withheld = 0
        self._last: int | None = None
        self._stalled = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> FrameWatchdog:
        """Start the thread; the counter's current value is the baseline for the first ping."""
        if self._thread is not None:
            raise RuntimeError("FrameWatchdog already started")
        self._last = self._read_progress()
        self._thread = threading.Thread(target=self._run, name="systemd-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread and wait for it. Safe to call twice."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> FrameWatchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read_progress(self) -> int | None:
        try:
            return int(self.progress())
        except Exception:  # a broken counter must look like a stall, not kill the thread
            log.exception("watchdog progress callable failed; withholding the watchdog ping")
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def tick(self) -> None:
        """One round: ping if progress was made since the last ping, then send the status line."""
        current = self._read_progress()
        advanced = current is not None and (self._last is None or current > self._last)
        if advanced:
            self._last = current
            if self._stalled:
                log.info("progress resumed (counter=%s); watchdog pings resume", current)
                self._stalled = False
            if self.watchdog_enabled and self.notifier.watchdog():
                self.pings += 1
        else:
            self.withheld += 1
            if not self._stalled:
                self._stalled = True
                log.warning("no progress in the last %.1f s (counter=%s): withholding the watchdog ping%s",
                            self.interval, current,
                            "; systemd restarts the service if this lasts" if self.watchdog_enabled else "")
        if self.status_text is not None:
            try:
                text = self.status_text()
            except Exception:
                log.exception("watchdog status callable failed")
            else:
                self.notifier.status(text)
