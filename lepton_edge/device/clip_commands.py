"""The ``clips.list`` and ``clips.read`` commands: event clips leave the device in bounded chunks.

Only complete clips in the configured clip folders are served: a clip is ``<folder>/<clip_id>.mp4`` with its
metadata ``<folder>/<clip_id>.json`` beside it (the recorder renames both into place when a clip is done).
Clip ids are names, never paths (:data:`CLIP_ID_PATTERN`), files are opened without following symbolic links
and must be regular files with one link, and in-progress ``.part`` files are never served. Anything else (a
path, a symlink out of the folder, a ``.part``, the agent's state files) is refused with a
:class:`ClipRefused` naming what was asked and why.

``clips.read {id, offset, length}`` answers at most :data:`MAX_CHUNK_BYTES` (base64 in the JSON answer, so the
:class:`~lepton_edge.fleet.protocol.CommandResponse` stays under the protocol's 256 KiB payload limit) with the
clip's total size and SHA-256, so a requester can resume from any offset and verify the whole file.

:class:`ClipFolders` reads the recorder's on-disk layout directly; the recorder's own ``ClipStore``
(``runtime/clips/store.py``) writes that layout; :meth:`ClipCommands.for_stores` serves the folders of its stores.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lepton_edge.core.errors import ConfigError, LeptonError

CLIP_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""A clip id: a name of 1-128 characters, never a path (no ``/``, no leading ``.``)."""
_CLIP_ID = re.compile(CLIP_ID_PATTERN)
MAX_CHUNK_BYTES = 128 * 1024
"""The most bytes one ``clips.read`` returns (about 171 KiB once base64-encoded)."""
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 200
"""The most clips one ``clips.list`` returns (their metadata stays far below the payload limit)."""
MAX_METADATA_BYTES = 1 << 20
"""The largest metadata file read (the recorder's own limit)."""
MAX_EVENT_IDS = 32
"""Event ids listed per clip (the metadata file may hold more; ``event_count`` says how many)."""
METADATA_FIELDS = (
    "stream", "start_capture", "end_capture", "start_wall", "end_wall", "bytes", "sha256", "codec", "reencoded",
)  # fmt: skip
_HASH_BLOCK = 1 << 20

log = logging.getLogger(__name__)


class ClipRefused(LeptonError):
    """A clip request the device will not serve (bad id, outside the clip folders, not complete, bad range)."""


@dataclass(frozen=True, slots=True)
class ClipFile:
    """A complete clip, opened: its id, folder, metadata, size and an open file (the caller closes it)."""

    clip_id: str
    folder: Path
    metadata: dict[str, Any]
    size: int
    identity: tuple[int, int, int, int]
    """(device, inode, size, mtime_ns) of the open file: a changed file never reuses a cached hash."""
    file: BinaryIO


