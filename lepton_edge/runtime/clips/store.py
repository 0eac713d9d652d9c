"""The clip folder: complete clips (``<id>.mp4`` with its ``<id>.json`` metadata), a quota and a retention time.

A clip is written as ``<id>.mp4.part``, fsynced and renamed to ``<id>.mp4``, then its metadata is written
atomically; deletion removes the metadata first. So a crash leaves at most a ``.part`` file or an ``.mp4``
without metadata, and both are deleted when the store opens: a clip is listed complete or not at all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from lepton_edge.core.errors import LeptonError
from lepton_edge.core.fileio import atomic_write, fsync_path

log = logging.getLogger(__name__)

CLIP_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""A clip id: a name of 1-128 characters, never a path (no ``/``, no leading ``.``, no ``..``)."""
_CLIP_ID = re.compile(CLIP_ID_PATTERN)
PART_SUFFIX = ".mp4.part"
_MAX_METADATA_BYTES = 1 << 20


class ClipError(LeptonError):
    """A clip id that is not a name, or a clip that is not in the store."""


def check_clip_id(clip_id: object) -> str:
    """``clip_id`` when it is a valid clip id; :class:`ClipError` naming it otherwise."""
    if not isinstance(clip_id, str) or not _CLIP_ID.match(clip_id) or ".." in clip_id:
        raise ClipError(f"clip id {str(clip_id)[:80]!r} is not a clip id (letters, digits, '_', '-', '.'; 1-128 "
                        "characters; never a path)")
    return clip_id


