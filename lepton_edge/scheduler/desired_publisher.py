"""Desired documents leave the scheduler signed, and stay what it issued.

:class:`DesiredSigner` signs each desired document with the scheduler's ed25519 key (``desired_signing_key``)
over :func:`~lepton_edge.fleet.protocol.desired_signed_bytes`: the device id, version, config and issuer, so
a device whose ``agent.scheduler_public_keys`` lists the public key accepts desired documents from this
scheduler only, and a document replayed on another device's topic does not verify.

:class:`DesiredPublisher` publishes them (retained, QoS 1) and watches the desired topics: a document it did
not issue (compared with the one it published, or after a restart with the version and signature the store
says it issued) is counted, logged, recorded as a ``config.desired_overwritten`` event and replaced by the
scheduler's own document again, at most once per device per :data:`REASSERT_INTERVAL_S`. The production ACL
already lets no one but the scheduler's identity publish there (deploy/mosquitto/acl); this covers brokers
without it and identities that leak.
"""

from __future__ import annotations

import base64
import binascii
import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from lepton_edge.core.errors import ConfigError
from lepton_edge.fleet.mqtt import IncomingMessage, MqttClient
from lepton_edge.fleet.protocol import (
    DesiredConfig,
    ProtocolError,
    TopicKind,
    config_desired_topic,
    decode,
    desired_signed_bytes,
    encode,
    parse_topic,
    subscription,
)
from lepton_edge.scheduler.control import ControlQueue
from lepton_edge.scheduler.store import Store

log = logging.getLogger("lepton_edge.scheduler.desired_publisher")

RECENT_DOCUMENTS = 4
"""Documents published for one device that its echo may still bring back (pushes in quick succession)."""
REASSERT_INTERVAL_S = 1.0
"""A device's desired document is re-asserted at most this often (a flood of foreign documents costs one
publication per device per interval)."""


class DesiredSigner:
    """The scheduler's ed25519 key (PEM, PKCS#8, from ``lepton-edge keygen``), loaded once."""

    def __init__(self, key_path: Path) -> None:
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except OSError as e:
            raise ConfigError(f"desired_signing_key: cannot read {key_path}: {e}") from None
        except (ValueError, TypeError) as e:
            raise ConfigError(f"desired_signing_key: {key_path} is not an unencrypted PEM private key ({e})") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigError(
                f"desired_signing_key: {key_path} is a {type(key).__name__}, not an ed25519 key; create one with "
                "`lepton-edge keygen --out PREFIX`"
            )
        self._key = key
        self.path = key_path

    def sign(self, device_id: str, desired: DesiredConfig) -> DesiredConfig:
        """``desired`` with its signature for ``device_id``."""
        signature = self._key.sign(desired_signed_bytes(device_id, desired))
        return desired.model_copy(update={"signature": base64.b64encode(signature).decode("ascii")})

    def signed_it(self, device_id: str, desired: DesiredConfig) -> bool:
        """Whether ``desired`` carries this key's signature for ``device_id``."""
        if desired.signature is None:
            return False
        try:
            self._key.public_key().verify(
                base64.b64decode(desired.signature, validate=True), desired_signed_bytes(device_id, desired)
            )
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True


