"""Pipeline results over MQTT: :class:`MqttResultSink` (a message per frame) and :class:`AnalyticsEventSink`
(analytics events and counts, always through the outbox).

A token bucket limits the rate (results above ``max_rate_hz`` are dropped on the pipeline thread, before
any work, and counted). Durable results go through the on-disk outbox and are never lost; the others
are published directly, best effort (QoS 1 messages wait in the client's memory during short outages).
The sink's own thread builds and sends the messages, so the pipeline never waits for the network.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from lepton_edge.config.device import ResultsConfig
from lepton_edge.core.errors import LeptonError, error_text
from lepton_edge.core.metrics import TokenBucket
from lepton_edge.core.results import Result
from lepton_edge.fleet.protocol import (
    ANALYTICS_EVENT_PREFIX,
    AnalyticsDetail,
    Event,
    ResultMessage,
    analytics_event_id,
    encode,
    events_topic,
    results_topic,
)
from lepton_edge.runtime.analytics.events import AnalyticsEvent
from lepton_edge.runtime.sinks.base import Sink

log = logging.getLogger(__name__)


class MqttResultSink(Sink):
    """Publishes each result as a :class:`~lepton_edge.fleet.protocol.ResultMessage` on the results topic.

    ``session_id()`` gives the current lepton session; ``seq`` restarts at 1 in every session and the
    message id ``<device>.<session>.<seq>`` is unique on the device (sessions never repeat).
    """

    name = "mqtt"

    def __init__(
        self,
        config: ResultsConfig,
        device_id: str,
        *,
        client: Any,
        outbox: Any,
        session_id: Callable[[], int],
        queue_size: int = 256,
    ) -> None:
        super().__init__(queue_size)
        self.config = config
        self.device_id = device_id
        self.topic = results_topic(device_id)
        self.client = client
        self.outbox = outbox
        self.session_id = session_id
        self.bucket = TokenBucket(config.max_rate_hz, now=time.monotonic())
        self.rate_limited = 0
        """Results dropped because they came faster than max_rate_hz."""
        self.published = 0
        """Messages handed to the outbox (durable) or the client (best effort)."""
        self.send_failed = 0
        """Best-effort messages the client could not deliver (queue full, QoS 0 while offline)."""
        self._session = 0
        self._seq = 0

    def offer(self, result: Result) -> bool:
        if not self.config.enabled or self.config.mode == "events":
            return True
        if not self.bucket.take(time.monotonic()):  # offer() runs on the pipeline's postprocess thread
            self.rate_limited += 1
            return True  # dropped by policy, not because the sink is stuck
        return super().offer(result)

    def write(self, result: Result) -> None:
        session = self.session_id()
        if session != self._session:
            self._session, self._seq = session, 0
        seq = self._seq + 1
        message = ResultMessage.from_result(
            result,
            device_id=self.device_id,
            session_id=session,
            seq=seq,
            message_id=f"{self.device_id}.{session}.{seq}",
            durable=self.config.durable,
        )
        payload = encode(message)
        if self.config.durable:
            self.outbox.put(self.topic, payload, qos=1, priority="high")  # OutboxFull: counted, no gap
        else:
            handle = self.client.publish(self.topic, payload, qos=self.config.qos)
            handle.add_done_callback(self._count_failure)
        self._seq = seq
        self.published += 1

    def _count_failure(self, handle: Any) -> None:
        if not handle.ok:
            self.send_failed += 1

    def stats(self) -> dict[str, Any]:
        return {
            **super().stats(),
            "published": self.published,
            "rate_limited": self.rate_limited,
            "send_failed": self.send_failed,
        }


ClipRef = Callable[[str, AnalyticsEvent, str], str | None]
"""The clip reference of an event (stream, event, event id), starting its clip (``runtime.clips.ClipRefs``)."""


def _event_wall(result: Result, capture_ts: float) -> float:
    """Wall time of an event: zone exits of ended tracks carry the frame's own capture time."""
    return result.wall_time + (capture_ts - result.capture_ts)


