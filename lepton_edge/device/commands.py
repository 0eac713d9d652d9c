"""Commands (``cmd/<name>``) as MQTT v5 requests, run one at a time on a worker thread.

The answer goes to the request's response topic with its correlation data. A request without a lepton
response topic or without correlation data is refused and not run; so is one whose message expiry passed
before it could run (the broker lowers MessageExpiryInterval while a message waits, so the value received
is the time left). A request sent with an expiry whose property is lost on the way (a v3 bridge) cannot be
recognised as stale. Responses are published directly (QoS 1): the outbox cannot carry the response topic
and correlation data properties.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lepton_edge.core.errors import error_text
from lepton_edge.device.events import Rejections
from lepton_edge.fleet.mqtt import IncomingMessage, MqttClient, PublishHandle
from lepton_edge.fleet.protocol import (
    CommandRequest,
    CommandResponse,
    ProtocolError,
    TopicKind,
    decode,
    encode,
    parse_topic,
)

log = logging.getLogger(__name__)

COMMAND_QUEUE_SIZE = 64

Handler = Callable[[dict[str, Any]], Any]
"""``handler(args) -> result`` (JSON-serialisable); an exception answers with an error."""


@dataclass(frozen=True, slots=True)
class _Command:
    name: str
    request: CommandRequest
    reply_to: str
    correlation: bytes
    deadline: float | None


class CommandServer:
    """Checks command requests on the network thread and runs them (and other ``submit``-ted jobs, such as
    rebirths) in order on its worker. ``handlers`` maps command names to their handlers."""

    def __init__(
        self,
        device_id: str,
        client: MqttClient,
        rejections: Rejections,
        handlers: dict[str, Handler],
        stopping: threading.Event,
    ) -> None:
        self.device_id = device_id
        self.client = client
        self.rejections = rejections
        self.handlers = handlers
        self.stopping = stopping
        """Set when the agent stops; jobs that wait should wait on it."""
        self._queue: queue.Queue[_Command | Callable[[], None] | None] = queue.Queue(COMMAND_QUEUE_SIZE)
        self.thread = threading.Thread(target=self._run, name="lepton-agent-commands", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float) -> None:
        """Let the worker end after the item it runs (call once ``stopping`` is set)."""
        with contextlib.suppress(queue.Full):  # if full, the worker sees `stopping` after the next item
            self._queue.put_nowait(None)
        if self.thread.is_alive():
            self.thread.join(timeout)

    def submit(self, job: Callable[[], None]) -> bool:
        """Run ``job`` on the worker after the items queued before it; False when the queue is full."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    # -- network thread: decode, check, queue ---------------------------------------------------------

    def on_command(self, msg: IncomingMessage) -> None:
        try:
            self._accept(msg)
        except Exception as e:
            self.rejections("cmd", f"unexpected error: {error_text(e)}", getattr(msg, "topic", None))

    def _accept(self, msg: IncomingMessage) -> None:
        received = time.monotonic()
        topic = msg.topic if isinstance(msg.topic, str) else None
        reply_to, correlation, expiry = msg.response_topic, msg.correlation_data, msg.message_expiry_interval
        if reply_to is None or not _is_response_topic(reply_to, self.device_id):
            reason = (
                "refused: no response topic (MQTT v5 ResponseTopic); not run"
                if reply_to is None
                else f"refused: response topic {str(reply_to)[:200]!r} is not a lepton response "
                f"topic of this device (lepton/v1/clients/<requester>/response/{self.device_id}); not run"
            )
            self.rejections("cmd", reason, topic)
            return
        name = "unknown"
        try:
            parsed = parse_topic(topic or "")
            if parsed.kind is not TopicKind.COMMAND or parsed.device_id != self.device_id or not parsed.command:
                raise ProtocolError(f"topic {topic!r} is not a command topic of device {self.device_id}")
            name = parsed.command
        except ProtocolError as e:
            self._refuse(name, reply_to, correlation, f"refused: {e}", topic)
            return
        if not isinstance(correlation, bytes | bytearray) or not correlation:
            reason = "refused: no correlation data (MQTT v5 CorrelationData); not run"
            self._refuse(name, reply_to, None, reason, topic)
            return
        if expiry is not None and (not isinstance(expiry, int) or expiry <= 0):
            self._refuse(name, reply_to, correlation, "refused: the command expired before it arrived", topic)
            return
        try:
            request = decode(TopicKind.COMMAND, msg.payload, topic)
        except ProtocolError as e:
            self._refuse(name, reply_to, correlation, str(e), topic)
            return
        assert isinstance(request, CommandRequest)
        if request.name != name:
            reason = f"refused: payload name {request.name!r} differs from the topic's command {name!r}"
            self._refuse(name, reply_to, correlation, reason, topic)
            return
        deadline = None if expiry is None else received + expiry
        if not self.submit(_Command(name, request, reply_to, bytes(correlation), deadline)):
            reason = "refused: the agent is busy (command queue full); retry"
            self._refuse(name, reply_to, correlation, reason, topic)

    def _refuse(self, name: str, reply_to: str, correlation: Any, reason: str, topic: str | None) -> None:
        self.rejections("cmd", reason, topic)
        self.respond(name, reply_to, correlation if isinstance(correlation, bytes | bytearray) else None, error=reason)

    def respond(
        self, name: str, reply_to: str, correlation: bytes | None, *, result: Any = None, error: str | None = None
    ) -> PublishHandle | None:
        """Publish a CommandResponse (QoS 1) to ``reply_to`` with the request's correlation data."""
        if not (isinstance(name, str) and name and len(name) <= 64):
            name = "unknown"
        try:
            if error is not None:
                response = CommandResponse(name=name, status="error", error=error[:4096] or "error")
            else:
                response = CommandResponse(name=name, status="ok", result=result)
            payload = encode(response)
        except (ProtocolError, ValueError) as e:
            payload = encode(
                CommandResponse(name=name, status="error", error=f"cannot encode the response: {e}"[:4096])
            )
        try:
            return self.client.publish(reply_to, payload, qos=1, correlation_data=correlation)
        except ValueError as e:
            log.warning("cannot answer command %s on %r: %s", name, reply_to, e)
            return None

    # -- worker -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self.stopping.is_set():
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, _Command):
                self._execute(item)
            else:
                item()

    def _execute(self, command: _Command) -> None:
        def answer(**outcome: Any) -> None:
            self.respond(command.name, command.reply_to, command.correlation, **outcome)

        if command.deadline is not None and time.monotonic() > command.deadline:
            self.rejections("cmd", f"refused: command {command.name} expired before it could run; not run")
            answer(error="refused: the command expired before it could run (MessageExpiryInterval)")
            return
        handler = self.handlers.get(command.name)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            answer(error=f"unknown command {command.name!r}; known commands: {known}")
            return
        try:
            result = handler(command.request.args)
        except Exception as e:
            log.exception("command %s failed", command.name)
            answer(error=f"failed: {error_text(e)}")
            return
        answer(result=result)


def _is_response_topic(topic: Any, device_id: str) -> bool:
    """A response topic of this device: the broker ACL drops answers on any other device's topics."""
    if not isinstance(topic, str):
        return False
    try:
        parsed = parse_topic(topic)
        return parsed.kind is TopicKind.COMMAND_RESPONSE and parsed.device_id == device_id
    except ProtocolError:
        return False
