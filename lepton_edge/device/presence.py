"""Presence: the lepton session of each connection, its last will, births, deaths and rebirths.

A session id, persisted in the state folder, increases before every connection attempt; the last will of
that attempt is a ``Death`` of that session, and every successful connect publishes a retained ``Birth``
with the same id. A clean stop publishes a ``Death`` (``shutdown``). Rebirth requests (per device or for
the whole fleet) are answered on the command worker, at most one per ``REBIRTH_MIN_INTERVAL_S``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from lepton_edge import __version__
from lepton_edge.core.errors import error_text
from lepton_edge.device.commands import CommandServer
from lepton_edge.device.events import Rejections
from lepton_edge.device.state import StateStore
from lepton_edge.fleet.mqtt import IncomingMessage, MqttClient, PublishHandle, Will
from lepton_edge.fleet.protocol import (
    Birth,
    Capabilities,
    Death,
    ProtocolError,
    TopicKind,
    birth_topic,
    death_topic,
    decode,
    encode,
)

log = logging.getLogger(__name__)

REBIRTH_MIN_INTERVAL_S = 1.0
"""Rebirth requests closer together than this are answered by one rebirth."""


class Presence:
    """Sessions, wills, births and deaths of one device.

    ``capabilities()`` and ``config_version()`` fill each birth; ``on_new_session(session_id)`` runs when a
    connect starts a new session; ``after_rebirth()`` runs after each rebirth's birth (the last report
    again, telemetry now).
    """

    def __init__(
        self,
        device_id: str,
        store: StateStore,
        *,
        capabilities: Callable[[], Capabilities],
        config_version: Callable[[], int],
        on_new_session: Callable[[int], None],
        after_rebirth: Callable[[], None],
    ) -> None:
        self.device_id = device_id
        self.store = store
        self._capabilities = capabilities
        self._config_version = config_version
        self._on_new_session = on_new_session
        self._after_rebirth = after_rebirth
        self._reserved: int | None = store.next_session()
        self._attempt = self._reserved
        self._session_id = self._reserved
        self._lock = threading.Lock()
        self._client: MqttClient | None = None
        self._rebirth_queued = threading.Event()
        self._last_rebirth = 0.0
        self.births = 0

    @property
    def session_id(self) -> int:
        """The session of the current (or last) connection; before the first one, the reserved id."""
        return self._session_id

    def next_will(self) -> Will:
        """Called before every connection attempt: a new session id and the death that ends it."""
        with self._lock:
            if self._reserved is not None:
                session, self._reserved = self._reserved, None
            else:
                try:
                    session = self.store.next_session()
                except OSError as e:
                    session = self._attempt + 1
                    log.error("cannot persist the session counter in %s (%s); using %d", self.store.dir, e, session)
            self._attempt = session
        death = Death(device_id=self.device_id, session_id=session, reason="connection_lost")
        return Will(death_topic(self.device_id), encode(death), qos=1, retain=True)

    def on_connected(self, client: MqttClient) -> None:
        self._client = client
        with self._lock:
            if self._attempt != self._session_id:  # the first connect keeps the reserved session
                self._session_id = self._attempt
                self._on_new_session(self._session_id)
        self.publish_birth(client)

    def birth(self) -> Birth:
        return Birth(
            device_id=self.device_id,
            session_id=self.session_id,
            timestamp=time.time(),
            capabilities=self._capabilities(),
            config_version=self._config_version(),
            software_version=__version__,
        )

    def publish_birth(self, client: MqttClient) -> PublishHandle:
        handle = client.publish(birth_topic(self.device_id), encode(self.birth()), qos=1, retain=True)
        self.births += 1
        return handle

    def publish_death(self, client: MqttClient) -> PublishHandle:
        death = Death(device_id=self.device_id, session_id=self.session_id, reason="shutdown")
        return client.publish(death_topic(self.device_id), encode(death), qos=1, retain=True)

    def rebirth(self) -> None:
        """A fresh birth (when connected), then ``after_rebirth()``."""
        self._last_rebirth = time.monotonic()
        client = self._client
        if client is not None and client.connected:
            self.publish_birth(client)
        self._after_rebirth()

    def rebirth_handler(self, commands: CommandServer, rejections: Rejections) -> Callable[[IncomingMessage], None]:
        """The MQTT handler of rebirth requests: checked here, answered on ``commands``' worker."""

        def on_rebirth(msg: IncomingMessage) -> None:
            try:
                decode(TopicKind.REBIRTH, msg.payload, msg.topic)
            except ProtocolError as e:
                rejections("rebirth", str(e), msg.topic)
                return
            except Exception as e:
                rejections("rebirth", f"unexpected error: {error_text(e)}", msg.topic)
                return
            if self._rebirth_queued.is_set():
                return
            self._rebirth_queued.set()
            if not commands.submit(lambda: self._queued_rebirth(commands.stopping)):
                self._rebirth_queued.clear()
                rejections("rebirth", "the agent is busy (command queue full); try again")

        return on_rebirth

    def _queued_rebirth(self, stopping: threading.Event) -> None:
        wait = self._last_rebirth + REBIRTH_MIN_INTERVAL_S - time.monotonic()
        if wait > 0 and stopping.wait(wait):
            return
        self._rebirth_queued.clear()
        try:
            self.rebirth()
        except Exception:
            log.exception("rebirth failed")
