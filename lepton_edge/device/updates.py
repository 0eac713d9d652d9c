"""Model artifact updates: download, verify, stage into an A/B slot, switch atomically, roll back.

An update is named by an :class:`~lepton_edge.config.pipeline.ArtifactRef` (url, size, sha256, signature). The
file is a single model (.onnx, .plan, ...) or an uncompressed tar of an artifact directory from
``lepton-edge build`` (or of one model file with its external data).

Trust: the signature covers the sha256 (see :mod:`lepton_edge.device.signing`), so it is checked before
anything is downloaded, and the downloaded bytes are then checked against that sha256 and size. With no
public key configured every update is refused, unless the store was created with ``allow_unsigned=True``
(then only the sha256 protects the download, which guards against corruption, not against tampering).

Layout of ``state_dir`` (a crash at any point leaves it usable; ``current`` always names a complete slot)::

    staging/<sha256>.part    download in progress; the next attempt resumes from its size (HTTP Range)
    staging/<sha256>.slot/   verified and unpacked, waiting for activate()
    staging/*.tmp            half-built or discarded slots, removed when a store opens the folder
    slots/a/, slots/b/       complete slots: slot.json (what it holds) and content/ (the files)
    current -> slots/a       the active slot, a symlink replaced with rename()
    previous -> slots/b      the slot rollback() returns to, kept until the next activation
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import posixpath
import re
import shutil
import ssl
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from lepton_edge import __version__
from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.core.errors import LeptonError, UpdateError
from lepton_edge.core.fileio import fsync_path, fsync_tree
from lepton_edge.device.signing import file_sha256, verify_signature
from lepton_edge.engines.artifacts import MANIFEST_NAME, read_manifest

log = logging.getLogger(__name__)

SLOT_NAMES = ("a", "b")
SLOT_RECORD = "slot.json"
CONTENT_DIR = "content"
MODEL_SUFFIXES = (".onnx", ".plan", ".engine", ".trt")
CHUNK_BYTES = 1 << 20

Progress = Callable[[int, int], None]






def shown_url(url: str) -> str:
    """``url`` without credentials or query string (presigned URLs carry secrets there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class _Interrupted(Exception):
    """A transient download failure (connection lost, timeout, server error): worth resuming."""


class _SameSchemeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects within one scheme only: https is never downgraded, nor http silently upgraded."""

    max_redirections = 5

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        old, new = urlsplit(req.full_url).scheme, urlsplit(newurl).scheme
        if new != old:
            raise UpdateError(
                f"{shown_url(req.full_url)}: redirected to {shown_url(newurl)} ({old} to {new}); "
                "redirects to "
                "another scheme are refused, publish the artifact at its final URL"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class ArtifactStore:
    """Downloads, verifies and activates model artifacts in ``state_dir`` (see the module docstring).

    ``public_key``: ed25519 public key (PEM) whose signature every artifact must carry; None refuses every
    update unless ``allow_unsigned`` is true. ``max_bytes``: the largest artifact accepted (download and
    unpacked content). A failed download is resumed up to ``attempts`` times in one :meth:`stage` call,
    and again from where it stopped by the next call. HTTPS certificates are always verified, against
    the system CAs or, when ``ca_file`` is given, against that CA bundle only.
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
    ) -> None:
        self.root = Path(state_dir)
        self.staging = self.root / "staging"
        self.slots = self.root / "slots"
        self.public_key = Path(public_key) if public_key is not None else None
        self.max_bytes = max_bytes
        self.allow_unsigned = allow_unsigned
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.retry_delay_s = retry_delay_s
        self._lock = threading.RLock()
        self._opener = urllib.request.build_opener(
            _SameSchemeRedirects(),
            urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_file)),
        )
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
        signature, a download that fails ``attempts`` times (the partial file is kept and resumed by the
        next call), more bytes than ``ref.size``, a wrong sha256, or an unsafe tar. An artifact already in
        a slot is not downloaded again: the path in that slot is returned (``activate`` accepts it).
        """
        url = shown_url(ref.url)
        sha = ref.sha256.lower()
        if ref.size > self.max_bytes:
            raise UpdateError(
                f"artifact {url} is {ref.size} bytes, above the limit of {self.max_bytes} "
                "(agent.artifact_max_bytes); raise the limit or ship a smaller artifact"
            )
        self._check_signature(ref)  # also for artifacts already here: the same refusals whatever is on disk
        with self._lock:
            for slot in (self._linked_slot("current"), self._linked_slot("previous")):
                record = self._record(self.slots / slot) if slot else None
                if record and record["sha256"] == sha:
                    return self.slots / slot / record["model"]
            staged = self.staging / f"{sha}.slot"
            record = self._record(staged)
            if record and record["sha256"] == sha:
                return staged / record["model"]
            self.staging.mkdir(parents=True, exist_ok=True)
            self._discard_other_updates(sha)
            part = self.staging / f"{sha}.part"
            self._check_free_space(ref, part)
            self._download(ref, part, progress)
            size, actual = file_sha256(part)
            if size != ref.size or actual != sha:
                _remove(part)
                raise UpdateError(
                    f"artifact {url}: downloaded {size} bytes with sha256 {actual}, "
                    f"expected {ref.size} bytes "
                    f"with sha256 {sha}; the file on the server is not the one in the reference (discarded)"
                )
            return self._unpack(ref, part, staged)

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
                _remove(entry)

    def _check_free_space(self, ref: ArtifactRef, part: Path) -> None:
        have = part.stat().st_size if part.exists() else 0
        # A tar is unpacked beside the download; a single file is hard-linked into its slot.
        need = max(ref.size - have, 0) + (ref.size if _looks_like_tar_url(ref.url) else 0)
        free = shutil.disk_usage(self.staging).free
        if free < need:
            raise UpdateError(
                f"artifact {shown_url(ref.url)} needs {need} bytes in {self.staging}, only {free} are free; "
                "free some space on that file system"
            )

    # -- download -------------------------------------------------------------------------------------

    def _download(self, ref: ArtifactRef, part: Path, progress: Progress | None) -> None:
        if urlsplit(ref.url).scheme == "file":
            self._copy_file(ref, part, progress)
            return
        error: _Interrupted | None = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.retry_delay_s)
            try:
                self._fetch(ref, part, progress)
                return
            except _Interrupted as e:
                error = e
                have = part.stat().st_size if part.exists() else 0
                log.warning(
                    "artifact %s: download interrupted at %d of %d bytes (%s)%s",
                    shown_url(ref.url),
                    have,
                    ref.size,
                    e,
                    "; resuming" if attempt + 1 < self.attempts else "",
                )
        have = part.stat().st_size if part.exists() else 0
        raise UpdateError(
            f"artifact {shown_url(ref.url)}: download failed after {self.attempts} attempt(s) at {have} of "
            f"{ref.size} bytes ({error}); the partial file {part} is kept and the next attempt resumes it"
        )

    def _fetch(self, ref: ArtifactRef, part: Path, progress: Progress | None) -> None:
        """One HTTP(S) request from the current size of ``part``; raises _Interrupted when worth retrying."""
        url = shown_url(ref.url)
        have = part.stat().st_size if part.exists() else 0
        if have > ref.size:
            _remove(part)
            have = 0
        if have == ref.size:
            return
        headers = {"User-Agent": f"lepton-edge/{__version__}", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(ref.url, headers=headers)
        try:
            response = self._opener.open(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416 and have:
                _remove(part)
                raise _Interrupted("the server refused to resume; starting over") from None
            if e.code >= 500 or e.code in (408, 429):
                raise _Interrupted(f"HTTP {e.code} {e.reason}") from None
            raise UpdateError(
                f"artifact {url}: HTTP {e.code} {e.reason}; check the URL and that the file is published "
                "there"
            ) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, ssl.SSLCertVerificationError):
                raise UpdateError(
                    f"artifact {url}: TLS certificate verification failed ({e.reason.verify_message}); the "
                    "server needs a certificate this device trusts"
                ) from None
            raise _Interrupted(str(e.reason)) from None
        except (OSError, http.client.HTTPException) as e:
            raise _Interrupted(f"{type(e).__name__}: {e}") from None
        with response:
            if response.status == 206:
                start, total = _content_range(response.headers.get("Content-Range", ""))
                if total is not None and total != ref.size:
                    _remove(part)
                    raise UpdateError(
                        f"artifact {url}: the server has {total} bytes, the reference says {ref.size}"
                    )
                if start != have:
                    _remove(part)
                    raise _Interrupted(f"the server resumed at byte {start}, not {have}; starting over")
                mode = "ab"
            elif response.status == 200:
                have, mode = 0, "wb"  # the server ignored the Range header: start over
            else:
                raise UpdateError(f"artifact {url}: unexpected HTTP status {response.status}")
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and have + int(length) > ref.size:
                _remove(part)
                raise UpdateError(
                    f"artifact {url}: the server announces {have + int(length)} bytes, "
                    f"more than the {ref.size} "
                    "of the reference; refused (the reference or the published file is wrong)"
                )
            self._receive(ref, part, mode, have, response.read, progress)

    def _receive(
        self,
        ref: ArtifactRef,
        part: Path,
        mode: str,
        have: int,
        read: Callable[[int], bytes],
        progress: Progress | None,
    ) -> None:
        """Append what ``read`` returns to ``part``, never more than ``ref.size`` in total."""
        url = shown_url(ref.url)
        interrupted: str | None = None
        with open(part, mode) as f:
            while True:
                # One byte past the expected end, to notice a source that sends more.
                try:
                    chunk = read(min(CHUNK_BYTES, ref.size - have + 1))
                except (OSError, http.client.HTTPException) as e:
                    interrupted = f"{type(e).__name__}: {e}"
                    break
                if not chunk:
                    break
                if have + len(chunk) > ref.size:
                    f.close()
                    _remove(part)
                    raise UpdateError(
                        f"artifact {url}: the source sent more than the {ref.size} bytes of the reference; "
                        "refused and discarded (the reference or the published file is wrong)"
                    )
                f.write(chunk)
                have += len(chunk)
                if progress is not None:
                    progress(have, ref.size)
            f.flush()
            os.fsync(f.fileno())
        if have < ref.size:
            raise _Interrupted(interrupted or f"the connection closed after {have} of {ref.size} bytes")

    def _copy_file(self, ref: ArtifactRef, part: Path, progress: Progress | None) -> None:
        source = Path(unquote(urlsplit(ref.url).path))
        try:
            f = open(source, "rb")  # noqa: SIM115 - closed by the `with` below; open errors reported here
        except OSError as e:
            raise UpdateError(f"artifact {ref.url}: cannot read {source}: {e.strerror or e}") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size != ref.size:
                raise UpdateError(
                    f"artifact {ref.url}: the file has {size} bytes, the reference says {ref.size}"
                )
            have = part.stat().st_size if part.exists() else 0
            if have > ref.size:
                _remove(part)
                have = 0
            f.seek(have)
            try:
                self._receive(ref, part, "ab", have, f.read, progress)
            except _Interrupted as e:
                raise UpdateError(f"artifact {ref.url}: {e} (the file changed while it was copied)") from None

    # -- unpack ---------------------------------------------------------------------------------------

    def _unpack(self, ref: ArtifactRef, part: Path, staged: Path) -> Path:
        """Build the staged slot from the verified download ``part``; returns the model path in it."""
        tmp = self.staging / f"{staged.name}.tmp"
        _remove(tmp)
        _remove(staged)
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
            fsync_path(self.staging)
        except BaseException:
            _remove(tmp)
            raise
        _remove(part)
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
                _remove(self.root / "previous")
            self.slots.mkdir(parents=True, exist_ok=True)
            discarded = self.staging / f"discarded-{target}.tmp"
            _remove(discarded)
            if (self.slots / target).exists():
                os.rename(self.slots / target, discarded)
            os.rename(slot_dir, self.slots / target)
            fsync_path(self.slots)
            self._set_link("current", target)
            _remove(discarded)
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
            _remove(self.root / "previous")
            fsync_path(self.root)
            log.warning("rolled back from slot %s to slot %s", current, previous)
            return self._model_path(previous)

    def deactivate(self) -> None:
        """Make no artifact current (after the first artifact ever activated failed: the device goes back to
        its local model file, and a later rollback must not return to the failed artifact)."""
        with self._lock:
            current = self._linked_slot("current")
            _remove(self.root / "current")
            _remove(self.root / "previous")
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
        _remove(tmp)
        os.symlink(f"slots/{slot}", tmp)
        os.replace(tmp, self.root / link)
        fsync_path(self.root)

    def _clean_leftovers(self) -> None:
        for link in ("current", "previous"):
            _remove(self.root / f".{link}.tmp")
        if self.staging.is_dir():
            for entry in self.staging.glob("*.tmp"):
                log.info("removing %s (left by an interrupted update)", entry)
                _remove(entry)


def _content_range(value: str) -> tuple[int, int | None]:
    """Start and total of a ``Content-Range: bytes START-END/TOTAL`` header (total None when ``*``)."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
    if not match:
        raise _Interrupted(f"unreadable Content-Range {value!r}")
    total = match.group(3)
    return int(match.group(1)), (None if total == "*" else int(total))


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
