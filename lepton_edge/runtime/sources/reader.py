"""From a :class:`Source` to a stream of :class:`Frame`: sequence numbers, capture timestamps, stall
detection and reconnection with capped exponential backoff.

Also holds the small helpers every source module shares (credential masking, query parameters,
pacing, the lazy OpenCV import), so that the source modules depend on this one and not on each other.
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

from lepton_edge.config.pipeline import SourceConfig
from lepton_edge.core.errors import SourceError, error_text
from lepton_edge.core.results import Frame
from lepton_edge.runtime.sources.base import Source, SourceState

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Helpers shared by the source modules


_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/?#]*@")
_SECRET_QUERY = re.compile(r"([?&][^=&#\s]*(?:pass|pwd|token|secret|key|auth|sig)[^=&#\s]*=)[^&#\s]*", re.I)
_SECRET_GST = re.compile(r"(\s(?:user-id|user-pw|password|passwd)=)(\"[^\"]*\"|\S+)", re.I)


def mask_uri(uri: str) -> str:
    """``uri`` with credentials hidden, safe for logs: ``rtsp://user:pw@cam/x`` -> ``rtsp://***@cam/x``.

    Secret-looking query values (``?token=...``) and GStreamer ``user-pw=`` properties are masked too.
    """
    uri = _USERINFO.sub(r"\1***@", uri)
    uri = _SECRET_QUERY.sub(r"\1***", uri)
    return _SECRET_GST.sub(r"\1***", uri)


def int_param(minimum: int | None = None) -> Callable[[str], int]:
    """A query parameter converter for integers, optionally with a lower bound."""

    def convert(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("expected an integer") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return convert


def float_param(minimum: float = 0.0) -> Callable[[str], float]:
    """A query parameter converter for finite numbers >= ``minimum``."""

    def convert(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
        if not math.isfinite(value) or value < minimum:
            raise ValueError(f"must be a finite number of at least {minimum:g}")
        return value

    return convert


def parse_query(uri: str, query: str, spec: dict[str, Callable[[str], Any]]) -> dict[str, Any]:
    """Parse ``a=1&b=2`` with one converter per allowed key.

    Unknown keys, missing or repeated values and values the converter rejects (``ValueError``) raise
    :class:`SourceError` naming the parameter and the (masked) URI.
    """
    values: dict[str, Any] = {}
    shown = mask_uri(uri)
    for part in query.split("&"):
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key, raw = unquote(key), unquote(raw)
        if key not in spec:
            raise SourceError(f"{shown}: unknown parameter {key!r}; allowed parameters: {', '.join(spec)}")
        if not sep or not raw:
            raise SourceError(f"{shown}: parameter {key!r} needs a value ({key}=...)")
        if key in values:
            raise SourceError(f"{shown}: parameter {key!r} is given more than once")
        try:
            values[key] = spec[key](raw)
        except ValueError as e:
            raise SourceError(f"{shown}: bad value {raw!r} for parameter {key!r}: {e}") from None
    return values


class Pacer:
    """Releases frames on a fixed schedule (start + n / fps) on the monotonic clock.

    A caller that fell behind skips ahead to the current slot instead of bursting to catch up.
    """

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self._start: float | None = None
        self._tick = 0

    def reset(self) -> None:
        self._start = None

    def wait(self) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start, self._tick = now, 0
            return
        self._tick += 1
        target = self._start + self._tick * self.period
        if now < target:
            time.sleep(target - now)
        else:
            self._tick = int((now - self._start) / self.period)


def import_cv2() -> Any:
    """Import OpenCV, or raise :class:`SourceError` saying how to install it."""
    try:
        import cv2
    except ImportError as e:
        raise SourceError(
            "OpenCV (cv2) is not installed, and image, video, camera and synthetic sources need it: "
            "install it with `pip install 'lepton-edge[opencv]'`, or on Jetson use the system OpenCV from "
            "JetPack (`sudo apt install python3-opencv`)"
        ) from e
    return cv2


# ---------------------------------------------------------------------------------------------------------
# The reader

_STATE_LOG_LEVEL = {
    SourceState.CONNECTING: logging.INFO,
    SourceState.STREAMING: logging.INFO,
    SourceState.STALLED: logging.WARNING,
    SourceState.RECONNECTING: logging.WARNING,
    SourceState.ENDED: logging.INFO,
    SourceState.FAILED: logging.ERROR,
    SourceState.STOPPED: logging.INFO,
}
_DESCRIBE_INTERVAL_S = 1.0
"""How often the reading thread refreshes the source description that :meth:`FrameReader.stats` shows."""
_LOUD_ATTEMPTS = 3
"""Failed reconnect attempts logged as warnings; later ones go to debug so a long outage does not spam."""


class FrameReader:
    """Reads a :class:`Source` as a stream of :class:`Frame` (iterate it once, from one thread).

    Offline sources raise :class:`SourceError` on any failure and end (or loop, with ``config.loop``)
    at end of stream. Live sources survive failures: on an open or read error, an unexpected end of
    stream, or a stall (no frame for ``reconnect.stall_timeout_s``) the source is closed and reopened
    with capped exponential backoff until it delivers again, or until ``reconnect.max_attempts`` failed
    attempts in a row (0 = never give up) make the reader FAILED and raise SourceError.

    Setting ``stop`` (or calling :meth:`close`) ends the iteration at the next frame boundary, and
    within about 0.1 s while waiting to reconnect. A read that blocks inside the source returns at the
    latest after the source's own read timeout (streams use ``stall_timeout_s``).

    ``state``, ``frames``, ``reconnects``, ``last_error`` and :meth:`stats` may be read from any thread.
    """

    def __init__(self, source: Source, config: SourceConfig, stop: threading.Event | None = None) -> None:
        self.source = source
        self.config = config
        self.source_id = config.id or mask_uri(config.uri)
        self._stop = stop if stop is not None else threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._state = SourceState.CONNECTING
        self._frames = 0
        self._opens = 0
        self._reconnects = 0
        self._last_error: str | None = None
        self._last_frame_ts: float | None = None
        self._reading_since: float | None = None
        self._description: dict[str, Any] = {}
        self._described_at = 0.0
        self._started = False
        self._active = False
        self._failures = 0
        """Recovery attempts since the last frame; reset by every frame."""
        self._backoff = config.reconnect.initial_backoff_s

    # -- read-only views for other threads ------------------------------------------------------------

    @property
    def state(self) -> SourceState:
        """The current state; a live source blocked in ``read()`` longer than the stall timeout is STALLED."""
        with self._lock:
            state, since = self._state, self._reading_since
        if (
            state is SourceState.STREAMING
            and since is not None
            and self.source.live
            and time.monotonic() - since > self.config.reconnect.stall_timeout_s
        ):
            return SourceState.STALLED
        return state

    @property
    def frames(self) -> int:
        """Frames delivered so far."""
        with self._lock:
            return self._frames

    @property
    def opens(self) -> int:
        """Times the source was opened (first open, loops, reconnects): frames of another open start a new
        sequence, which resets a stateful model's state."""
        with self._lock:
            return self._opens

    @property
    def reconnects(self) -> int:
        """Successful reopens of the source after a failure."""
        with self._lock:
            return self._reconnects

    @property
    def last_error(self) -> str | None:
        """The most recent failure, kept after recovery for diagnosis."""
        with self._lock:
            return self._last_error

    def stats(self) -> dict[str, Any]:
        """A snapshot for logs and telemetry."""
        state = self.state
        with self._lock:
            age = None if self._last_frame_ts is None else time.monotonic() - self._last_frame_ts
            return {
                "source_id": self.source_id,
                "state": state.value,
                "live": self.source.live,
                "frames": self._frames,
                "reconnects": self._reconnects,
                "last_error": self._last_error,
                "last_frame_age_s": None if age is None else round(age, 3),
                "source": dict(self._description),
            }

    # -- lifecycle -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading and close the source. From another thread, the reading thread closes it on its
        way out (after its current read returns)."""
        self._closed.set()
        with self._lock:
            if self._active:
                return
        self._close_source()
        if self.state not in (SourceState.ENDED, SourceState.FAILED):
            self._set_state(SourceState.STOPPED)

    def __iter__(self) -> Iterator[Frame]:
        with self._lock:
            if self._started:
                raise RuntimeError("a FrameReader can be iterated only once; create a new one to read again")
            self._started = True
        return self._run()

    def _run(self) -> Iterator[Frame]:
        with self._lock:
            self._active = True
        try:
            if self._stopping() or not self._open_first():
                return
            finite = bool(getattr(self.source, "finite", not self.source.live))
            pass_frames = 0
            while not self._stopping():
                data, error, waited = self._read_once()
                if self._stopping():
                    return
                if error is not None:
                    if not self._on_read_error(error, waited):
                        return
                    continue
                if data is None:
                    if not self._at_end(finite, pass_frames, waited):
                        return
                    pass_frames = 0
                    continue
                pass_frames += 1
                yield self._stamp(data)
        except Exception as e:
            # Whatever ends the reader, its state must say so: a consumer may be watching it.
            if self._state is not SourceState.FAILED:
                self._fail(error_text(e))
            raise
        finally:
            self._close_source()
            with self._lock:
                self._active = False
                if self._state not in (SourceState.ENDED, SourceState.FAILED):
                    self._state = SourceState.STOPPED
                    stopped = True
                else:
                    stopped = False
            if stopped:
                log.info("%s: stopped after %d frame(s)", self.source_id, self.frames)

    def _read_once(self) -> tuple[Any, BaseException | None, float]:
        """One ``source.read()``: (data, None, seconds waited), or (None, the error, seconds waited)."""
        started = time.monotonic()
        with self._lock:
            self._reading_since = started
        try:
            data, error = self.source.read(), None
        except Exception as e:
            data, error = None, e
        finally:
            with self._lock:
                self._reading_since = None
        return data, error, time.monotonic() - started

    def _on_read_error(self, error: BaseException, waited: float) -> bool:
        """Offline sources fail (raised); live ones reconnect. True to keep reading."""
        reason = f"reading failed: {error_text(error)}"
        if not self.source.live:
            self._fail(reason)
            if isinstance(error, SourceError):
                raise error
            raise SourceError(f"{self.source_id}: {reason}") from error
        return self._recover(reason, waited)

    def _at_end(self, finite: bool, pass_frames: int, waited: float) -> bool:
        """The source ran out: loop a finite one if configured, reconnect an endless live one, else end.
        True to keep reading (a new pass)."""
        if finite and self.config.loop:
            if pass_frames == 0:
                log.warning("%s: ended without a single frame; not looping", self.source_id)
                self._set_state(SourceState.ENDED)
                return False
            log.debug("%s: end of stream, looping", self.source_id)
            return self._reopen()
        if self.source.live and not finite:
            return self._recover("the stream ended", waited)
        self._refresh_description()
        self._set_state(SourceState.ENDED, "end of stream")
        return False

    def _stamp(self, data: Any) -> Frame:
        """The next frame: sequence number, monotonic capture time and wall time; the reader is healthy again."""
        capture_ts, wall_time = time.monotonic(), time.time()
        with self._lock:
            seq = self._frames
            self._frames += 1
            self._last_frame_ts = capture_ts
            self._failures = 0
            self._backoff = self.config.reconnect.initial_backoff_s
        self._set_state(SourceState.STREAMING)
        if capture_ts - self._described_at >= _DESCRIBE_INTERVAL_S:
            self._refresh_description()
        return Frame(data, seq, self.source_id, capture_ts, wall_time)

    # -- internals -------------------------------------------------------------------------------------

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._closed.is_set()

    def _set_state(self, state: SourceState, reason: str | None = None) -> None:
        with self._lock:
            if self._state is state:
                return
            self._state = state
            reconnects = self._reconnects
        if state is SourceState.STREAMING and reconnects:
            message = f"streaming again (reconnects so far: {reconnects})"
        else:
            message = state.value + (f": {reason}" if reason else "")
        log.log(_STATE_LOG_LEVEL[state], "%s: %s", self.source_id, message)

    def _fail(self, reason: str) -> None:
        with self._lock:
            self._last_error = reason
        self._set_state(SourceState.FAILED, reason)

    def _open_source(self) -> None:
        self.source.open()
        with self._lock:
            self._opens += 1
        self._refresh_description()

    def _refresh_description(self) -> None:
        # Only the reading thread calls describe(): captures are not safe to query from other threads.
        description = self.source.describe()
        self._described_at = time.monotonic()
        with self._lock:
            self._description = description

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception:
            log.warning("%s: error while closing the source", self.source_id, exc_info=True)

    def _open_first(self) -> bool:
        """Open the source; False when stopped before it opened."""
        self._set_state(SourceState.CONNECTING)
        try:
            self._open_source()
        except SourceError as e:
            if not self.source.live:
                self._fail(str(e))
                raise
            return self._recover(f"cannot open: {e}", 0.0)
        log.info("%s: opened %s", self.source_id, self._description)
        return True

    def _reopen(self) -> bool:
        """Restart a finite source from the beginning (``loop``)."""
        self._close_source()
        try:
            self._open_source()
        except SourceError as e:
            if not self.source.live:
                self._fail(str(e))
                raise
            return self._recover(f"cannot reopen: {e}", 0.0)
        return True

    def _recover(self, reason: str, waited: float) -> bool:
        """Close and reopen a live source with backoff. False when stopped meanwhile; raises when out of
        attempts."""
        stall_timeout = self.config.reconnect.stall_timeout_s
        if waited >= 0.9 * stall_timeout:
            reason = f"no frame for {waited:.1f} s (stall timeout {stall_timeout:g} s); {reason}"
            self._set_state(SourceState.STALLED, reason)
        else:
            self._set_state(SourceState.RECONNECTING, reason)
        with self._lock:
            self._last_error = reason
        self._close_source()
        policy = self.config.reconnect
        while True:
            if policy.max_attempts and self._failures >= policy.max_attempts:
                reason = (
                    f"gave up after {self._failures} reconnect attempt(s) without a frame "
                    f"(reconnect.max_attempts = {policy.max_attempts}); last error: {self.last_error}"
                )
                self._fail(reason)
                raise SourceError(f"{self.source_id}: {reason}")
            delay = self._backoff * random.uniform(0.8, 1.0)
            self._backoff = min(self._backoff * 2, policy.max_backoff_s)
            if self._sleep(delay):
                return False
            self._failures += 1
            self._set_state(SourceState.RECONNECTING, reason)
            try:
                self._open_source()
            except SourceError as e:
                with self._lock:
                    self._last_error = str(e)
                level = logging.WARNING if self._failures <= _LOUD_ATTEMPTS else logging.DEBUG
                log.log(level, "%s: reconnect attempt %d failed: %s", self.source_id, self._failures, e)
                if self._failures == _LOUD_ATTEMPTS and self._failures != policy.max_attempts:
                    log.warning("%s: still retrying; further attempts log at debug level", self.source_id)
                continue
            with self._lock:
                self._reconnects += 1
            log.info("%s: reopened after %d attempt(s)", self.source_id, self._failures)
            return True

    def _sleep(self, seconds: float) -> bool:
        """Wait, waking at least every 0.1 s to honour stop and close; True when the reader must stop."""
        deadline = time.monotonic() + seconds
        while not self._stopping():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._stop.wait(min(remaining, 0.1))
        return True
