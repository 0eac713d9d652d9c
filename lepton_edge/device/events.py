"""What the agent tells the fleet through the outbox besides telemetry: events, config reports, rejections.

Every handler of incoming messages decodes with :func:`lepton_edge.fleet.protocol.decode`; a bad payload is
counted, logged and reported as a ``message.rejected`` event (at most one log line and event per handler
every ``REJECTION_REPORT_INTERVAL_S``, with the number suppressed), and never reaches the network loop as
an exception.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from lepton_edge.core.errors import LeptonError, error_text
from lepton_edge.fleet.outbox import Outbox
from lepton_edge.fleet.protocol import Event, ReportedConfig, config_reported_topic, encode, events_topic

log = logging.getLogger(__name__)

REJECTION_REPORT_INTERVAL_S = 10.0
"""At most one log line and one event per handler in this time; the others are counted."""


class FleetEvents:
    """Events and config reports of one device, queued in the outbox at high priority. Never raises."""

    def __init__(self, device_id: str, outbox: Outbox, session_id: Callable[[], int]) -> None:
        self.device_id = device_id
        self.outbox = outbox
        self._session_id = session_id

    def event(self, kind: str, severity: str, message: str, details: dict[str, Any] | None = None) -> None:
        try:
            event = Event(
                device_id=self.device_id,
                session_id=self._session_id(),
                id=uuid.uuid4().hex,
                kind=kind,
                severity=severity,  # type: ignore[arg-type]
                message=message[:4096],
                details=details or {},
                timestamp=time.time(),
            )
            self.outbox.put(events_topic(self.device_id), encode(event), qos=1, priority="high")
        except (LeptonError, ValueError) as e:
            log.error("cannot publish event %s (%s): %s", kind, message[:200], error_text(e))

    def report(self, report: ReportedConfig) -> None:
        """Queue a reported config (retained)."""
        try:
            self.outbox.put(
                config_reported_topic(self.device_id), encode(report), qos=1, priority="high", retain=True
            )
        except (LeptonError, ValueError) as e:
            log.error("cannot publish the config report v%d: %s", report.version, error_text(e))


class Rejections:
    """Counts rejected messages per handler and reports them without letting a flood flood the logs."""

    def __init__(self, publish_event: Callable[[str, str, str, dict[str, Any]], None]) -> None:
        self.counts: Counter[str] = Counter()
        self._publish_event = publish_event
        self._last_report: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, handler: str, reason: str, topic: str | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            self.counts[handler] += 1
            last = self._last_report.get(handler)
            if last is not None and now - last < REJECTION_REPORT_INTERVAL_S:
                self._suppressed[handler] += 1
                return
            self._last_report[handler] = now
            suppressed, self._suppressed[handler] = self._suppressed[handler], 0
        reason = reason[:1000]
        log.warning(
            "rejected a %s message%s: %s%s",
            handler,
            f" on {topic[:200]!r}" if topic else "",
            reason,
            f" ({suppressed} more since the last report)" if suppressed else "",
        )
        self._publish_event(
            "message.rejected",
            "warning",
            f"rejected a {handler} message: {reason}"[:4096],
            {"handler": handler, "reason": reason, "topic": (topic or "")[:1000], "suppressed": suppressed},
        )

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())
