"""Pipeline results over MQTT: :class:`MqttResultSink`.

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
from lepton_edge.core.metrics import TokenBucket
from lepton_edge.core.results import Result
from lepton_edge.fleet.protocol import ResultMessage, encode, results_topic
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
        if not self.config.enabled:
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
