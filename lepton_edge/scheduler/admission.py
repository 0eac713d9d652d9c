"""Admission of MQTT messages: topic check, per-device flood limit, decoding, spoof check; rejections counted
and recorded as events (rate-limited per reason)."""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

from lepton_edge.config.scheduler import IngestConfig
from lepton_edge.fleet.mqtt import IncomingMessage
from lepton_edge.fleet.protocol import ProtocolError, TopicKind, decode, parse_topic
from lepton_edge.scheduler.control import ControlQueue
from lepton_edge.scheduler.store import Store
from lepton_edge.scheduler.views import DeviceViews

log = logging.getLogger("lepton_edge.scheduler.admission")

REJECT_REASONS = ("invalid_topic", "malformed", "spoofed", "flood", "unknown_session", "backlog_full")
"""Why a message is rejected; each is counted and recorded as an event (rate-limited per reason)."""


class Admission:
    """Decides which messages get in (:meth:`admit`) and records the ones that do not (:meth:`reject`)."""

    def __init__(
        self,
        store: Store,
        ingest: IngestConfig,
        views: DeviceViews,
        control: ControlQueue,
        counts: collections.Counter[str],
    ) -> None:
        self._store = store
        self._ingest = ingest
        self._views = views
        self._control = control
        self._counts = counts
        self.rejected: collections.Counter[str] = collections.Counter()
        self._event_at: dict[str, float] = {}
        self._since_event: collections.Counter[str] = collections.Counter()

    def admit(self, kind: TopicKind, message: IncomingMessage) -> tuple[str, Any] | None:
        """(device id, decoded message), or None (counted) if it is rejected."""
        self._counts["messages"] += 1
        topic = message.topic
        try:
            parsed = parse_topic(topic)
        except ProtocolError as e:
            self.reject("invalid_topic", topic, str(e))
            return None
        device_id = parsed.device_id
        if parsed.kind is not kind or device_id is None:
            self.reject("invalid_topic", topic, f"expected a {kind.value} topic")
            return None
        if not message.payload:
            self._counts["empty_payloads"] += 1  # a retained message being cleared: nothing to do
            return None
        now = time.time()
        if not self._views.known_or_unknown(device_id, now).bucket.take(now):
            self.reject("flood", topic, "device exceeds its message rate (ingest.device_rate_hz)", device_id)
            return None
        try:
            decoded = decode(kind, message.payload, topic)
        except ProtocolError as e:
            self.reject("malformed", topic, str(e), device_id)
            return None
        claimed = getattr(decoded, "device_id", device_id)
        if claimed != device_id:
            self.reject("spoofed", topic, f"payload claims device {claimed!r} on the topic of {device_id!r}", device_id)
            return None
        return device_id, decoded

    def reject(self, reason: str, topic: str, detail: str, device_id: str | None = None) -> None:
        """Count a rejected message; log it and record an event at most once per ``event_interval_s``."""
        self.rejected[reason] += 1
        self._since_event[reason] += 1
        now = time.monotonic()
        last = self._event_at.get(reason)
        if last is not None and now - last < self._ingest.event_interval_s:
            log.debug("rejected (%s) %s: %s", reason, topic, detail)
            return
        self._event_at[reason] = now
        count, self._since_event[reason] = self._since_event[reason], 0
        log.warning("rejected a message (%s) on %s: %s", reason, topic[:200], detail[:500])
        details = {"topic": topic[:256], "detail": detail[:1000], "count_since_last_event": count}
        self._control.put(
            lambda: self._store.add_event(
                f"ingest.rejected.{reason}",
                f"rejected {count} message(s): {reason} (e.g. on {topic[:120]})",
                device_id=device_id,
                severity="warning",
                details=details,
            )
        )
