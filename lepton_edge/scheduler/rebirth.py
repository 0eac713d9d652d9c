"""Rebirth requests: one device (rate-limited) or the whole fleet (resynchronising the store)."""

from __future__ import annotations

import collections
import logging
import time

from lepton_edge.fleet.mqtt import MqttClient
from lepton_edge.fleet.protocol import FLEET_REBIRTH_TOPIC, RebirthRequest, encode, rebirth_topic
from lepton_edge.scheduler.views import DeviceView

log = logging.getLogger("lepton_edge.scheduler.rebirth")

REBIRTH_INTERVAL_S = 10.0
"""At most one rebirth request per device in this many seconds."""


class Rebirths:
    """Publishes rebirth requests. A fleet request made before the MQTT client started is sent once it has."""

    def __init__(self, mqtt: MqttClient, replica_id: str, counts: collections.Counter[str]) -> None:
        self._mqtt = mqtt
        self._replica_id = replica_id
        self._counts = counts
        self._started = False
        self._deferred: str | None = None
        self.resync_pending = False
        """The store came back after an outage while this replica was not leading: the next leader asks the
        fleet for a rebirth."""

    def started(self) -> None:
        """The MQTT client runs: send the deferred fleet request, if any."""
        self._started = True
        if self._deferred is not None:
            reason, self._deferred = self._deferred, None
            self.fleet(reason)

    def device(self, view: DeviceView, reason: str, now: float) -> None:
        if now - view.rebirth_at < REBIRTH_INTERVAL_S:
            return
        view.rebirth_at = now
        self._counts["rebirth_requests"] += 1
        request = RebirthRequest(reason=reason[:4096], requested_by=self._replica_id, timestamp=now)
        self._mqtt.publish(rebirth_topic(view.device_id), encode(request), qos=1)
        log.info("asked %s for a rebirth: %s", view.device_id, reason)

    def fleet(self, reason: str) -> None:
        self.resync_pending = False
        if not self._started:
            self._deferred = reason
            return
        request = RebirthRequest(reason=reason, requested_by=self._replica_id, timestamp=time.time())
        self._mqtt.publish(FLEET_REBIRTH_TOPIC, encode(request), qos=1)
        self._counts["fleet_rebirths"] += 1