class ClipFolders:
    """The recorder's clip folders, read-only: complete clips only, never a path outside them."""

    def __init__(self, folders: Sequence[str | Path] | Callable[[], Sequence[str | Path]], *,
                 forbidden: Sequence[str | Path] = ()) -> None:
        """``folders``: the clip folders, or a function giving the folders of the streams running now."""
        self._folders = folders
        self._forbidden = [Path(p).resolve() for p in forbidden]
        if not callable(folders):
            if not folders:
                raise ConfigError("clip commands: no clip folder given")
            for folder in folders:  # a fixed list is checked now: a bad folder is a config error
                self._check(Path(folder).resolve())

    def _check(self, folder: Path) -> None:
        for other in self._forbidden:
            if folder == other or other in folder.parents:
                raise ConfigError(
                    f"clip folder {folder} is inside {other}, which holds the agent's own files; "
                    "give the clips a folder of their own"
                )

    @property
    def folders(self) -> list[Path]:
        """The clip folders now (a clip folder inside the agent's own state is never served)."""
        given = self._folders() if callable(self._folders) else self._folders
        served = []
        for folder in dict.fromkeys(Path(f).resolve() for f in given):
            try:
                self._check(folder)
            except ConfigError as e:
                log.warning("%s", e)
                continue
            served.append(folder)
        return served

    def list(self, limit: int) -> list[dict[str, Any]]:
        """Metadata of the complete clips, newest first (by end wall time, else the file's time), at most
        ``limit``; clips whose metadata cannot be read are listed with what the file says."""
        found: list[tuple[float, dict[str, Any]]] = []
        for folder in self.folders:
            for path in _entries(folder):
                clip_id = path.name[: -len(".mp4")]
                if not path.name.endswith(".mp4") or not _CLIP_ID.fullmatch(clip_id):
                    continue
                try:
                    info = path.lstat()
                except OSError:
                    continue
                if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                    continue  # as open() refuses them
                metadata = _read_metadata(folder, clip_id)
                if metadata is None:
                    continue  # no metadata: not renamed into place yet, not a clip
                entry = _summary(clip_id, metadata, info.st_size)
                when = entry.get("end_wall")
                found.append((float(when) if isinstance(when, int | float) else info.st_mtime, entry))
        found.sort(key=lambda item: item[0], reverse=True)
        return [entry for _, entry in found[:limit]]

    def open(self, clip_id: Any) -> ClipFile:
        """The complete clip ``clip_id``, opened for reading; :class:`ClipRefused` for anything else."""
        check_clip_id(clip_id)
        for folder in self.folders:
            path = folder / f"{clip_id}.mp4"
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                continue
            except OSError as e:  # ELOOP: a symbolic link
                reason = f"{path.name} is not a plain file in the clip folder ({e.strerror})"
                raise ClipRefused(f"clip {clip_id!r}: {reason}") from None
            file = os.fdopen(fd, "rb")
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                    raise ClipRefused(f"clip {clip_id!r}: {path.name} is not a plain file with one link; not served")
                metadata = _read_metadata(folder, clip_id)
                if metadata is None:
                    raise ClipRefused(f"clip {clip_id!r} is not complete (no readable {clip_id}.json beside it)")
                identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
                return ClipFile(clip_id, folder, metadata, info.st_size, identity, file)
            except BaseException:
                file.close()
                raise
        raise ClipRefused(f"clip {clip_id!r} not found among the complete clips (clips.list lists them)")


