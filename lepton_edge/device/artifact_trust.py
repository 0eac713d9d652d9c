"""The trust rules a signed artifact reference must pass before anything is fetched (docs/updates.md).

:class:`ArtifactTrust` checks, in this order: a signature by a trusted key (:class:`TrustedKeys`), a target
that is the device's own (``agent.artifact_targets`` of its local config), metadata that has not expired,
and a version not below the highest accepted for that target (anti-rollback, kept by
:class:`ArtifactVersions` in the state folder, so it survives restarts). Each refusal is an
:class:`~lepton_edge.device.artifact_common.ArtifactRefused` naming its rule; refusals are counted per rule.

The artifact the device is running already (its sha256 is the current slot's) is exempt from expiry and
anti-rollback: re-reading its reference after a restart or a rollback fetches and changes nothing.

An operator can allow one lower version for one target in the local config (``agent.artifact_allow_rollback``,
never in a remote config); using it writes an audit line. The normal way back to an old artifact is to
re-sign it with a higher version (the TUF way).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path

from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.core.errors import UpdateError
from lepton_edge.core.fileio import atomic_write
from lepton_edge.device.artifact_common import ArtifactRefused, shown_url
from lepton_edge.device.signing import TrustedKeys

log = logging.getLogger(__name__)
audit = logging.getLogger("lepton_edge.audit")

VERSIONS_FILE = "versions.json"


class ArtifactVersions:
    """The highest artifact version accepted per target, in a JSON file written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def highest(self, target: str) -> int:
        """Highest version accepted for ``target`` (0: none yet)."""
        return self._load().get(target, 0)

    def record(self, target: str, version: int) -> None:
        """Remember ``version`` for ``target`` if it is higher than the one recorded."""
        with self._lock:
            versions = self._load()
            if version <= versions.get(target, 0):
                return
            versions[target] = version
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(self.path, json.dumps(versions, sort_keys=True, indent=1).encode("utf-8"))
            except OSError as e:
                raise UpdateError(
                    f"{self.path}: cannot record artifact version {version} of {target} ({e}); the update is "
                    "refused until the state disk has room"
                ) from None

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise UpdateError(
                f"{self.path}: the anti-rollback record is unreadable ({e}); every update is refused until it "
                "is repaired or deleted by the operator (deleting it forgets the versions accepted so far)"
            ) from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in data.items()
        ):
            raise UpdateError(
                f"{self.path}: the anti-rollback record is not a mapping of target to version; repair or delete it"
            )
        return data


class ArtifactTrust:
    """Applies the trust rules of the module docstring to references; counts refusals per rule.

    ``keys``: the trusted release keys (none: every reference is refused unless ``allow_unsigned``).
    ``targets``: the device's own targets. ``allow_rollback``: target -> the one lower version the operator
    allows (local config only).
    """

    def __init__(
        self,
        keys: TrustedKeys,
        targets: list[str],
        versions: ArtifactVersions,
        *,
        allow_rollback: dict[str, int] | None = None,
        allow_unsigned: bool = False,
    ) -> None:
        self.keys = keys
        self.targets = list(targets)
        self.versions = versions
        self.allow_rollback = dict(allow_rollback or {})
        self.allow_unsigned = allow_unsigned
        self.refusals: Counter[str] = Counter()
        """Refused references per rule."""

    def check(self, ref: ArtifactRef, *, running: bool = False, now: float | None = None) -> None:
        """Raise ArtifactRefused unless ``ref`` passes every rule; ``running``: the device runs it already."""
        try:
            self._check(ref, running, time.time() if now is None else now)
        except ArtifactRefused as e:
            self.refusals[e.rule] += 1
            log.warning("%s", e)
            raise

    def accept(self, ref: ArtifactRef) -> None:
        """Record ``ref``'s version as accepted for its target (after its bytes were verified)."""
        if ref.target is not None and ref.version is not None and ref.signature:
            self.versions.record(ref.target, ref.version)

    def _check(self, ref: ArtifactRef, running: bool, now: float) -> None:
        url = shown_url(ref.url)
        if not self.keys:
            if self.allow_unsigned:
                log.warning("artifact %s: no public key configured, accepting it on its sha256 alone", url)
                return
            raise ArtifactRefused(
                "no trusted key",
                f"artifact {url}: no public key to verify it; list the release public keys in "
                "agent.artifact_public_keys (`lepton-edge keygen`), or allow unsigned artifacts explicitly",
            )
        self.keys.verify(ref)
        assert ref.target is not None and ref.version is not None and ref.expires is not None
        if ref.target not in self.targets:
            raise ArtifactRefused(
                "target",
                f"artifact {url}: signed for target {ref.target!r}, which is not this device's (its targets: "
                f"{', '.join(self.targets)}; agent.artifact_targets in the local config)",
            )
        if running:
            return
        if ref.expires <= now:
            raise ArtifactRefused(
                "expired",
                f"artifact {url}: the signed reference expired at {ref.expires} (unix time, now {int(now)}); "
                "re-sign it with a later --expires-in",
            )
        highest = self.versions.highest(ref.target)
        if ref.version < highest:
            if self.allow_rollback.get(ref.target) == ref.version:
                audit.warning(
                    "AUDIT artifact rollback override used: target %s version %d accepted below the highest "
                    "accepted version %d (agent.artifact_allow_rollback in the local config), url %s",
                    ref.target,
                    ref.version,
                    highest,
                    url,
                )
                return
            raise ArtifactRefused(
                "anti-rollback",
                f"artifact {url}: version {ref.version} of target {ref.target} is below version {highest}, the "
                "highest this device has accepted; to go back to an old artifact, re-sign it with a higher "
                "version (or allow this one in agent.artifact_allow_rollback of the local config)",
            )
