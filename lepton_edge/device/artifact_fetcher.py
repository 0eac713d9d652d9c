"""Artifact downloads off the config worker: one download worker per desired config that needs one.

:class:`ArtifactFetcher` stages the artifact of a desired config (download, verify, unpack: see
:meth:`~lepton_edge.device.updates.ArtifactStore.stage`) on its own thread and calls back when it is done, so
the config worker stays free for newer desired configs and commands while a slow server trickles. A newer
desired config supersedes the download of an older one: it is cancelled (stopped at once, even while its server
sends nothing) and its partial file deleted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.core.errors import UpdateError
from lepton_edge.device.artifact_common import Cancellation, shown_url
from lepton_edge.device.updates import ArtifactStore

log = logging.getLogger(__name__)

Done = Callable[[int, UpdateError | None], None]
"""``done(version, error)``: the artifact of desired config ``version`` is staged (error None) or refused."""


@dataclass
class _Job:
    version: int
    ref: ArtifactRef
    cancel: Cancellation = field(default_factory=Cancellation)
    thread: threading.Thread | None = None


class ArtifactFetcher:
    """Stages one desired config's artifact at a time on a download thread (see the module docstring)."""

    def __init__(self, artifacts: ArtifactStore, done: Done) -> None:
        self.artifacts = artifacts
        self.done = done
        self.cancelled = 0
        """Downloads cancelled because a newer desired config superseded them."""
        self._job: _Job | None = None
        self._lock = threading.Lock()

    @property
    def waiting_version(self) -> int | None:
        """The desired version whose artifact is downloading, or None."""
        job = self._job
        return job.version if job is not None and not job.cancel.is_set() else None

    def start(self, version: int, ref: ArtifactRef) -> bool:
        """Download ``ref`` for desired config ``version``, cancelling an older download; False when this
        very download is already running."""
        with self._lock:
            job = self._job
            if job is not None and job.version == version and not job.cancel.is_set():
                return False
            self._cancel(job, f"desired config v{version} replaced it")
            job = _Job(version, ref)
            job.thread = threading.Thread(
                target=self._run, args=(job,), name=f"lepton-artifact-v{version}", daemon=True
            )
            self._job = job
        log.info("desired config v%d: downloading its artifact %s", version, shown_url(ref.url))
        job.thread.start()
        return True

    def supersede(self, version: int) -> None:
        """Cancel the download of a desired config older than ``version`` (a newer one is being handled)."""
        with self._lock:
            job = self._job
            if job is not None and job.version < version:
                self._cancel(job, f"desired config v{version} replaced it")
                self._job = None

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel the running download and wait up to ``timeout`` for its thread."""
        with self._lock:
            job, self._job = self._job, None
            self._cancel(job, "the agent is stopping")
        if job is not None and job.thread is not None:
            job.thread.join(timeout)

    def _cancel(self, job: _Job | None, why: str) -> None:
        if job is None or job.cancel.is_set():
            return
        job.cancel.set()
        self.cancelled += 1
        log.info("desired config v%d: artifact download cancelled (%s)", job.version, why)

    def _run(self, job: _Job) -> None:
        error: UpdateError | None = None
        try:
            self.artifacts.stage(job.ref, cancel=job.cancel)
        except UpdateError as e:
            error = e
        except Exception as e:  # a bug must still end the wait with a report
            log.exception("desired config v%d: artifact download failed unexpectedly", job.version)
            error = UpdateError(f"artifact {shown_url(job.ref.url)}: download failed unexpectedly: {e}")
        with self._lock:
            if job.cancel.is_set():
                return
            if self._job is job:
                self._job = None
        self.done(job.version, error)
