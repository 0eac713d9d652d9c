"""Durable file operations shared by the state store, the artifact builder and the artifact slots."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from lepton_edge.core.errors import ModelError

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
"""How a Git LFS pointer file starts (a small text file that stands in for the real one until `git lfs pull`)."""


def fsync_path(path: str | Path) -> None:
    """fsync a file or a folder (a folder's fsync makes renames and creations inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every regular file below ``root`` and every folder, ``root`` included."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if not path.is_symlink():
                fsync_path(path)
        fsync_path(dirpath)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    The data goes to a temporary file in the same folder, which is fsynced and renamed over ``path``;
    then the folder is fsynced so the rename itself survives a power loss.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)


def file_digest(path: str | Path) -> tuple[int, str]:
    """Size in bytes and hex sha256 of a file, read in chunks (OSError when it cannot be read)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    return file_digest(path)[1]


def is_lfs_pointer(path: str | Path) -> bool:
    """True when ``path`` is a Git LFS pointer file instead of the content it points to."""
    try:
        with open(path, "rb") as f:
            return f.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except OSError:
        return False


def refuse_lfs_pointer(path: str | Path) -> None:
    """Raise :class:`ModelError` when the model file at ``path`` is a Git LFS pointer, not the model."""
    if is_lfs_pointer(path):
        raise ModelError(f"{path}: this is a Git LFS pointer, not the model: run `git lfs pull` (in the "
                         "repository it came from) to fetch the model itself")
