"""Flood isolation: a device that floods is cut off at the broker, so the other devices' messages keep flowing.

The broker keeps one queue per client towards the scheduler (``max_queued_messages``, ``max_queued_bytes``),
and mosquitto has no per-client publish rate. A device publishing faster than this replica reads fills that
queue, and the broker then drops every device's messages alike, QoS 1 included (measured in
docs/reliability.md, "Floods"); the token bucket (:mod:`.admission`) rejects the flood cheaply, but only
after it went through that queue. So when :meth:`FloodIsolation.rejected` counts ``ingest.flood_threshold``
flood rejections of one device within a second, the replica *isolates* the device: it replaces its wildcard
subscriptions to device topics with one subscription per known device except the flooders, and the broker
no longer routes the flood to it. After ``ingest.flood_quarantine_s`` (:meth:`tick`) it listens to the device
again, and to the wildcards once nobody is isolated (a device born meanwhile is then seen by its retained
birth); a device still flooding is isolated again.
"""

from __future__ import annotations

import collections
import logging
import threading

from lepton_edge.config.scheduler import IngestConfig, ReplicasConfig
from lepton_edge.fleet.mqtt import Handler, MqttClient
from lepton_edge.fleet.protocol import TopicKind, subscription
from lepton_edge.scheduler.views import DeviceViews

log = logging.getLogger("lepton_edge.scheduler.flood")

FLOOD_WINDOW_S = 1.0
"""Flood rejections are counted per device over windows of this length."""
WINDOWS_MAX = 10_000
"""Devices whose current window is remembered; beyond it the windows start over."""

Route = tuple[TopicKind, Handler, bool]
"""(topic kind, its handler, whether it is a shared subscription)."""


class FloodIsolation:
    """The replica's subscriptions to device topics, and which devices are isolated for flooding."""

    def __init__(
        self, ingest: IngestConfig, replicas: ReplicasConfig, views: DeviceViews, counts: collections.Counter[str]
    ) -> None:
        self._ingest = ingest
        self._replicas = replicas
        self._views = views
        self._counts = counts
        self._lock = threading.Lock()
        self._mqtt: MqttClient | None = None
        self._routes: list[Route] = []
        self._windows: dict[str, list[float]] = {}
        """Device -> [start of its window, flood rejections in it]."""
        self._isolated: dict[str, float] = {}
        """Isolated device -> when its quarantine ends (time.time())."""
        self._listening: set[str] | None = None
        """Devices subscribed one by one while isolating; None: the wildcards are subscribed."""

    @property
    def isolated(self) -> list[str]:
        """The devices isolated now."""
        return sorted(self._isolated)

    def subscribe(self, mqtt: MqttClient, routes: list[Route]) -> None:
        """Subscribe ``routes`` with wildcards (every device)."""
        self._mqtt, self._routes = mqtt, list(routes)
        for kind, handler, shared in self._routes:
            mqtt.subscribe(self._filter(kind, "+", shared), handler, qos=1)

    def _filter(self, kind: TopicKind, device_id: str, shared: bool) -> str:
        topic_filter = subscription(kind, device_id)
        return f"$share/{self._replicas.share_group}/{topic_filter}" if shared else topic_filter

    def rejected(self, device_id: str, now: float) -> None:
        """Count one flood rejection of ``device_id`` (MQTT thread: a dict lookup and an addition)."""
        window = self._windows.get(device_id)
        if window is None or now - window[0] >= FLOOD_WINDOW_S:
            if len(self._windows) >= WINDOWS_MAX:
                self._windows.clear()
            self._windows[device_id] = [now, 1]
            return
        window[1] += 1
        if window[1] == self._ingest.flood_threshold:
            self._isolate(device_id, now)

    def _isolate(self, device_id: str, now: float) -> None:
        limit = self._ingest.flood_isolation_max_devices
        with self._lock:
            if self._mqtt is None or device_id in self._isolated:
                return
            known = [view.device_id for view in self._views.all()]
            if limit == 0 or len(known) > limit:
                self._counts["flood_not_isolated"] += 1
                log.warning(
                    "device %s floods, but %d devices are over ingest.flood_isolation_max_devices (%d): its "
                    "messages are only rejected", device_id, len(known), limit,
                )  # fmt: skip
                return
            quarantine = self._ingest.flood_quarantine_s
            self._isolated[device_id] = now + quarantine
            self._counts["flood_isolations"] += 1
            log.warning(
                "device %s floods (%d messages over its rate within %g s): not listening to it for %g s",
                device_id, self._ingest.flood_threshold, FLOOD_WINDOW_S, quarantine,
            )  # fmt: skip
            if self._listening is None:  # from wildcards to one subscription per device, overlapping meanwhile
                self._listening = set()
                for other in known:
                    if other not in self._isolated:
                        self._listen(other)
                for kind, _, shared in self._routes:
                    self._mqtt.unsubscribe(self._filter(kind, "+", shared))
            else:
                self._ignore(device_id)

    def tick(self, now: float) -> None:
        """End the quarantines that are due (housekeeping thread)."""
        with self._lock:
            expired = [d for d, until in self._isolated.items() if until <= now]
            if self._mqtt is None or not expired:
                return
            for device_id in expired:
                del self._isolated[device_id]
                self._windows.pop(device_id, None)
            log.info("listening to %s again (flood quarantine over)", ", ".join(expired))
            if self._isolated:
                for device_id in expired:
                    self._listen(device_id)
                return
            for kind, handler, shared in self._routes:
                self._mqtt.subscribe(self._filter(kind, "+", shared), handler, qos=1)
            for device_id in list(self._listening or ()):
                self._ignore(device_id)
            self._listening = None

    def _listen(self, device_id: str) -> None:
        assert self._mqtt is not None and self._listening is not None
        for kind, handler, shared in self._routes:
            self._mqtt.subscribe(self._filter(kind, device_id, shared), handler, qos=1)
        self._listening.add(device_id)

    def _ignore(self, device_id: str) -> None:
        assert self._mqtt is not None and self._listening is not None
        for kind, _, shared in self._routes:
            self._mqtt.unsubscribe(self._filter(kind, device_id, shared))
        self._listening.discard(device_id)