class ClipStore:
    """The clips of one folder, thread safe. ``max_bytes`` bounds the folder (clips and metadata) and
    ``retention_s`` their age; the oldest go first, counted in ``deleted_quota`` and ``deleted_retention``."""

    def __init__(self, folder: str | Path, max_bytes: int, retention_s: float) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.retention_s = retention_s
        self.deleted_quota = 0
        self.deleted_retention = 0
        self.removed_incomplete = 0
        """``.part`` files and clips without metadata deleted at start (left by a crash)."""
        self._lock = threading.Lock()
        self._enforcing = threading.Lock()
        """One enforcement at a time (streams sharing the store): a clip is deleted and counted once."""
        self._clips: dict[str, dict[str, Any]] = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder = self.folder.resolve()
        self._open()

    # -- paths ------------------------------------------------------------------------------------------

    def path(self, clip_id: str) -> Path:
        """The video file of ``clip_id`` (it may not exist); :class:`ClipError` for an id that is not a name."""
        return self.folder / f"{check_clip_id(clip_id)}.mp4"

    def part_path(self, clip_id: str) -> Path:
        return self.folder / f"{check_clip_id(clip_id)}{PART_SUFFIX}"

    def metadata_path(self, clip_id: str) -> Path:
        return self.folder / f"{check_clip_id(clip_id)}.json"

    # -- reading ----------------------------------------------------------------------------------------

    def list(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Metadata of the complete clips, newest first."""
        with self._lock:
            clips = sorted(self._clips.values(), key=_age_key, reverse=True)
        return [dict(c) for c in clips[:limit]]

    def get(self, clip_id: str) -> dict[str, Any]:
        with self._lock:
            found = self._clips.get(check_clip_id(clip_id))
        if found is None:
            raise ClipError(f"clip {clip_id!r} is not in {self.folder}")
        return dict(found)

    def total_bytes(self) -> int:
        with self._lock:
            return sum(_size(c) for c in self._clips.values())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            count, size = len(self._clips), sum(_size(c) for c in self._clips.values())
        return {
            "clips": count,
            "bytes": size,
            "deleted_quota": self.deleted_quota,
            "deleted_retention": self.deleted_retention,
            "removed_incomplete": self.removed_incomplete,
        }

    # -- writing ----------------------------------------------------------------------------------------

    def commit(self, clip_id: str, metadata: dict[str, Any]) -> None:
        """Record the clip whose ``<id>.mp4`` is in place: write its metadata atomically, then apply retention and
        quota (which may delete it at once when it alone is over the quota)."""
        data = json.dumps(metadata, sort_keys=True).encode("utf-8")
        atomic_write(self.metadata_path(clip_id), data)
        entry = {**metadata, "metadata_bytes": len(data)}
        with self._lock:
            self._clips[clip_id] = entry
        self.enforce()

    def remove(self, clip_id: str) -> None:
        """Delete a clip: metadata first, so a crash between the two leaves a clip that start-up removes."""
        with self._lock:
            self._clips.pop(check_clip_id(clip_id), None)
        for path in (self.metadata_path(clip_id), self.path(clip_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def enforce(self, now: float | None = None) -> int:
        """Delete clips past their retention, then the oldest until the folder is within its quota; how many."""
        with self._enforcing:
            return self._enforce(time.time() if now is None else now)

    def _enforce(self, now: float) -> int:
        expired, over = [], []
        with self._lock:
            clips = sorted(self._clips.values(), key=_age_key)
            total = sum(_size(c) for c in clips)
            for clip in clips:
                if now - float(clip.get("end_wall", 0.0)) > self.retention_s:
                    expired.append(clip["id"])
                    total -= _size(clip)
            for clip in clips:
                if total <= self.max_bytes:
                    break
                if clip["id"] not in expired:
                    over.append(clip["id"])
                    total -= _size(clip)
        for clip_id in expired + over:
            try:
                self.remove(clip_id)
            except OSError as e:
                log.error("clip store %s: cannot delete clip %s: %s", self.folder, clip_id, e)
        self.deleted_retention += len(expired)
        self.deleted_quota += len(over)
        if expired or over:
            log.info("clip store %s: deleted %d clip(s) past retention and %d over the quota", self.folder,
                     len(expired), len(over))
        return len(expired) + len(over)

    # -- start-up ---------------------------------------------------------------------------------------

    def _open(self) -> None:
        """Delete what a crash left (``.part`` files, clips without metadata) and index the complete clips."""
        for entry in os.scandir(self.folder):
            name = entry.name
            if not entry.is_file(follow_symlinks=False):
                continue
            orphan = name.endswith(".mp4") and not (self.folder / f"{name[:-4]}.json").exists()
            if name.endswith(PART_SUFFIX) or orphan:
                if _CLIP_ID.match(name.split(".mp4")[0]):
                    self._unlink_incomplete(Path(entry.path))
            elif name.endswith(".json") and _CLIP_ID.match(name[:-5]):
                self._index(name[:-5], Path(entry.path))
        with contextlib.suppress(OSError):
            fsync_path(self.folder)
        self.enforce()

    def _unlink_incomplete(self, path: Path) -> None:
        try:
            path.unlink()
        except OSError as e:
            log.warning("clip store %s: cannot delete the incomplete clip %s: %s", self.folder, path.name, e)
            return
        self.removed_incomplete += 1
        log.info("clip store %s: deleted the incomplete clip %s (left by an interrupted write)", self.folder,
                 path.name)

    def _index(self, clip_id: str, path: Path) -> None:
        if not self.path(clip_id).is_file():
            return  # metadata of something else in the folder; clips always have their video
        try:
            raw = path.read_bytes()[:_MAX_METADATA_BYTES]
            metadata = json.loads(raw)
        except (OSError, ValueError) as e:
            log.warning("clip store %s: unreadable metadata %s (%s); clip not listed", self.folder, path.name, e)
            return
        if isinstance(metadata, dict) and metadata.get("id") == clip_id:
            self._clips[clip_id] = {**metadata, "metadata_bytes": len(raw)}


def _age_key(clip: dict[str, Any]) -> tuple[float, str]:
    return float(clip.get("end_wall", 0.0)), str(clip.get("id", ""))


def _size(clip: dict[str, Any]) -> int:
    return int(clip.get("bytes", 0)) + int(clip.get("metadata_bytes", 0))