class ClipCommands:
    """The command handlers ``clips.list`` and ``clips.read`` over :class:`ClipFolders` (or a ``ClipStore``
    with the same ``list`` and ``open``)."""

    def __init__(self, clips: ClipFolders, *, max_chunk_bytes: int = MAX_CHUNK_BYTES) -> None:
        if not 1 <= max_chunk_bytes <= MAX_CHUNK_BYTES:
            raise ConfigError(f"clip commands: max_chunk_bytes must be 1..{MAX_CHUNK_BYTES}, got {max_chunk_bytes}")
        self.clips = clips
        self.max_chunk_bytes = max_chunk_bytes
        self._hashes: dict[tuple[int, int, int, int], str] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_folders(cls, folders: Sequence[str | Path], *, forbidden: Sequence[str | Path] = ()) -> ClipCommands:
        return cls(ClipFolders(folders, forbidden=forbidden))

    @classmethod
    def for_stores(cls, stores: Sequence[Any], *, forbidden: Sequence[str | Path] = ()) -> ClipCommands:
        """Over the folders of the recorder's clip stores (anything with a ``folder``)."""
        return cls.for_folders([store.folder for store in stores], forbidden=forbidden)

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {"clips.list": self.list, "clips.read": self.read}

    def list(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"clips": [...newest first], "limit": n}``; ``args``: optional ``limit`` (1..200, default 50)."""
        _known_args("clips.list", args, {"limit"})
        limit = _int_arg(args, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
        return {"clips": self.clips.list(limit), "limit": limit}

    def read(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{id, offset, length, size, sha256, eof, data}`` (``data`` base64) for ``args`` ``{id, offset,
        length}``; ``length`` defaults to and is capped at the chunk size; ``offset`` may equal the size."""
        _known_args("clips.read", args, {"id", "offset", "length"})
        offset = _int_arg(args, "offset", 0, 0, 1 << 50)
        length = _int_arg(args, "length", self.max_chunk_bytes, 1, self.max_chunk_bytes)
        clip = self.clips.open(args.get("id"))
        with clip.file:
            if offset > clip.size:
                raise ClipRefused(f"clip {clip.clip_id!r}: offset {offset} is past its end ({clip.size} bytes)")
            digest = self._sha256(clip)
            clip.file.seek(offset)
            data = clip.file.read(length)
        return {
            "id": clip.clip_id,
            "offset": offset,
            "length": len(data),
            "size": clip.size,
            "sha256": digest,
            "eof": offset + len(data) >= clip.size,
            "data": base64.b64encode(data).decode("ascii"),
        }

    def _sha256(self, clip: ClipFile) -> str:
        """The clip's SHA-256, hashed once per file version (the metadata's own value is not trusted: the
        requester verifies what it received against what is on the disk)."""
        with self._lock:
            known = self._hashes.get(clip.identity)
        if known is not None:
            return known
        digest = hashlib.sha256()
        clip.file.seek(0)
        while block := clip.file.read(_HASH_BLOCK):
            digest.update(block)
        value = digest.hexdigest()
        with self._lock:
            if len(self._hashes) > 256:
                self._hashes.clear()
            self._hashes[clip.identity] = value
        return value


def check_clip_id(clip_id: Any) -> str:
    """``clip_id`` if it is a clip name (:data:`CLIP_ID_PATTERN`), else :class:`ClipRefused`."""
    if not isinstance(clip_id, str) or not _CLIP_ID.fullmatch(clip_id):
        shown = repr(clip_id)[:160]
        raise ClipRefused(
            f"clip id {shown} refused: a clip id is 1-128 characters from A-Z a-z 0-9 _ . - starting with a "
            "letter or digit, never a path"
        )
    if clip_id.endswith(".part"):
        raise ClipRefused(f"clip id {clip_id!r} refused: .part files are clips being written, never served")
    return clip_id


def _known_args(command: str, args: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(args) - known)
    if unknown:
        raise ClipRefused(f"{command}: unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _int_arg(args: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ClipRefused(f"argument {name!r} must be an integer in {low}..{high}, got {repr(value)[:40]}")
    return value


def _entries(folder: Path) -> Iterator[Path]:
    with contextlib.suppress(OSError), os.scandir(folder) as it:
        for entry in it:
            yield Path(entry.path)


def _read_metadata(folder: Path, clip_id: str) -> dict[str, Any] | None:
    """The clip's ``.json`` (a plain file, bounded size), or None when absent or unreadable."""
    try:
        fd = os.open(folder / f"{clip_id}.json", os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = file.read(MAX_METADATA_BYTES + 1)
    if len(raw) > MAX_METADATA_BYTES:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _summary(clip_id: str, metadata: dict[str, Any], size: int) -> dict[str, Any]:
    """What ``clips.list`` says of one clip: the id, the metadata's scalar fields, a few event ids."""
    entry: dict[str, Any] = {"id": clip_id}
    for name in METADATA_FIELDS:
        value = metadata.get(name)
        if isinstance(value, str):
            entry[name] = value[:128]
        elif isinstance(value, bool | int | float) or value is None:
            entry[name] = value
    entry["bytes"] = size  # the file's own size, whatever the metadata says
    events = metadata.get("event_ids")
    events = [e[:64] for e in events if isinstance(e, str)] if isinstance(events, list) else []
    entry["event_ids"] = events[:MAX_EVENT_IDS]
    entry["event_count"] = len(events)
    return entry
