"""Admission of MQTT messages: topic check, per-device flood limit, decoding, spoof check; rejections counted
and recorded as events (rate-limited per reason).

A flood is rejected before anything is decoded (a topic split, a dictionary lookup and the token bucket);
a rejected message still proves its device alive when a sample of it is valid (:mod:`.liveness`), and
each rejection is counted towards isolating the device (:mod:`.flood`).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from lepton_edge.config.scheduler import IngestConfig
from lepton_edge.fleet.mqtt import IncomingMessage
from lepton_edge.fleet.protocol import ProtocolError, TopicKind, decode, parse_topic
from lepton_edge.scheduler.control import ControlQueue
from lepton_edge.scheduler.liveness import LivenessMarks
from lepton_edge.scheduler.store import Store
from lepton_edge.scheduler.views import DeviceView, DeviceViews

log = logging.getLogger("lepton_edge.scheduler.admission")

REJECT_REASONS = ("invalid_topic", "malformed", "spoofed", "flood", "unknown_session", "backlog_full")
"""Why a message is rejected; each is counted and recorded as an event (rate-limited per reason)."""
LIVENESS_SAMPLE_S = 1.0
"""A device's messages rejected by its rate limit are decoded at most this often, to prove it alive."""


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
        self.liveness = LivenessMarks(store, control)
        self.flooded: Callable[[str, float], None] = lambda device_id, now: None
        """Called with each message rejected as a flood (the ingestion's flood isolation counts them)."""
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
        view = self._views.known_or_unknown(device_id, now)
        if not view.bucket.take(now):
            if kind is TopicKind.DEATH and now - view.death_sampled_at >= LIVENESS_SAMPLE_S:
                view.death_sampled_at = now
                death = self._current_session_death(message, view)
                if death is not None:  # the one death that matters is never lost to the device's own burst
                    return device_id, death
            self.reject("flood", topic, "device exceeds its message rate (ingest.device_rate_hz)", device_id)
            self.flooded(device_id, now)
            if view.online and now - view.sampled_at >= LIVENESS_SAMPLE_S:
                self._liveness_from_rejected(kind, message, view, now)
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

    def _current_session_death(self, message: IncomingMessage, view: DeviceView) -> Any | None:
        """The decoded death in ``message`` if it ends the device's current session, else None."""
        try:
            death = decode(TopicKind.DEATH, message.payload, message.topic)
        except ProtocolError:
            return None
        if view.online and death.device_id == view.device_id and death.session_id == view.session:
            return death
        return None

    def _liveness_from_rejected(self, kind: TopicKind, message: IncomingMessage, view: DeviceView, now: float) -> None:
        """A sample of a rejected message proves its device alive if it is valid and of the current session."""
        view.sampled_at = now
        if kind is TopicKind.DEATH:
            return
        try:
            decoded = decode(kind, message.payload, message.topic)
        except ProtocolError:
            return
        session = getattr(decoded, "session_id", None)
        if getattr(decoded, "device_id", view.device_id) == view.device_id and session == view.session:
            self.liveness.seen(view, now, stored=False)

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