class DesiredPublisher:
    """Publishes desired documents (:meth:`encode`, :meth:`publish`) and re-asserts them (:meth:`on_desired`)."""

    def __init__(
        self,
        mqtt: MqttClient,
        signer: DesiredSigner | None,
        *,
        store: Store,
        control: ControlQueue,
        counts: collections.Counter[str],
        is_leader: Callable[[], bool],
        push_again: Callable[[str, str], None],
    ) -> None:
        """``push_again(device_id, reason)``: have the planner push the device a new desired document (for a
        foreign document found when this replica has none of its own in memory, after a restart)."""
        self._mqtt = mqtt
        self._signer = signer
        self._store = store
        self._control = control
        self._counts = counts
        self._is_leader = is_leader
        self._push_again = push_again
        self._issued: dict[str, bytes] = {}
        """Device -> the payload of the last desired document this replica published (or recognised) for it."""
        self._recent: dict[str, collections.deque[bytes]] = {}
        """Device -> the payloads it published last (their echoes are not foreign)."""
        self._reasserted_at: dict[str, float] = {}
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def encode(self, device_id: str, desired: DesiredConfig) -> bytes:
        """The payload of ``desired`` for ``device_id``, signed when a key is configured. Raises ProtocolError
        over the payload limit."""
        if self._signer is not None:
            desired = self._signer.sign(device_id, desired)
        return encode(desired)

    def publish(self, device_id: str, payload: bytes) -> None:
        """Publish ``payload`` as ``device_id``'s desired document (retained, QoS 1) and remember it."""
        self._issued[device_id] = payload
        self._recent.setdefault(device_id, collections.deque(maxlen=RECENT_DOCUMENTS)).append(payload)
        self._mqtt.publish(config_desired_topic(device_id), payload, qos=1, retain=True)

    def subscribe(self) -> None:
        self._mqtt.subscribe(subscription(TopicKind.CONFIG_DESIRED), self.on_desired, qos=1)

    def on_desired(self, message: IncomingMessage) -> None:
        """A document on a desired topic (MQTT thread): ours, or re-asserted."""
        if not self._is_leader():
            return
        try:
            device_id = parse_topic(message.topic).device_id
        except ProtocolError:
            return
        if device_id is None:
            return
        issued = self._issued.get(device_id)
        if issued == message.payload or message.payload in self._recent.get(device_id, ()):
            return  # our own document (the echo of a publication, or the retained one on subscribing)
        if issued is None:
            if message.payload:  # issued before this replica started? the store knows the version
                payload = message.payload
                self._control.put(lambda: self._recognise(device_id, payload))
            return
        self._foreign(device_id, "differs from the document the scheduler published")

    def _recognise(self, device_id: str, payload: bytes) -> None:
        """Control thread: accept a document the store says was issued (same version, and our signature when
        signing); anything else is foreign."""
        try:
            desired = decode(TopicKind.CONFIG_DESIRED, payload)
        except ProtocolError as e:
            self._foreign(device_id, f"is not a valid desired document ({str(e)[:200]})")
            return
        assert isinstance(desired, DesiredConfig)
        device = self._store.get_device(device_id)
        if device is None or desired.version != device.desired_version:
            issued = device.desired_version if device is not None else 0
            self._foreign(device_id, f"carries version {desired.version}, the store issued {issued}")
        elif self._signer is not None and not self._signer.signed_it(device_id, desired):
            self._foreign(device_id, "is not signed with the scheduler's desired_signing_key")
        else:
            self._issued.setdefault(device_id, payload)

    def _foreign(self, device_id: str, why: str) -> None:
        self._counts["desired_foreign"] += 1
        now = time.monotonic()
        with self._lock:
            if now - self._reasserted_at.get(device_id, -REASSERT_INTERVAL_S) < REASSERT_INTERVAL_S:
                self._pending.add(device_id)
                return
            self._reasserted_at[device_id] = now
        log.warning("a desired document for %s that the scheduler did not issue %s: re-asserting", device_id, why)
        self._control.put(
            lambda: self._store.add_event(
                "config.desired_overwritten",
                f"a desired document for {device_id} that the scheduler did not issue {why}; re-asserted",
                device_id=device_id,
                severity="warning",
            )
        )
        self._reassert(device_id)

    def _reassert(self, device_id: str) -> None:
        self._counts["desired_reasserted"] += 1
        issued = self._issued.get(device_id)
        if issued is not None:
            self._mqtt.publish(config_desired_topic(device_id), issued, qos=1, retain=True)
        else:
            self._push_again(device_id, f"desired document of {device_id} overwritten")

    def tick(self) -> None:
        """Housekeeping: re-assert the documents whose re-assertion waited for the interval."""
        now = time.monotonic()
        with self._lock:
            due = [d for d in self._pending if now - self._reasserted_at.get(d, 0.0) >= REASSERT_INTERVAL_S]
            for device_id in due:
                self._pending.discard(device_id)
                self._reasserted_at[device_id] = now
        for device_id in due:
            self._reassert(device_id)
