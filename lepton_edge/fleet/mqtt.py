"""The one MQTT client of lepton-edge: a small wrapper over paho-mqtt 2.x (MQTT v5, callback API 2).

What it adds to paho:

- a persistent session (``clean_start=False`` + SessionExpiryInterval, a fixed client id), so QoS 1
  messages queued by the broker while the device was away arrive on reconnect;
- a last will rebuilt before every connection attempt (paho sends the will inside CONNECT);
- ``connected`` means a CONNACK with a success reason code, nothing less; failures are logged by
  reason code name and exposed as :attr:`MqttClient.last_error` while paho retries with capped
  exponential backoff;
- a routing table from topic filter to handler, re-subscribed on every connect; a failing handler is
  logged and never stops the network loop. A shared subscription (``$share/<group>/<filter>``) routes
  the messages of ``<filter>``, as the broker delivers them under their real topic;
- :class:`PublishHandle` per publish, resolved when the broker acknowledges it (PUBACK for QoS 1), which
  is what lets the outbox delete a message only once the broker has it;
- :meth:`MqttClient.abort`, which drops the connection as a power cut would, so the broker publishes the
  last will (for simulators and tests of presence).

Handlers and hooks run on paho's network thread: keep them short and hand heavy work to other threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from lepton_edge.config.fleet import MqttConfig
from lepton_edge.core.errors import ConfigError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- config






# ------------------------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Will:
    """The last will the broker publishes if this connection dies without a clean DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A message delivered to a handler, with its MQTT v5 properties."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None = None

    @property
    def response_topic(self) -> str | None:
        return getattr(self.properties, "ResponseTopic", None)

    @property
    def correlation_data(self) -> bytes | None:
        return getattr(self.properties, "CorrelationData", None)

    @property
    def message_expiry_interval(self) -> int | None:
        """Seconds the message had left when the broker delivered it (the broker counts it down)."""
        return getattr(self.properties, "MessageExpiryInterval", None)

    @property
    def user_properties(self) -> dict[str, str]:
        return dict(getattr(self.properties, "UserProperty", None) or [])


Handler = Callable[[IncomingMessage], None]


class PublishHandle:
    """Tracks one publish until the broker acknowledges it (QoS 1: PUBACK, QoS 2: PUBCOMP).

    QoS 0 handles complete when paho has written the message to the socket. A handle can also
    complete with a failure: the broker refused it (a failure reason code), the client queue was full,
    or the client stopped first. Done-callbacks run on the network thread: keep them short.
    """

    def __init__(self, topic: str, qos: int, mid: int = 0) -> None:
        self.topic = topic
        self.qos = qos
        self.mid = mid
        self.reason_code: int | None = None
        """The broker's reason code (0 success, >= 0x80 refused); None if the broker never answered."""
        self.error: str | None = None
        """Why the publish failed, or None."""
        self._event = threading.Event()
        self._callbacks: list[Callable[[PublishHandle], None]] = []
        self._lock = threading.Lock()

    def done(self) -> bool:
        return self._event.is_set()

    @property
    def ok(self) -> bool:
        """Done, and the broker accepted the message."""
        return self._event.is_set() and self.error is None

    @property
    def rejected_by_broker(self) -> bool:
        """The broker answered with a failure reason code: resending the same message will not help."""
        return self.reason_code is not None and self.reason_code >= 0x80

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until done; True if done (successfully or not) within ``timeout``."""
        return self._event.wait(timeout)

    def add_done_callback(self, fn: Callable[[PublishHandle], None]) -> None:
        """Call ``fn(handle)`` once done (now, if it already is)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _resolve(self, reason_code: int | None, error: str | None) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason_code, self.error = reason_code, error
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                log.exception("publish done-callback failed (topic %s)", self.topic)

    def __repr__(self) -> str:
        state = "pending" if not self.done() else ("ok" if self.ok else f"failed: {self.error}")
        return f"PublishHandle({self.topic!r}, qos={self.qos}, mid={self.mid}, {state})"


