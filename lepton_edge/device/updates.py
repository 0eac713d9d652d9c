"""Model artifact updates: download, verify, stage into an A/B slot, switch atomically, roll back.

:class:`ArtifactStore` owns the slots; it stages an update with an
:class:`~lepton_edge.device.artifact_download.ArtifactDownloader` (fetch, then check size and sha256) and an
:class:`~lepton_edge.device.artifact_unpack.ArtifactUnpacker` (unpack and check the content).

An update is named by an :class:`~lepton_edge.config.pipeline.ArtifactRef` (url, size, sha256 and signed
metadata: version, target, expires, key id, signature). The
file is a single model (.onnx, .plan, ...) or an uncompressed tar of an artifact directory from
``lepton-edge build`` (or of one model file with its external data).

Trust: the signature covers the metadata (see :mod:`lepton_edge.device.signing`), so it and the rules of
:mod:`lepton_edge.device.artifact_trust` (trusted key, own target, not expired, no rollback) are checked before
anything is downloaded, and the downloaded bytes are then checked against the signed sha256 and size. With no
public key configured every update is refused, unless the store was created with ``allow_unsigned=True``
(then only the sha256 protects the download, which guards against corruption, not against tampering).

Layout of ``state_dir`` (a crash at any point leaves it usable; ``current`` always names a complete slot)::

    staging/<sha256>.part    download in progress (deleted on failure; after a crash, resumed by HTTP Range)
    staging/<sha256>.slot/   verified and unpacked, waiting for activate()
    staging/*.tmp            half-built or discarded slots, removed when a store opens the folder
    versions.json            highest version accepted per target (anti-rollback)
    slots/a/, slots/b/       complete slots: slot.json (what it holds) and content/ (the files)
    current -> slots/a       the active slot, a symlink replaced with rename()
    previous -> slots/b      the slot rollback() returns to, kept until the next activation
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lepton_edge.config.device import AgentConfig
from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.core.errors import UpdateError
from lepton_edge.core.fileio import fsync_path
from lepton_edge.device.artifact_common import (
    CONTENT_DIR,
    SLOT_NAMES,
    SLOT_RECORD,
    Cancellation,
    Progress,
    remove_path,
    shown_url,
)
from lepton_edge.device.artifact_download import ArtifactDownloader
from lepton_edge.device.artifact_trust import VERSIONS_FILE, ArtifactTrust, ArtifactVersions
from lepton_edge.device.artifact_unpack import MODEL_SUFFIXES, ArtifactUnpacker
from lepton_edge.device.signing import TrustedKeys

__all__ = ["MODEL_SUFFIXES", "ArtifactStore", "Progress", "UpdateError", "shown_url"]

log = logging.getLogger(__name__)


class ArtifactStore:
    """Downloads, verifies and activates model artifacts in ``state_dir`` (see the module docstring).

    ``public_keys``: ed25519 public keys (PEM files, or one file) one of which must sign every artifact; none
    refuses every update unless ``allow_unsigned`` is true. ``targets``: the device's own targets;
    ``allow_rollback``: target -> one lower version the operator allows (see
    :mod:`lepton_edge.device.artifact_trust`). ``max_bytes``: the largest artifact accepted (download and
    unpacked content). A failed download is resumed up to ``attempts`` times in one :meth:`stage` call;
    when it fails for good the partial file is deleted. ``min_speed_bytes`` per ``min_speed_window_s``,
    ``deadline_s`` and ``disk_reserve_bytes``: the download limits of
    :class:`~lepton_edge.device.artifact_download.ArtifactDownloader`. HTTPS certificates are always verified,
    against the system CAs or, when ``ca_file`` is given, against that CA bundle only.
    """

    def __init__(
        self,
        state_dir: Path,
        public_keys: Path | Sequence[Path] | None,
        max_bytes: int,
        *,
        targets: Sequence[str] = (),
        allow_rollback: dict[str, int] | None = None,
        allow_unsigned: bool = False,
        timeout_s: float = 30.0,
        attempts: int = 3,
        retry_delay_s: float = 1.0,
        ca_file: Path | None = None,
        min_speed_bytes: int = 0,
        min_speed_window_s: float = 30.0,
        deadline_s: float | None = None,
        disk_reserve_bytes: int = 0,
    ) -> None:
        self.root = Path(state_dir)
        self.staging = self.root / "staging"
        self.slots = self.root / "slots"
        if public_keys is None:
            public_keys = []
        elif isinstance(public_keys, str | Path):
            public_keys = [public_keys]
        self.trust = ArtifactTrust(
            TrustedKeys([Path(p) for p in public_keys]),
            list(targets),
            ArtifactVersions(self.root / VERSIONS_FILE),
            allow_rollback=allow_rollback,
            allow_unsigned=allow_unsigned,
        )
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._download_lock = threading.Lock()
        self.downloader = ArtifactDownloader(
            timeout_s=timeout_s,
            attempts=attempts,
            retry_delay_s=retry_delay_s,
            ca_file=ca_file,
            min_bytes=min_speed_bytes,
            min_window_s=min_speed_window_s,
            deadline_s=deadline_s,
            disk_reserve_bytes=disk_reserve_bytes,
        )
        self.unpacker = ArtifactUnpacker(max_bytes)
        self._clean_leftovers()

    @classmethod
    def for_agent(cls, agent: AgentConfig, device_id: str) -> ArtifactStore:
        """The store of a device agent: ``state_dir/artifacts`` with the agent's keys, targets and limits."""
        keys = list(agent.artifact_public_keys)
        if agent.artifact_public_key is not None and agent.artifact_public_key not in keys:
            keys.insert(0, agent.artifact_public_key)
        return cls(
            agent.state_dir / "artifacts",
            keys,
            agent.artifact_max_bytes,
            targets=agent.artifact_targets or [device_id],
            allow_rollback={o.target: o.version for o in agent.artifact_allow_rollback},
            allow_unsigned=agent.allow_unsigned_artifacts,
            min_speed_bytes=agent.artifact_min_speed_bytes,
            min_speed_window_s=agent.artifact_min_speed_window_s,
            deadline_s=agent.artifact_download_deadline_s,
            disk_reserve_bytes=agent.artifact_disk_reserve_bytes,
        )

    # -- queries --------------------------------------------------------------------------------------

    def current(self) -> Path | None:
        """Model path in the active slot, or None before the first activation."""
        slot = self._linked_slot("current")
        return self._model_path(slot) if slot else None

    def previous(self) -> Path | None:
        """Model path in the slot :meth:`rollback` would return to, or None."""
        slot = self._linked_slot("previous")
        if slot is None or slot == self._linked_slot("current"):
            return None
        return self._model_path(slot)

    @property
    def refusals(self) -> dict[str, int]:
        """References refused per trust rule (see :mod:`lepton_edge.device.artifact_trust`)."""
        return dict(self.trust.refusals)

    def has(self, ref: ArtifactRef) -> bool:
        """True when ``ref``'s artifact is staged or in a slot already (:meth:`stage` will not download)."""
        with self._lock:
            return self._staged_or_slotted(ref.sha256.lower()) is not None

    def current_sha256(self) -> str | None:
        """sha256 of the active artifact, or None."""
        slot = self._linked_slot("current")
        record = self._record(self.slots / slot) if slot else None
        return record["sha256"] if record else None

    # -- stage ----------------------------------------------------------------------------------------

    def check(self, ref: ArtifactRef) -> None:
        """Raise UpdateError when ``ref`` would be refused before any download: a size above ``max_bytes`` or
        a broken trust rule (:class:`~lepton_edge.device.artifact_trust.ArtifactTrust`)."""
        if ref.size > self.max_bytes:
            raise UpdateError(
                f"artifact {shown_url(ref.url)} is {ref.size} bytes, above the limit of {self.max_bytes} "
                "(agent.artifact_max_bytes); raise the limit or ship a smaller artifact"
            )
        self.trust.check(ref, running=ref.sha256.lower() == self.current_sha256())

    def stage(self, ref: ArtifactRef, progress: Progress | None = None, cancel: Cancellation | None = None) -> Path:
        """Download ``ref``, verify it and unpack it into a staged slot; returns the model path in it.

        Refused with UpdateError (and nothing active changes): size above ``max_bytes``, a reference that
        breaks a trust rule (:class:`~lepton_edge.device.artifact_trust.ArtifactTrust`), a download that
        fails ``attempts`` times, is too slow, passes its deadline, would go below the disk reserve or is
        cancelled (the partial file is deleted), more bytes than ``ref.size``, a wrong sha256, or an unsafe
        tar. An artifact already in a slot is not downloaded again: the path in that slot is returned
        (``activate`` accepts it). Once the bytes are verified, the reference's version is recorded as
        accepted for its target.
        """
        sha = ref.sha256.lower()
        self.check(ref)  # also for artifacts already here: the same refusals whatever is on disk
        with self._lock:
            staged = self._staged_or_slotted(sha)
        if staged is None:
            staged = self._download(ref, progress, cancel)
        self.trust.accept(ref)
        return staged

    def _download(self, ref: ArtifactRef, progress: Progress | None, cancel: Cancellation | None) -> Path:
        """Download and unpack ``ref`` into staging; one download at a time, the slots usable meanwhile."""
        sha = ref.sha256.lower()
        with self._download_lock:
            with self._lock:
                staged = self._staged_or_slotted(sha)
                if staged is not None:  # another caller staged it while this one waited
                    return staged
                self.staging.mkdir(parents=True, exist_ok=True)
                self._discard_other_updates(sha)
            part = self.downloader.fetch(
                ref,
                self.staging / f"{sha}.part",
                progress,
                reserve_bytes=self.unpacker.space_needed(ref),
                cancel=cancel,
            )
            with self._lock:
                return self.unpacker.unpack(ref, part, self.staging / f"{sha}.slot")

    def _staged_or_slotted(self, sha: str) -> Path | None:
        """The model path of the artifact ``sha`` when a slot or the staging folder already holds it."""
        for slot in (self._linked_slot("current"), self._linked_slot("previous")):
            record = self._record(self.slots / slot) if slot else None
            if record and record["sha256"] == sha:
                return self.slots / slot / record["model"]
        staged = self.staging / f"{sha}.slot"
        record = self._record(staged)
        if record and record["sha256"] == sha:
            return staged / record["model"]
        return None

    def _discard_other_updates(self, sha: str) -> None:
        # One update at a time: drop downloads and staged slots of other artifacts (device disks are small).
        for entry in self.staging.iterdir():
            if not entry.name.startswith(sha):
                log.info("discarding %s (another artifact is being staged)", entry)
                remove_path(entry)

    # -- activate and roll back -----------------------------------------------------------------------

    def activate(self, staged: Path) -> Path:
        """Make the artifact at ``staged`` (a path from :meth:`stage`) current; returns its model path.

        The new slot is moved into the inactive slot folder, then the ``current`` link is replaced in one
        rename, so a crash leaves either the old or the new slot active, both complete. The slot that was
        current becomes the previous one (for :meth:`rollback`); the one before it is discarded.
        """
        staged = Path(staged)
        with self._lock:
            slot_dir, inner = self._owning_slot(staged)
            current = self._linked_slot("current")
            if slot_dir.parent == self.slots:
                # Already in a slot (stage found it there): switch to it if it is not the current one.
                if slot_dir.name != current:
                    if current:
                        self._set_link("previous", current)
                    self._set_link("current", slot_dir.name)
                    log.info("artifact in slot %s is current again", slot_dir.name)
                return slot_dir / inner
            target = "b" if current == "a" else "a"
            if current:
                self._set_link("previous", current)  # also drops the link to the slot about to be replaced
            else:
                remove_path(self.root / "previous")
            self.slots.mkdir(parents=True, exist_ok=True)
            discarded = self.staging / f"discarded-{target}.tmp"
            remove_path(discarded)
            if (self.slots / target).exists():
                os.rename(self.slots / target, discarded)
            os.rename(slot_dir, self.slots / target)
            fsync_path(self.slots)
            self._set_link("current", target)
            remove_path(discarded)
            log.info("activated slot %s: %s", target, self._record(self.slots / target))
            return self.slots / target / inner

    def rollback(self) -> Path | None:
        """Make the previous slot current again; returns its model path, or None when there is none.

        The slot rolled back from stays on disk (not returned by :meth:`previous`) until the next
        activation replaces it.
        """
        with self._lock:
            previous = self._linked_slot("previous")
            current = self._linked_slot("current")
            if previous is None or previous == current:
                return None
            self._set_link("current", previous)
            remove_path(self.root / "previous")
            fsync_path(self.root)
            log.warning("rolled back from slot %s to slot %s", current, previous)
            return self._model_path(previous)

    def deactivate(self) -> None:
        """Make no artifact current (after the first artifact ever activated failed: the device goes back to
        its local model file, and a later rollback must not return to the failed artifact)."""
        with self._lock:
            current = self._linked_slot("current")
            remove_path(self.root / "current")
            remove_path(self.root / "previous")
            fsync_path(self.root)
            if current:
                log.warning("deactivated slot %s: no artifact is current", current)

    # -- internals ------------------------------------------------------------------------------------

    def _owning_slot(self, path: Path) -> tuple[Path, Path]:
        """The slot folder holding ``path`` (staged or in slots/) and ``path`` relative to it."""
        for base in (self.staging, self.slots):
            try:
                inner = path.relative_to(base)
            except ValueError:
                continue
            slot_dir = base / inner.parts[0]
            record = self._record(slot_dir) if len(inner.parts) > 1 else None
            staged_ok = base == self.slots or slot_dir.name.endswith(".slot")
            if record and staged_ok and (slot_dir / Path(*inner.parts[1:])).exists():
                return slot_dir, Path(*inner.parts[1:])
        raise UpdateError(f"{path}: not a staged artifact of {self.root}; stage it first (ArtifactStore.stage)")

    def _record(self, slot_dir: Path) -> dict[str, Any] | None:
        """The slot's record when the slot is complete, else None."""
        try:
            record = json.loads((slot_dir / SLOT_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or not isinstance(record.get("model"), str):
            return None
        if not record["model"].startswith(CONTENT_DIR) or ".." in record["model"].split("/"):
            return None
        return record if (slot_dir / record["model"]).exists() else None

    def _model_path(self, slot: str) -> Path | None:
        record = self._record(self.slots / slot)
        return self.slots / slot / record["model"] if record else None

    def _linked_slot(self, link: str) -> str | None:
        """The slot name (a or b) the link ``link`` points to, when it is complete."""
        try:
            target = os.readlink(self.root / link)
        except OSError:
            return None
        name = Path(target).name
        if Path(target).parent != Path("slots") or name not in SLOT_NAMES:
            return None
        return name if self._record(self.slots / name) else None

    def _set_link(self, link: str, slot: str) -> None:
        tmp = self.root / f".{link}.tmp"
        remove_path(tmp)
        os.symlink(f"slots/{slot}", tmp)
        os.replace(tmp, self.root / link)
        fsync_path(self.root)

    def _clean_leftovers(self) -> None:
        for link in ("current", "previous"):
            remove_path(self.root / f".{link}.tmp")
        if self.staging.is_dir():
            for entry in self.staging.glob("*.tmp"):
                log.info("removing %s (left by an interrupted update)", entry)
                remove_path(entry)
