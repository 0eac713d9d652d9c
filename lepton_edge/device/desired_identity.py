"""Desired documents from the scheduler's identity only.

With ``agent.scheduler_public_keys`` set in the device's local config (never by a remote config: every agent
setting but a few is local, see :mod:`.remote_config`), a desired document is passed on to remote
configuration only if its ``signature`` is an ed25519 signature by one of those keys over
:func:`~lepton_edge.fleet.protocol.desired_signed_bytes` for *this* device: the device id, version, config and
issuer. Unsigned documents, documents signed by another key, altered after signing, or signed for another
device (replayed on this device's topic) are refused with a :class:`~lepton_edge.core.errors.ProtocolError`
naming the reason, and counted by reason in :attr:`DesiredIdentity.refused`. The scheduler signs with
``desired_signing_key`` (:mod:`lepton_edge.scheduler.desired_publisher`); docs/protocol.md describes it.
"""

from __future__ import annotations

import base64
import binascii
import collections
import logging

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lepton_edge.config.device import AgentConfig
from lepton_edge.device.signing import load_public_key
from lepton_edge.fleet.protocol import DesiredConfig, ProtocolError, TopicKind, decode, desired_signed_bytes

log = logging.getLogger(__name__)


class DesiredIdentity:
    """Checks that desired documents come from the scheduler (:meth:`check`); a no-op without keys."""

    def __init__(self, device_id: str, agent: AgentConfig) -> None:
        """Loads ``agent.scheduler_public_keys`` (UpdateError naming a file that is missing or not ed25519)."""
        self._device_id = device_id
        self._keys: list[Ed25519PublicKey] = [load_public_key(path) for path in agent.scheduler_public_keys]
        self.refused: collections.Counter[str] = collections.Counter()
        """Refused documents by reason: ``unsigned``, ``bad_signature``."""

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, payload: bytes, topic: str | None = None) -> None:
        """Return if the document may be handled; raise ProtocolError (counted) if it is refused. Empty
        payloads (a retained document being cleared) and anything when no key is configured pass."""
        if not self._keys or not payload:
            return
        desired = decode(TopicKind.CONFIG_DESIRED, payload, topic)
        assert isinstance(desired, DesiredConfig)
        where = f"desired config v{desired.version}"
        if desired.signature is None:
            self.refused["unsigned"] += 1
            raise ProtocolError(
                f"{where} refused: it is not signed, and agent.scheduler_public_keys requires the scheduler's "
                "signature (desired_signing_key in the scheduler config)"
            )
        signed = desired_signed_bytes(self._device_id, desired)
        signature = base64.b64decode(desired.signature, validate=True)
        for key in self._keys:
            try:
                key.verify(signature, signed)
            except (InvalidSignature, binascii.Error, ValueError):
                continue
            return
        self.refused["bad_signature"] += 1
        raise ProtocolError(
            f"{where} refused: its signature is not by any of agent.scheduler_public_keys for device "
            f"{self._device_id!r} (signed by another key, altered, or meant for another device)"
        )