class SubscribeHandle:
    """Tracks one :meth:`MqttClient.subscribe` until the broker acknowledges it (SUBACK), now or, while offline,
    after the next connect. ``wait`` is what tests and callers use instead of sleeping."""

    def __init__(self, topic_filter: str) -> None:
        self.topic_filter = topic_filter
        self.error: str | None = None
        """Why the broker refused the subscription, or None."""
        self._event = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the SUBACK; True if it came (granted or refused) within ``timeout``."""
        return self._event.wait(timeout)

    @property
    def ok(self) -> bool:
        """Acknowledged, and granted."""
        return self._event.is_set() and self.error is None

    def _resolve(self, error: str | None) -> None:
        self.error = error
        self._event.set()

    def __repr__(self) -> str:
        state = "pending" if not self._event.is_set() else ("ok" if self.ok else f"refused: {self.error}")
        return f"SubscribeHandle({self.topic_filter!r}, {state})"


# --------------------------------------------------------------------------------------------- client


def _check_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"invalid MQTT topic to publish to: {topic!r} (empty, or contains '+', '#' or NUL)")


SHARE_PREFIX = "$share/"
"""Start of an MQTT v5 shared subscription: ``$share/<group>/<filter>``."""


def unshared(topic_filter: str) -> str:
    """The filter that selects the topics of ``topic_filter``: ``<filter>`` of ``$share/<group>/<filter>``."""
    if topic_filter.startswith(SHARE_PREFIX):
        parts = topic_filter.split("/", 2)
        if len(parts) == 3:
            return parts[2]
    return topic_filter


def _check_filter(topic_filter: str) -> None:
    if topic_filter.startswith(SHARE_PREFIX):
        parts = topic_filter.split("/", 2)
        if len(parts) < 3 or not parts[1] or "+" in parts[1] or "#" in parts[1]:
            raise ValueError(
                f"invalid shared subscription {topic_filter!r}: write $share/<group>/<filter>, with a group "
                "name without '/', '+' or '#'"
            )
        topic_filter = parts[2]
    levels = topic_filter.split("/")
    bad = (
        not topic_filter
        or "\0" in topic_filter
        or any("#" in lvl and (lvl != "#" or i != len(levels) - 1) for i, lvl in enumerate(levels))
        or any("+" in lvl and lvl != "+" for lvl in levels)
    )
    if bad:
        raise ValueError(
            f"invalid MQTT topic filter {topic_filter!r}: '+' must fill a whole level and '#' must be the last level"
        )


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` as the client routes it: MQTT rules, and a shared
    subscription ``$share/<group>/<filter>`` matches the topics of ``<filter>``."""
    _check_filter(topic_filter)
    return _Route(topic_filter, _no_handler, 0).matches(topic.split("/"))


def _no_handler(message: IncomingMessage) -> None:
    pass


class _Route:
    """One subscription: its handler, QoS, and its filter compiled for matching (MQTT 3.1.1/5 rules).

    Same result as ``paho.topic_matches_sub(unshared(filter), topic)``, at a fraction of its cost (paho
    builds a matcher tree per call), which counts on a scheduler receiving thousands of messages a second.
    """

    __slots__ = ("_fixed", "_levels", "_multi", "_wild_first", "handler", "qos", "topic_filter")

    def __init__(self, topic_filter: str, handler: Handler, qos: int) -> None:
        self.topic_filter, self.handler, self.qos = topic_filter, handler, qos
        levels = unshared(topic_filter).split("/")
        self._multi = levels[-1] == "#"
        if self._multi:
            levels.pop()
        self._levels = len(levels)
        # a wildcard first level never matches a topic starting with '$' ($SYS/...)
        self._wild_first = not levels or levels[0] == "+"
        # the last levels differ most between the topics of one tree: compare them first
        self._fixed = tuple((i, level) for i, level in reversed(list(enumerate(levels))) if level != "+")

    def matches(self, topic_levels: list[str]) -> bool:
        n = len(topic_levels)
        if (n < self._levels) if self._multi else (n != self._levels):
            return False
        if self._wild_first and topic_levels[0].startswith("$"):
            return False
        for i, level in self._fixed:  # noqa: SIM110 (a loop: no generator per message on the hot path)
            if topic_levels[i] != level:
                return False
        return True


