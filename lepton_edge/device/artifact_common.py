"""Names shared by the artifact modules: the slot layout, URLs as logged, and removing what an update left.

:mod:`~lepton_edge.device.artifact_unpack` builds slots in this layout and
:mod:`~lepton_edge.device.updates` reads them; both, and :mod:`~lepton_edge.device.artifact_download`, show
URLs with :func:`shown_url` and drop files and folders with :func:`remove_path`.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
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
