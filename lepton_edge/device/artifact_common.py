"""Names shared by the artifact modules: the slot layout, URLs as logged, and removing what an update left.

:mod:`~lepton_edge.device.artifact_unpack` builds slots in this layout and
:mod:`~lepton_edge.device.updates` reads them; both, and :mod:`~lepton_edge.device.artifact_download`, show
URLs with :func:`shown_url` and drop files and folders with :func:`remove_path`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from lepton_edge.core.errors import UpdateError

SLOT_NAMES = ("a", "b")
SLOT_RECORD = "slot.json"
CONTENT_DIR = "content"

Progress = Callable[[int, int], None]


class ArtifactRefused(UpdateError):
    """An artifact reference refused by a trust rule (``rule``: anti-rollback, expired, target, unknown key,
    signature, ...); the message names the rule, the device counts refusals per rule."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{message} [refused: {rule}]")
        self.rule = rule


class Cancellation:
    """Cancels a download from another thread: :meth:`set` makes its next read fail at once, even a read
    already waiting on a silent server (the watched connection is shut down)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._fd: int | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less when cancelled; True when cancelled."""
        return self._event.wait(seconds)

    def set(self) -> None:
        with self._lock:  # the watched socket stays open while it is shut down (see watching)
            self._event.set()
            if self._fd is not None:
                _shut_down(self._fd)

    @contextlib.contextmanager
    def watching(self, fileno: int) -> Iterator[None]:
        """While the body runs, :meth:`set` shuts down the connection whose file descriptor is ``fileno``;
        the caller closes the connection only after the body."""
        with self._lock:
            self._fd = fileno
            if self._event.is_set():
                _shut_down(fileno)
        try:
            yield
        finally:
            with self._lock:
                self._fd = None


def _shut_down(fileno: int) -> None:
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fileno)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def shown_url(url: str) -> str:
    """``url`` without credentials or query string (presigned URLs carry secrets there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def remove_path(path: Path) -> None:
    """Remove a file, link or folder tree at ``path``; nothing there is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
