"""Model artifact updates: download, verify, stage into an A/B slot, switch atomically, roll back.

:class:`ArtifactStore` owns the slots; it stages an update with an
:class:`~lepton_edge.device.artifact_download.ArtifactDownloader` (fetch, then check size and sha256) and an
:class:`~lepton_edge.device.artifact_unpack.ArtifactUnpacker` (unpack and check the content).

An update is named by an :class:`~lepton_edge.config.pipeline.ArtifactRef` (url, size, sha256, signature). The
file is a single model (.onnx, .plan, ...) or an uncompressed tar of an artifact directory from
``lepton-edge build`` (or of one model file with its external data).

Trust: the signature covers the sha256 (see :mod:`lepton_edge.device.signing`), so it is checked before
anything is downloaded, and the downloaded bytes are then checked against that sha256 and size. With no
public key configured every update is refused, unless the store was created with ``allow_unsigned=True``
(then only the sha256 protects the download, which guards against corruption, not against tampering).

Layout of ``state_dir`` (a crash at any point leaves it usable; ``current`` always names a complete slot)::

    staging/<sha256>.part    download in progress (deleted on failure; after a crash, resumed by HTTP Range)
    staging/<sha256>.slot/   verified and unpacked, waiting for activate()
    staging/*.tmp            half-built or discarded slots, removed when a store opens the folder
    slots/a/, slots/b/       complete slots: slot.json (what it holds) and content/ (the files)
    current -> slots/a       the active slot, a symlink replaced with rename()
    previous -> slots/b      the slot rollback() returns to, kept until the next activation
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.core.errors import UpdateError
from lepton_edge.core.fileio import fsync_path
from lepton_edge.device.artifact_common import (
    CONTENT_DIR,
    SLOT_NAMES,
    SLOT_RECORD,
    Progress,
    remove_path,
    shown_url,
)
from lepton_edge.device.artifact_download import ArtifactDownloader
from lepton_edge.device.artifact_unpack import MODEL_SUFFIXES, ArtifactUnpacker
from lepton_edge.device.signing import verify_signature

__all__ = ["MODEL_SUFFIXES", "ArtifactStore", "Progress", "UpdateError", "shown_url"]

log = logging.getLogger(__name__)


class ArtifactStore:
    """Downloads, verifies and activates model artifacts in ``state_dir`` (see the module docstring).

    ``public_key``: ed25519 public key (PEM) whose signature every artifact must carry; None refuses every
    update unless ``allow_unsigned`` is true. ``max_bytes``: the largest artifact accepted (download and
    unpacked content). A failed download is resumed up to ``attempts`` times in one :meth:`stage` call;
    when it fails for good the partial file is deleted. ``min_speed_bytes`` per ``min_speed_window_s``,
    ``deadline_s`` and ``disk_reserve_bytes``: the download limits of
    :class:`~lepton_edge.device.artifact_download.ArtifactDownloader`. HTTPS certificates are always verified,
    against the system CAs or, when ``ca_file`` is given, against that CA bundle only.
    """

    def __init__(
        self,
        state_dir: Path,
        public_key: Path | None,
        max_bytes: int,
        *,
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
        self.public_key = Path(public_key) if public_key is not None else None
        self.max_bytes = max_bytes
        self.allow_unsigned = allow_unsigned
        self._lock = threading.RLock()
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

    def current_sha256(self) -> str | None:
        """sha256 of the active artifact, or None."""
        slot = self._linked_slot("current")
        record = self._record(self.slots / slot) if slot else None
        return record["sha256"] if record else None

    # -- stage ----------------------------------------------------------------------------------------

    def stage(self, ref: ArtifactRef, progress: Progress | None = None) -> Path:
        """Download ``ref``, verify it and unpack it into a staged slot; returns the model path in it.

        Refused with UpdateError (and nothing active changes): size above ``max_bytes``, missing or wrong
        signature, a download that fails ``attempts`` times, is too slow, passes its deadline or would go
        below the disk reserve (the partial file is deleted), more bytes than ``ref.size``, a wrong sha256,
        or an unsafe tar. An artifact already in
        a slot is not downloaded again: the path in that slot is returned (``activate`` accepts it).
        """
        sha = ref.sha256.lower()
        if ref.size > self.max_bytes:
            raise UpdateError(
                f"artifact {shown_url(ref.url)} is {ref.size} bytes, above the limit of {self.max_bytes} "
                "(agent.artifact_max_bytes); raise the limit or ship a smaller artifact"
            )
        self._check_signature(ref)  # also for artifacts already here: the same refusals whatever is on disk
        with self._lock:
            existing = self._staged_or_slotted(sha)
            if existing is not None:
                return existing
            self.staging.mkdir(parents=True, exist_ok=True)
            self._discard_other_updates(sha)
            part = self.downloader.fetch(
                ref, self.staging / f"{sha}.part", progress, reserve_bytes=self.unpacker.space_needed(ref)
            )
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

    def _check_signature(self, ref: ArtifactRef) -> None:
        url = shown_url(ref.url)
        if self.public_key is None:
            if self.allow_unsigned:
                log.warning("artifact %s: no public key configured, accepting it on its sha256 alone", url)
                return
            raise UpdateError(
                f"artifact {url} refused: no public key to verify it; set agent.artifact_public_key to the "
                "release public key (`lepton-edge keygen`), or allow unsigned artifacts explicitly"
            )
        if not ref.signature:
            raise UpdateError(
                f"artifact {url} has no signature; sign it with `lepton-edge sign FILE --key RELEASE.key` "
                "and "
                "put the signature in model.artifact.signature"
            )

        try:
            verify_signature(ref.sha256, ref.signature, self.public_key)
        except UpdateError as e:
            raise UpdateError(f"artifact {url}: {e}") from None

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
        raise UpdateError(
            f"{path}: not a staged artifact of {self.root}; stage it first (ArtifactStore.stage)"
        )

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
