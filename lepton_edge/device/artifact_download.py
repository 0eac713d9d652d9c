"""Downloading an artifact reference to a local file, verified against the reference's size and sha256.

:class:`ArtifactDownloader` takes an :class:`~lepton_edge.config.pipeline.ArtifactRef` and a destination file
and returns that file once it holds exactly the referenced bytes. HTTP(S) downloads resume from what the
destination already holds (``Range``), are retried ``attempts`` times, follow redirects within one scheme
only and never accept more bytes than the reference names; ``file://`` references are copied. The signature
is not checked here: the caller checks it before asking for the bytes.

Limits, so that a failing or hostile server can neither block an update nor fill the disk: a download that
receives fewer than ``min_bytes`` in any ``min_window_s`` seconds, or is not done ``deadline_s`` after it
started (all attempts together), fails; so does one that would leave less than ``disk_reserve_bytes`` free
on the destination's file system (checked before and during the download). A download whose ``cancel``
is set (superseded by a newer desired config) stops at once, even while waiting on a silent server. On every failure the
destination file is deleted; only a killed process leaves it, and the next call resumes it.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import ssl
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from lepton_edge import __version__
from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.core.errors import UpdateError
from lepton_edge.device.artifact_common import Cancellation, Progress, remove_path, shown_url
from lepton_edge.device.signing import file_sha256

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


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


class ArtifactDownloader:
    """Fetches an artifact reference into a file and verifies it (see the module docstring).

    ``timeout_s``: the socket timeout of one request. A failed download is resumed up to ``attempts`` times
    in one :meth:`fetch` call, ``retry_delay_s`` apart; when they all fail the partial file is deleted.
    ``min_bytes`` / ``min_window_s`` (0 bytes: off), ``deadline_s`` (None: off) and ``disk_reserve_bytes``:
    the limits of the module docstring.
    HTTPS certificates are always verified, against the system CAs or, when ``ca_file`` is given, against
    that CA bundle only.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 30.0,
        attempts: int = 3,
        retry_delay_s: float = 1.0,
        ca_file: Path | None = None,
        min_bytes: int = 0,
        min_window_s: float = 30.0,
        deadline_s: float | None = None,
        disk_reserve_bytes: int = 0,
    ) -> None:
        self.timeout_s = timeout_s
        self.min_bytes = max(0, min_bytes)
        self.min_window_s = min_window_s
        self.deadline_s = deadline_s
        self.disk_reserve_bytes = max(0, disk_reserve_bytes)
        self.attempts = max(1, attempts)
        self.retry_delay_s = retry_delay_s
        self._opener = urllib.request.build_opener(
            _SameSchemeRedirects(),
            urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_file)),
        )

    def fetch(
        self,
        ref: ArtifactRef,
        dest: Path,
        progress: Progress | None = None,
        *,
        reserve_bytes: int = 0,
        cancel: Cancellation | None = None,
    ) -> Path:
        """Download ``ref`` into ``dest`` and verify its size and sha256; returns ``dest``.

        What ``dest`` already holds is resumed. ``reserve_bytes``: room the caller needs beside the download
        on the same file system (checked with the room the download itself still needs, before it starts).
        Raises UpdateError when there is not enough room (with ``disk_reserve_bytes`` kept free, before and
        while downloading), when the download fails ``attempts`` times, is too slow or passes its deadline,
        when the source sends more than ``ref.size`` bytes, or when the bytes are not the referenced ones;
        ``dest`` is deleted on every failure, and when ``cancel`` is set. ``progress(have, total)`` is called
        per chunk.
        """
        try:
            self._check_free_space(ref, dest, reserve_bytes + self.disk_reserve_bytes)
            self._download(ref, dest, progress, _Pace(self, ref, dest, cancel))
        except Exception:  # not on KeyboardInterrupt/SystemExit: a restarted process resumes the file
            remove_path(dest)
            raise
        size, actual = file_sha256(dest)
        sha = ref.sha256.lower()
        if size != ref.size or actual != sha:
            remove_path(dest)
            raise UpdateError(
                f"artifact {shown_url(ref.url)}: downloaded {size} bytes with sha256 {actual}, "
                f"expected {ref.size} bytes "
                f"with sha256 {sha}; the file on the server is not the one in the reference (discarded)"
            )
        return dest

    def _check_free_space(self, ref: ArtifactRef, part: Path, reserve_bytes: int) -> None:
        have = part.stat().st_size if part.exists() else 0
        need = max(ref.size - have, 0) + reserve_bytes
        free = shutil.disk_usage(part.parent).free
        if free < need:
            raise UpdateError(
                f"artifact {shown_url(ref.url)} needs {need} bytes in {part.parent} (with "
                f"{self.disk_reserve_bytes} kept free, agent.artifact_disk_reserve_bytes), only {free} are "
                "free; free some space on that file system"
            )

    def _check_room(self, ref: ArtifactRef, part: Path, incoming: int) -> None:
        """Refuse to write ``incoming`` more bytes when that would leave less than the reserve free."""
        if not self.disk_reserve_bytes:
            return
        free = shutil.disk_usage(part.parent).free
        if free - incoming < self.disk_reserve_bytes:
            raise UpdateError(
                f"artifact {shown_url(ref.url)}: stopped, writing on would leave {max(free - incoming, 0)} "
                f"bytes free in {part.parent}, below the reserve of {self.disk_reserve_bytes} "
                "(agent.artifact_disk_reserve_bytes); the partial download is deleted, free some space"
            )

    def _download(self, ref: ArtifactRef, part: Path, progress: Progress | None, pace: _Pace) -> None:
        if urlsplit(ref.url).scheme == "file":
            _copy_file(ref, part, progress, pace)
            return
        error: _Interrupted | None = None
        for attempt in range(self.attempts):
            if attempt:
                pace.pause(self.retry_delay_s)
                pace.check_deadline()
            try:
                self._fetch(ref, part, progress, pace)
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
            f"{ref.size} bytes ({error}); the partial file is deleted"
        )

    def _fetch(self, ref: ArtifactRef, part: Path, progress: Progress | None, pace: _Pace) -> None:
        """One HTTP(S) request from the current size of ``part``; raises _Interrupted when worth retrying."""
        have = _resume_point(ref, part)
        if have == ref.size:
            return
        response = self._open(ref, part, have, pace.socket_timeout())
        with response, pace.cancel.watching(response.fileno()):
            have, mode = _continuation(ref, part, have, response)
            # read1: what has arrived (one recv), so a trickling server is measured instead of waited for
            _receive(ref, part, mode, have, getattr(response, "read1", response.read), progress, pace)

    def _open(self, ref: ArtifactRef, part: Path, have: int, timeout_s: float) -> Any:
        """The response to a request for ``ref`` from byte ``have``; HTTP and network errors sorted out."""
        url = shown_url(ref.url)
        headers = {"User-Agent": f"lepton-edge/{__version__}", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(ref.url, headers=headers)
        try:
            return self._opener.open(request, timeout=timeout_s)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416 and have:
                remove_path(part)
                raise _Interrupted("the server refused to resume; starting over") from None
            if e.code >= 500 or e.code in (408, 429):
                raise _Interrupted(f"HTTP {e.code} {e.reason}") from None
            raise UpdateError(
                f"artifact {url}: HTTP {e.code} {e.reason}; check the URL and that the file is published there"
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


class _Pace:
    """The speed and deadline rules of one :meth:`ArtifactDownloader.fetch` call, and the disk reserve."""

    def __init__(self, owner: ArtifactDownloader, ref: ArtifactRef, part: Path, cancel: Cancellation | None) -> None:
        self.owner, self.ref, self.part = owner, ref, part
        self.cancel = cancel or Cancellation()
        self.started = time.monotonic()
        self.deadline = None if owner.deadline_s is None else self.started + owner.deadline_s
        self.samples: deque[tuple[float, int]] = deque()  # (time, bytes received so far in this call)
        self.received = 0

    def socket_timeout(self) -> float:
        """One recv waits no longer than the request timeout, the speed window or what is left of the deadline."""
        limits = [self.owner.timeout_s]
        if self.owner.min_bytes:
            limits.append(self.owner.min_window_s)
        if self.deadline is not None:
            limits.append(max(self.deadline - time.monotonic(), 0.001))
        return min(limits)

    def before_write(self, incoming: int) -> None:
        self.owner._check_room(self.ref, self.part, incoming)

    def after_read(self, got: int) -> None:
        """Account ``got`` bytes (0 when a read failed) and raise UpdateError when a rule is broken."""
        now = time.monotonic()
        self.received += got
        self.check_deadline(now)
        minimum, window = self.owner.min_bytes, self.owner.min_window_s
        if not minimum:
            return
        self.samples.append((now, self.received))
        if now - self.started < window:
            return
        while len(self.samples) > 1 and self.samples[1][0] <= now - window:
            self.samples.popleft()
        base = self.samples[0][1] if self.samples[0][0] <= now - window else 0
        if self.received - base < minimum:
            raise UpdateError(
                f"artifact {shown_url(self.ref.url)}: too slow, {self.received - base} bytes in the last "
                f"{window:g} s, under the minimum of {minimum} bytes per {window:g} s "
                "(agent.artifact_min_speed_bytes / agent.artifact_min_speed_window_s); the partial download "
                "is deleted"
            )

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` between attempts, or less when the download is cancelled."""
        self.cancel.wait(seconds)

    def check_deadline(self, now: float | None = None) -> None:
        if self.cancel.is_set():
            raise UpdateError(
                f"artifact {shown_url(self.ref.url)}: download cancelled after {self.received} of "
                f"{self.ref.size} bytes (a newer desired config replaced the one that needs it); the partial "
                "download is deleted"
            )
        now = time.monotonic() if now is None else now
        if self.deadline is not None and now >= self.deadline:
            raise UpdateError(
                f"artifact {shown_url(self.ref.url)}: not downloaded within the deadline of "
                f"{self.owner.deadline_s:g} s (agent.artifact_download_deadline_s), {self.received} bytes "
                f"received of {self.ref.size}; the partial download is deleted"
            )


def _resume_point(ref: ArtifactRef, part: Path) -> int:
    """How many bytes of ``part`` to keep: its size, or 0 (and it removed) when it is longer than ``ref``."""
    have = part.stat().st_size if part.exists() else 0
    if have > ref.size:
        remove_path(part)
        have = 0
    return have


def _continuation(ref: ArtifactRef, part: Path, have: int, response: Any) -> tuple[int, str]:
    """Where the response's body goes in ``part``: (bytes kept, file mode), from its status and headers."""
    url = shown_url(ref.url)
    if response.status == 206:
        start, total = _content_range(response.headers.get("Content-Range", ""))
        if total is not None and total != ref.size:
            remove_path(part)
            raise UpdateError(f"artifact {url}: the server has {total} bytes, the reference says {ref.size}")
        if start != have:
            remove_path(part)
            raise _Interrupted(f"the server resumed at byte {start}, not {have}; starting over")
        mode = "ab"
    elif response.status == 200:
        have, mode = 0, "wb"  # the server ignored the Range header: start over
    else:
        raise UpdateError(f"artifact {url}: unexpected HTTP status {response.status}")
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and have + int(length) > ref.size:
        remove_path(part)
        raise UpdateError(
            f"artifact {url}: the server announces {have + int(length)} bytes, "
            f"more than the {ref.size} "
            "of the reference; refused (the reference or the published file is wrong)"
        )
    return have, mode


def _receive(
    ref: ArtifactRef,
    part: Path,
    mode: str,
    have: int,
    read: Callable[[int], bytes],
    progress: Progress | None,
    pace: _Pace,
) -> None:
    """Append what ``read`` returns to ``part``, never more than ``ref.size`` in total, within ``pace``."""
    url = shown_url(ref.url)
    interrupted: str | None = None
    with open(part, mode) as f:
        while True:
            # One byte past the expected end, to notice a source that sends more.
            try:
                chunk = read(min(CHUNK_BYTES, ref.size - have + 1))
            except (OSError, http.client.HTTPException) as e:
                pace.after_read(0)  # a stalled server: the speed rule or deadline, when one is broken
                interrupted = f"{type(e).__name__}: {e}"
                break
            if not chunk:
                break
            if have + len(chunk) > ref.size:
                f.close()
                remove_path(part)
                raise UpdateError(
                    f"artifact {url}: the source sent more than the {ref.size} bytes of the reference; "
                    "refused and discarded (the reference or the published file is wrong)"
                )
            pace.before_write(len(chunk))
            f.write(chunk)
            have += len(chunk)
            pace.after_read(len(chunk))
            if progress is not None:
                progress(have, ref.size)
        f.flush()
        os.fsync(f.fileno())
    if have < ref.size:
        raise _Interrupted(interrupted or f"the connection closed after {have} of {ref.size} bytes")


def _copy_file(ref: ArtifactRef, part: Path, progress: Progress | None, pace: _Pace) -> None:
    """A ``file://`` reference: copy the file into ``part``, resuming from what ``part`` holds."""
    source = Path(unquote(urlsplit(ref.url).path))
    try:
        f = open(source, "rb")  # noqa: SIM115 - closed by the `with` below; open errors reported here
    except OSError as e:
        raise UpdateError(f"artifact {ref.url}: cannot read {source}: {e.strerror or e}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size != ref.size:
            raise UpdateError(f"artifact {ref.url}: the file has {size} bytes, the reference says {ref.size}")
        have = _resume_point(ref, part)
        f.seek(have)
        try:
            _receive(ref, part, "ab", have, f.read, progress, pace)
        except _Interrupted as e:
            raise UpdateError(f"artifact {ref.url}: {e} (the file changed while it was copied)") from None


def _content_range(value: str) -> tuple[int, int | None]:
    """Start and total of a ``Content-Range: bytes START-END/TOTAL`` header (total None when ``*``)."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
    if not match:
        raise _Interrupted(f"unreadable Content-Range {value!r}")
    total = match.group(3)
    return int(match.group(1)), (None if total == "*" else int(total))