class MqttClient:
    """One MQTT v5 connection with a persistent session, a per-attempt last will and a handler table.

    ``will`` is a :class:`Will`, or a callable returning one (or None), called before every connection
    attempt. ``on_connected(client)`` runs after every successful connect (after re-subscription);
    ``on_disconnected(client)`` after a connection that was up is lost.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        will: Will | Callable[[], Will | None] | None = None,
        on_connected: Callable[[MqttClient], None] | None = None,
        on_disconnected: Callable[[MqttClient], None] | None = None,
    ) -> None:
        self.config = config
        self._will = will
        self._on_connected: list[Callable[[MqttClient], None]] = [on_connected] if on_connected else []
        self._on_disconnected: list[Callable[[MqttClient], None]] = [on_disconnected] if on_disconnected else []
        self._check_files()

        self._lock = threading.Lock()
        self._routes: dict[str, _Route] = {}
        self._route_list: tuple[_Route, ...] = ()
        """The routes as read by the network thread; replaced (never changed) under the lock."""
        self._pending: dict[int, PublishHandle] = {}
        self._early_acks: dict[int, tuple[int, str | None]] = {}
        self._sub_mids: dict[int, list[str]] = {}
        self._early_subacks: dict[int, list[ReasonCode]] = {}
        self._sub_waiters: dict[str, list[SubscribeHandle]] = {}
        self._acknowledged: set[str] = set()
        """Filters the broker acknowledged on the current connection."""
        self._acknowledged_changed = threading.Condition(self._lock)
        self._connected = False
        self._connected_event = threading.Event()
        self._paho: paho.Client | None = None
        self._stopping = False

        self.last_error: str | None = None
        """Why the last connect failed or the last connection was lost; None while connected."""
        self.last_reason_code: int | None = None
        """MQTT reason code of the last refused connect or broker-initiated disconnect (e.g. 0x87)."""
        self.connection_count = 0
        """Successful connects so far (a new value means a new connection)."""
        self.connect_attempts = 0
        """Connection attempts so far, successful or not."""
        self.session_present = False
        """Whether the broker still had our session at the last connect."""

    @property
    def address(self) -> str:
        scheme = "mqtts" if self.config.tls else "mqtt"
        if self.config.transport == "websockets":
            scheme = "wss" if self.config.tls else "ws"
        return f"{scheme}://{self.config.host}:{self.config.port}"

    def _check_files(self) -> None:
        tls = self.config.tls
        if tls is None:
            return
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"mqtt.tls.{name}: file {path} not found; fix the path or remove the option")

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the loss of that connection."""
        return self._connected

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait for a successful connection; True if connected within ``timeout``."""
        return self._connected_event.wait(timeout)

    def add_on_connected(self, fn: Callable[[MqttClient], None]) -> None:
        self._on_connected.append(fn)

    def add_on_disconnected(self, fn: Callable[[MqttClient], None]) -> None:
        self._on_disconnected.append(fn)

    def start(self) -> None:
        """Start connecting in the background; paho reconnects with backoff until :meth:`stop`."""
        if self._paho is not None:
            raise RuntimeError("MqttClient.start() called twice; call stop() first")
        cfg = self.config
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            transport=cfg.transport,
            reconnect_on_failure=True,
        )
        client.suppress_exceptions = True  # our callbacks catch their own errors; this is the safety net
        if cfg.transport == "websockets":
            client.ws_set_options(path=cfg.websocket_path)
        if cfg.tls is not None:
            try:
                client.tls_set(
                    ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                    certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                    keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                )
            except (ssl.SSLError, OSError) as e:
                raise ConfigError(
                    f"mqtt.tls: cannot load the certificates or key ({e}); check that they are PEM files "
                    "and that the key matches the certificate"
                ) from None
            client.tls_insecure_set(cfg.tls.insecure)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.max_queued_messages_set(cfg.max_queued)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
        client.connect_timeout = cfg.connect_timeout_s
        client.on_pre_connect = self._handle_pre_connect
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s
        self._stopping = False
        self._paho = client
        client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, clean_start=False, properties=props)
        client.loop_start()

    def stop(
        self,
        publish_before_disconnect: Callable[[MqttClient], Iterable[PublishHandle] | PublishHandle | None] | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Disconnect cleanly (the broker then does not send the will) and stop the network thread.

        ``publish_before_disconnect(client)`` runs first if connected (e.g. to publish a clean death);
        the handles it returns are waited for up to ``timeout`` seconds. Handles still pending at the
        end fail with "client stopped".
        """
        client = self._paho
        if client is None:
            return
        if self._connected and publish_before_disconnect is not None:
            try:
                handles = publish_before_disconnect(self)
            except Exception:
                log.exception("publish_before_disconnect failed; disconnecting anyway")
                handles = None
            if isinstance(handles, PublishHandle):
                handles = [handles]
            for handle in handles or []:
                if not handle.wait(timeout):
                    log.warning("MQTT: %s not acknowledged within %.1f s before disconnect", handle.topic, timeout)
        self._stopping = True
        disconnect_props = Properties(PacketTypes.DISCONNECT)
        disconnect_props.SessionExpiryInterval = self.config.session_expiry_s
        client.disconnect(ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection"), disconnect_props)
        client.loop_stop()
        self._release("client stopped before the broker acknowledged the message")

    def abort(self) -> None:
        """Drop the connection without a DISCONNECT, as a power cut would: the broker publishes the will.

        The client does not reconnect; handles still pending fail with "connection aborted". Call
        :meth:`start` to connect again (a new connection, with a new will).
        """
        client = self._paho
        if client is None:
            return
        self._stopping = True  # no reconnect, no on_disconnected hooks
        sock = client.socket()
        if sock is not None:
            # through a duplicate of the descriptor, which works under TLS and WebSocket wrappers too;
            # OSError/ValueError: the network thread has closed it already
            with contextlib.suppress(OSError, ValueError), socket.socket(fileno=os.dup(sock.fileno())) as raw:
                raw.shutdown(socket.SHUT_RDWR)
        # The network thread sees the closed socket, calls _handle_disconnect (which ends its loop
        # before any reconnect) and exits; without a socket (between attempts) it exits within a second.
        client.loop_stop()
        self._release("connection aborted before the broker acknowledged the message")

    def _release(self, why: str) -> None:
        """Forget the paho client (its thread has ended) and fail the handles still pending."""
        with self._lock:
            self._paho = None
            self._connected = False
            self._connected_event.clear()
            pending, self._pending = self._pending, {}
            self._early_acks.clear()
        for handle in pending.values():
            handle._resolve(None, why)

    # -- subscriptions ------------------------------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> SubscribeHandle:
        """Route messages matching ``topic_filter`` to ``handler``; subscribed now and on every reconnect.
        The handle resolves when the broker acknowledges the subscription.

        Avoid overlapping filters: every matching handler runs for each delivery, and a broker may
        deliver one copy per matching subscription.
        """
        _check_filter(topic_filter)
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        handle = SubscribeHandle(topic_filter)
        with self._lock:
            self._routes[topic_filter] = _Route(topic_filter, handler, qos)
            self._route_list = tuple(self._routes.values())
            self._sub_waiters.setdefault(topic_filter, []).append(handle)
            client = self._paho if self._connected else None
        if client is not None:
            self._send_subscribe(client, [(topic_filter, qos)])
        return handle

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged every routed filter on the current connection (after a
        reconnect too); False on timeout."""
        with self._acknowledged_changed:
            return self._acknowledged_changed.wait_for(
                lambda: self._connected and set(self._routes) <= self._acknowledged, timeout
            )

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            known = self._routes.pop(topic_filter, None) is not None
            self._route_list = tuple(self._routes.values())
            client = self._paho if self._connected else None
        if known and client is not None:
            client.unsubscribe(topic_filter)

    def _send_subscribe(self, client: paho.Client, filters: list[tuple[str, int]]) -> None:
        if not filters:
            return
        rc, mid = client.subscribe([(f, SubscribeOptions(qos=q)) for f, q in filters])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("MQTT: subscribe to %s not sent (%s); retried on reconnect", filters, paho.error_string(rc))
            return
        with self._lock:
            self._sub_mids[mid] = [f for f, _ in filters]
            early = self._early_subacks.pop(mid, None)
        if early is not None:  # the SUBACK overtook us: paho's thread handled it before mid was recorded
            self._subscribed(mid, early)

    # -- publishing ---------------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        message_expiry_interval: int | None = None,
        user_properties: Iterable[tuple[str, str]] | None = None,
        content_type: str | None = None,
    ) -> PublishHandle:
        """Publish ``payload``; the handle completes when the broker acknowledges it. Thread-safe.

        QoS 1/2 messages published while disconnected wait in memory (up to ``max_queued``) and are
        sent on reconnect; QoS 0 messages published while disconnected fail at once.
        """
        _check_topic(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        if not isinstance(payload, bytes | bytearray):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        props: Properties | None = None
        if (
            any(v is not None for v in (response_topic, correlation_data, message_expiry_interval, content_type))
            or user_properties
        ):
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                _check_topic(response_topic)
                props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = bytes(correlation_data)
            if message_expiry_interval is not None:
                props.MessageExpiryInterval = int(message_expiry_interval)
            if content_type is not None:
                props.ContentType = content_type
            if user_properties:
                props.UserProperty = list(user_properties)

        handle = PublishHandle(topic, qos)
        client = self._paho
        if client is None:
            handle._resolve(None, "MQTT client is not started")
            return handle
        info = client.publish(topic, bytes(payload), qos=qos, retain=retain, properties=props)
        handle.mid = info.mid
        rc = info.rc
        queued = rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0)
        if not queued:
            if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                error = f"MQTT client queue is full (max_queued={self.config.max_queued})"
            else:
                error = f"publish failed: {paho.error_string(rc)}"
            handle._resolve(None, error)
            return handle
        with self._lock:
            early = self._early_acks.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = handle
        if early is not None:  # the broker answered before publish() returned
            handle._resolve(*early)
        return handle

    # -- paho callbacks (network thread) ------------------------------------------------------------

    def _handle_pre_connect(self, client: paho.Client, userdata: Any) -> None:
        self.connect_attempts += 1
        will = self._will
        if callable(will):
            try:
                will = will()
            except Exception:
                log.exception("MQTT: building the last will failed; keeping the previous will")
                return
        if will is None:
            client.will_clear()
        else:
            client.will_set(will.topic, will.payload, will.qos, will.retain)

    def _handle_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            self.last_reason_code = reason.value
            self._set_error(f"broker {self.address} refused the connection: {reason.getName()}")
            return
        with self._lock:
            self._connected = True
            self._acknowledged.clear()
            self.connection_count += 1
            self.session_present = bool(flags.session_present)
            self.last_error = None
            self.last_reason_code = None
            routes = [(r.topic_filter, r.qos) for r in self._routes.values()]
        log.info(
            "MQTT: connected to %s as %s (session %s)",
            self.address,
            self.config.client_id,
            "resumed" if self.session_present else "new",
        )
        # Re-subscribe even with a resumed session: the broker may have lost it (restart without persistence).
        self._send_subscribe(client, routes)
        self._connected_event.set()
        for hook in list(self._on_connected):
            try:
                hook(self)
            except Exception:
                log.exception("MQTT: on_connected hook %r failed", hook)

    def _handle_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        exc = sys.exc_info()[1]  # paho calls this from inside `except OSError`
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else "connection failed"
        self._set_error(f"cannot connect to {self.address}: {detail}")

    def _set_error(self, message: str) -> None:
        repeated = message == self.last_error
        self.last_error = message
        log.log(logging.DEBUG if repeated else logging.WARNING, "MQTT: %s; retrying with backoff", message)

    def _handle_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        with self._lock:
            was_connected, self._connected = self._connected, False
            self._connected_event.clear()
            # paho drops unsent QoS 0 messages on reconnect without telling on_publish
            lost = [mid for mid, h in self._pending.items() if h.qos == 0]
            lost_handles = [self._pending.pop(mid) for mid in lost]
        for handle in lost_handles:
            handle._resolve(None, "connection lost before the QoS 0 message was sent")
        if self._stopping:
            client.loop_stop()  # from the network thread it only flags the loop to end: no reconnect
            return
        if was_connected:
            if flags.is_disconnect_packet_from_server:
                self.last_reason_code = reason.value
                message = f"broker {self.address} closed the connection: {reason.getName()}"
            else:
                message = f"connection to {self.address} lost (network error or broker gone)"
            if reason == ReasonCode(PacketTypes.DISCONNECT, "Session taken over"):
                message += f" (another client uses client_id {self.config.client_id!r})"
            self._set_error(message)
            for hook in list(self._on_disconnected):
                try:
                    hook(self)
                except Exception:
                    log.exception("MQTT: on_disconnected hook %r failed", hook)

    def _handle_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            log.warning("MQTT: dropped a message whose topic is not UTF-8")
            return
        levels = topic.split("/")
        handlers = [r.handler for r in self._route_list if r.matches(levels)]
        if not handlers:
            log.debug("MQTT: no handler for %s; message dropped", topic)
            return
        message = IncomingMessage(topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.properties)
        for handler in handlers:
            try:
                handler(message)
            except Exception:
                log.exception("MQTT: handler %r failed on a message from %s", handler, topic)

    def _handle_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        code = reason.value if isinstance(reason, ReasonCode) else int(reason)
        error = f"broker refused the message: {reason.getName()}" if code >= 0x80 else None
        with self._lock:
            handle = self._pending.pop(mid, None)
            if handle is None:
                self._early_acks[mid] = (code, error)
        if handle is not None:
            if error:
                log.warning("MQTT: %s on %s", error, handle.topic)
            handle._resolve(code, error)

    def _handle_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        with self._lock:
            if mid not in self._sub_mids:
                self._early_subacks[mid] = reasons
                return
        self._subscribed(mid, reasons)

    def _subscribed(self, mid: int, reasons: list[ReasonCode]) -> None:
        with self._lock:
            filters = self._sub_mids.pop(mid, [])
            waiters = {f: self._sub_waiters.pop(f, []) for f in filters}
            self._acknowledged.update(f for f, r in zip(filters, reasons, strict=False) if not r.is_failure)
            self._acknowledged_changed.notify_all()
        for topic_filter, reason in zip(filters, reasons, strict=False):
            error = None
            if reason.is_failure:
                error = f"broker refused the subscription to {topic_filter}: {reason.getName()}"
                self.last_error = error
                log.error("MQTT: %s", error)
            for handle in waiters[topic_filter]:
                handle._resolve(error)
