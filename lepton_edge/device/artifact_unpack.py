"""Unpacking a verified artifact download into a staged slot, and checking what it holds.

A download is a single model file (hard-linked into the slot) or an uncompressed tar (``.tar`` URL or
``ustar`` magic) of an artifact directory from ``lepton-edge build`` or of one model file with its external
data. Tar members are checked before anything is extracted: no absolute paths, no ``..``, no links leaving
the archive, no devices or fifos, and no more than ``max_bytes`` in all. The slot is built beside its final
name and renamed into place once complete (the layout is in :mod:`~lepton_edge.device.artifact_common`).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import shutil
import tarfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.core.errors import LeptonError, UpdateError
from lepton_edge.core.fileio import fsync_path, fsync_tree
from lepton_edge.device.artifact_common import CONTENT_DIR, SLOT_RECORD, remove_path, shown_url
from lepton_edge.engines.artifacts import MANIFEST_NAME, read_manifest

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".onnx", ".plan", ".engine", ".trt")


class ArtifactUnpacker:
    """Builds a staged slot from a verified download; ``max_bytes`` bounds what a tar may unpack to."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    @staticmethod
    def space_needed(ref: ArtifactRef) -> int:
        """Bytes :meth:`unpack` needs beside the download: a tar is unpacked, a single file hard-linked."""
        return ref.size if _looks_like_tar_url(ref.url) else 0

    def unpack(self, ref: ArtifactRef, part: Path, staged: Path) -> Path:
        """Build the staged slot ``staged`` from the verified download ``part``; returns the model path in it.

        ``part`` is removed once the slot is complete; on any failure the half-built slot is removed and
        ``part`` kept.
        """
        tmp = staged.parent / f"{staged.name}.tmp"
        remove_path(tmp)
        remove_path(staged)
        content = tmp / CONTENT_DIR
        content.mkdir(parents=True)
        try:
            if _is_tar(part, ref.url):
                kind = "tar"
                self._extract(part, content, ref)
                model = _find_model(content, ref)
            else:
                kind = "file"
                model = _file_name(ref.url)
                try:
                    os.link(part, content / model)  # the download stays in place until the slot is complete
                except OSError:  # a file system without hard links
                    shutil.copyfile(part, content / model)
            record = {
                "sha256": ref.sha256.lower(),
                "size": ref.size,
                "url": shown_url(ref.url),
                "kind": kind,
                "model": posixpath.normpath(f"{CONTENT_DIR}/{model}"),
            }
            (tmp / SLOT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            fsync_tree(tmp)
            os.rename(tmp, staged)
            fsync_path(staged.parent)
        except BaseException:
            remove_path(tmp)
            raise
        remove_path(part)
        log.info("artifact %s staged in %s (%s, %d bytes)", shown_url(ref.url), staged, kind, ref.size)
        return staged / record["model"]

    def _extract(self, part: Path, dest: Path, ref: ArtifactRef) -> None:
        url = shown_url(ref.url)
        try:
            archive = tarfile.open(part, "r:")  # noqa: SIM115 - closed by the `with` below
        except tarfile.TarError as e:
            raise UpdateError(
                f"artifact {url}: not a readable uncompressed tar ({e}); pack artifact directories with "
                "`tar -cf NAME.tar -C PARENT NAME`"
            ) from None
        with archive:
            members = archive.getmembers()
            total = 0
            for member in members:
                _check_member(member, url)
                total += member.size
                if total > self.max_bytes:
                    raise UpdateError(
                        f"artifact {url}: the tar unpacks to more than {self.max_bytes} bytes "
                        "(agent.artifact_max_bytes); refused"
                    )
            if hasattr(tarfile, "data_filter"):  # a second line of defence where Python has it
                archive.extractall(dest, members=members, filter="data")
            else:
                archive.extractall(dest, members=members)


def _looks_like_tar_url(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(".tar")


def _is_tar(path: Path, url: str) -> bool:
    """A tar by its URL (``.tar``) or by its ``ustar`` magic (URLs without an extension)."""
    if _looks_like_tar_url(url):
        return True
    with open(path, "rb") as f:
        f.seek(257)
        return f.read(5) == b"ustar"


def _file_name(url: str) -> str:
    """The model file name in the slot: the URL's file name, made safe; ``model.onnx`` without one."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", posixpath.basename(unquote(urlsplit(url).path)))
    if not name.strip(".") or name == SLOT_RECORD:
        return "model.onnx"
    return name


def _check_member(member: tarfile.TarInfo, url: str) -> None:
    """Refuse absolute paths, ``..``, links leaving the archive, and anything but files, folders and links."""
    name = member.name
    normalized = posixpath.normpath(name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UpdateError(f"artifact {url}: tar member {name!r} has an absolute path; refused")
    if normalized == ".." or normalized.startswith("../") or ".." in name.replace("\\", "/").split("/"):
        raise UpdateError(f"artifact {url}: tar member {name!r} climbs out of the archive with '..'; refused")
    if member.issym() or member.islnk():
        link = member.linkname
        base = posixpath.dirname(normalized) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, link))
        if link.startswith("/") or target == ".." or target.startswith("../"):
            raise UpdateError(
                f"artifact {url}: tar member {name!r} links to {link!r}, outside the archive; refused"
            )
    elif not (member.isfile() or member.isdir()):
        raise UpdateError(f"artifact {url}: tar member {name!r} is a device or fifo; refused")


def _find_model(content: Path, ref: ArtifactRef) -> str:
    """The model inside an unpacked tar, relative to ``content``: an artifact directory or one model file."""

    entries = sorted(content.iterdir())
    candidates = [content]
    if len(entries) == 1 and entries[0].is_dir():
        candidates.append(entries[0])
    for folder in candidates:
        if (folder / MANIFEST_NAME).is_file():
            try:
                manifest = read_manifest(folder)
            except LeptonError as e:
                raise UpdateError(f"artifact {shown_url(ref.url)}: {e}") from None
            if not (folder / manifest.engine.file).is_file():
                raise UpdateError(
                    f"artifact {shown_url(ref.url)}: the manifest names engine {manifest.engine.file!r}, "
                    "which "
                    "is not in the tar"
                )
            return folder.relative_to(content).as_posix()
    models = [
        p
        for folder in candidates
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES
    ]
    if len(models) == 1:
        return models[0].relative_to(content).as_posix()
    raise UpdateError(
        f"artifact {shown_url(ref.url)}: the tar holds neither an artifact directory ({MANIFEST_NAME}) nor "
        f"exactly one model file ({', '.join(MODEL_SUFFIXES)}); found {[e.name for e in entries][:10]}"
    )