def analytics_event_key(device_id: str) -> Callable[[Result, AnalyticsEvent], str]:
    """The protocol id of an analytics event of a result (the id :func:`analytics_events` gives it), for the clip
    sink: its clips list the ids of the events they hold."""

    def key(result: Result, e: AnalyticsEvent) -> str:
        return analytics_event_id(device_id, result.source_id, e.track_id, e.kind, e.name or None,
                                  _event_wall(result, e.capture_ts))

    return key


def analytics_events(result: Result, device_id: str, session_id: int, clip_ref: ClipRef | None = None) -> list[Event]:
    """The protocol events of one result's analytics: one per zone, line, loitering or appeared event, and one for
    the periodic counts when the result carries them. Capture times are the frame's wall clock. With ``clip_ref``,
    each event's ``snapshot`` is its clip (``clip:<id>@<offset s>``), or null when it has none."""
    analytics = getattr(result, "analytics", None)
    if analytics is None:
        return []
    stream = result.source_id
    key = analytics_event_key(device_id)

    def wall(capture_ts: float) -> float:
        return _event_wall(result, capture_ts)

    out = []
    for e in analytics.events:
        snapshot = None if clip_ref is None else clip_ref(stream, e, key(result, e))
        detail = AnalyticsDetail(
            stream=stream,
            track_id=e.track_id,
            name=e.name or None,
            class_id=e.class_id,
            label=e.label,
            confidence=e.confidence,
            direction=e.direction,
            dwell_s=e.dwell_s,
            capture_time=wall(e.capture_ts),
            snapshot=snapshot,
        )
        text = f"{e.label} #{e.track_id} {e.kind.replace('_', ' ')}" + (f" {e.name}" if e.name else "")
        out.append(_event(device_id, session_id, e.kind, text + (f" ({e.direction})" if e.direction else ""), detail))
    if analytics.counts is not None:
        detail = AnalyticsDetail(stream=stream, capture_time=result.wall_time, counts=analytics.counts)
        out.append(_event(device_id, session_id, "counts", f"counts of stream {stream}", detail))
    return out


def _event(device_id: str, session_id: int, kind: str, message: str, detail: AnalyticsDetail) -> Event:
    return Event(
        device_id=device_id,
        session_id=session_id,
        id=analytics_event_id(device_id, detail.stream, detail.track_id, kind, detail.name, detail.capture_time),
        kind=ANALYTICS_EVENT_PREFIX + kind,
        severity="info",
        message=message[:4096],
        timestamp=detail.capture_time,
        analytics=detail,
    )


class AnalyticsEventSink(Sink):
    """Queues each result's analytics events and counts in the outbox (high priority: never dropped to make room,
    resent after outages and restarts), on the device's events topic. Results without analytics pass by."""

    name = "mqtt-analytics"

    def __init__(self, device_id: str, *, outbox: Any, session_id: Callable[[], int], queue_size: int = 1024,
                 clip_ref: ClipRef | None = None) -> None:
        super().__init__(queue_size)
        self.device_id = device_id
        self.clip_ref = clip_ref
        """Each event's clip reference (``lepton_edge.runtime.clips.ClipRefs``); None when no stream records clips."""
        self.topic = events_topic(device_id)
        self.outbox = outbox
        self.session_id = session_id
        self.queued = 0
        """Analytics events handed to the outbox."""
        self.lost = 0
        """Analytics events the outbox refused (full even at its high-priority allowance)."""

    def offer(self, result: Result) -> bool:
        analytics = result.analytics
        if analytics is None or (not analytics.events and analytics.counts is None):
            return True
        return super().offer(result)

    def write(self, result: Result) -> None:
        for event in analytics_events(result, self.device_id, self.session_id(), self.clip_ref):
            try:
                self.outbox.put(self.topic, encode(event), qos=1, priority="high")
            except LeptonError as e:
                self.lost += 1
                log.error("analytics event %s lost: %s", event.kind, error_text(e))
                continue
            self.queued += 1

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "queued": self.queued, "lost": self.lost}
