"""Event clips fetched from devices: MQTT v5 commands (:class:`CommandClient`) and resumable chunked downloads
(:class:`ClipFetcher`).

A fetch asks the device for ``clips.read {id, offset, length}`` chunks and appends them to
``<clips dir>/<device>/<clip>.mp4.part``; the part's size is the resume point, so a fetch interrupted by a lost
link, a device that went away or a scheduler restart goes on from there. While the device does not answer the
fetch waits and retries with exponential backoff (forever: an intermittent link finishes eventually). When the
last byte is in, the part is hashed, checked against the SHA-256 the device gave, and renamed to
``<clip>.mp4``; a mismatch starts the clip again from byte 0 (once; a second mismatch fails the job). A device
that refuses the clip (unknown id, outside its clip folders) fails the job at once with the device's reason.

Each replica fetches into its own folder; jobs live in memory and on disk (a ``.part.json`` beside each part),
and :meth:`ClipFetcher.start` picks up the parts and clips a previous run left.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lepton_edge.config.scheduler import SchedulerConfig
from lepton_edge.core.errors import LeptonError
from lepton_edge.fleet.mqtt import IncomingMessage, MqttClient
from lepton_edge.fleet.protocol import (
    CommandRequest,
    CommandResponse,
    ProtocolError,
    TopicKind,
    command_topic,
    decode,
    encode,
    parse_topic,
    response_subscription,
    response_topic,
    validate_id,
)
from lepton_edge.scheduler.store import Store

log = logging.getLogger(__name__)

CLIP_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""A clip id as devices name them (the same rule as ``device/clip_commands.py``): a name, never a path."""
_CLIP_ID = re.compile(CLIP_ID_PATTERN)
_SHA256 = re.compile(r"[0-9a-f]{64}")
CHUNK_BYTES = 128 * 1024
"""Bytes asked for per ``clips.read`` (the device's own cap)."""
WINDOW = 4
"""Reads in flight per fetch: a link with a long round trip still carries chunks back to back."""
MAX_CLIP_BYTES = 4 << 30
"""A clip larger than this is not fetched (the scheduler's disk is not the device's to fill)."""
LISTING_REUSE_S = 2.0
"""A device's clip list is asked for at most once per this many seconds; callers in between get the last one
(viewers polling the list cannot turn into a stream of commands to the device)."""
PRUNE_INTERVAL_S = 60.0
"""How often the worker applies the clip folder's retention and quota between fetches."""
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_TRANSIENT_ANSWERS = ("refused: the agent is busy", "refused: the command expired")
"""How device errors that say "try again" rather than "never" begin (``device/commands.py``)."""


class CommandError(LeptonError):
    """A command failed. ``transient``: no answer (the device or the broker is away), try again later;
    otherwise the device answered with an error."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass
class PendingCommand:
    """A command sent and not yet answered: :meth:`CommandClient.wait` for its result."""

    device_id: str
    name: str
    correlation: bytes
    deadline: float
    """Monotonic time after which waiting for it stops."""
    done: threading.Event = field(default_factory=threading.Event)
    response: CommandResponse | None = None


class CommandClient:
    """Sends commands to devices as MQTT v5 requests (response topic, correlation data, expiry) and waits for
    their answers on this requester's response topics. Thread-safe; one client per requester id. Several
    requests may be in flight (:meth:`send`, then :meth:`wait` for each); a device runs them in order."""

    def __init__(self, mqtt: MqttClient, requester_id: str) -> None:
        self.mqtt = mqtt
        self.requester_id = validate_id(requester_id, "requester id")
        self._pending: dict[bytes, PendingCommand] = {}
        self._lock = threading.Lock()
        self.subscription = mqtt.subscribe(response_subscription(self.requester_id), self._on_response)

    def call(self, device_id: str, name: str, args: dict[str, Any], *, timeout_s: float = 10.0) -> Any:
        """Run command ``name`` on ``device_id`` and return its result; :class:`CommandError` otherwise. The
        request expires (MessageExpiryInterval) when the caller stops waiting, so it never runs late."""
        return self.wait(self.send(device_id, name, args, timeout_s=timeout_s))

    def send(self, device_id: str, name: str, args: dict[str, Any], *, timeout_s: float = 10.0) -> PendingCommand:
        """Publish a request that expires in ``timeout_s``; :class:`CommandError` (transient) when it cannot be
        sent (not connected to the broker)."""
        validate_id(device_id)
        if not self.mqtt.connected:
            raise CommandError(f"{name} on {device_id}: the scheduler is not connected to the broker", transient=True)
        pending = PendingCommand(device_id, name, uuid.uuid4().bytes, time.monotonic() + timeout_s)
        with self._lock:
            self._pending[pending.correlation] = pending
        try:
            handle = self.mqtt.publish(
                command_topic(device_id, name),
                encode(CommandRequest(name=name, args=args)),
                qos=1,
                response_topic=response_topic(self.requester_id, device_id),
                correlation_data=pending.correlation,
                message_expiry_interval=max(1, math.ceil(timeout_s)),
            )
        except BaseException:
            self.forget(pending)
            raise
        if handle.error is not None:
            self.forget(pending)
            raise CommandError(f"{name} on {device_id}: not sent ({handle.error})", transient=True)
        return pending

    def wait(self, pending: PendingCommand, *, deadline: float | None = None) -> Any:
        """The result of a sent command, waiting until its deadline (or ``deadline``, a monotonic time);
        :class:`CommandError` otherwise."""
        try:
            until = pending.deadline if deadline is None else deadline
            if not pending.done.wait(max(0.0, until - time.monotonic())):
                raise CommandError(
                    f"{pending.name} on {pending.device_id}: no answer in time (device offline or link down)",
                    transient=True,
                )
        finally:
            self.forget(pending)
        response = pending.response
        assert response is not None
        if response.status != "ok":
            error = response.error or "error"
            raise CommandError(
                f"{pending.name} on {pending.device_id}: {error}", transient=error.startswith(_TRANSIENT_ANSWERS)
            )
        return response.result

    def forget(self, pending: PendingCommand) -> None:
        """Stop waiting for ``pending``: its answer, if one comes, is dropped."""
        with self._lock:
            self._pending.pop(pending.correlation, None)

    def _on_response(self, msg: IncomingMessage) -> None:
        """Network thread: match an answer to its request by correlation data and answering device."""
        correlation = msg.correlation_data
        with self._lock:
            pending = self._pending.get(bytes(correlation)) if correlation else None
        if pending is None:
            return  # late (the caller gave up) or not ours
        try:
            parsed = parse_topic(msg.topic)
            if parsed.device_id != pending.device_id:
                log.warning("command answer for %s arrived from %s; ignored", pending.device_id, parsed.device_id)
                return
            response = decode(TopicKind.COMMAND_RESPONSE, msg.payload, msg.topic)
        except ProtocolError as e:
            log.warning("undecodable command answer on %s: %s", msg.topic, e)
            return
        assert isinstance(response, CommandResponse)
        pending.response = response
        pending.done.set()


# ------------------------------------------------------------------------------------------------- fetches


def check_clip_ref(device_id: Any, clip_id: Any) -> tuple[str, str]:
    """``(device_id, clip_id)`` when both are names safe as file names, else ValueError saying which."""
    try:
        validate_id(device_id)
    except ProtocolError as e:
        raise ValueError(str(e)) from None
    if device_id in (".", ".."):
        raise ValueError(f"device id {device_id!r} cannot name a folder")
    if not isinstance(clip_id, str) or not _CLIP_ID.fullmatch(clip_id) or clip_id.endswith(".part"):
        raise ValueError(
            f"clip id {str(clip_id)[:160]!r}: 1-128 characters from A-Z a-z 0-9 _ . - starting with a letter or "
            "digit, not ending in .part"
        )
    return device_id, clip_id


@dataclass
class FetchJob:
    """One clip fetch and its progress (what ``GET /api/clips`` shows)."""

    device_id: str
    clip_id: str
    state: str = "queued"
    """queued, fetching, waiting (the device did not answer; retried with backoff), complete, failed."""
    size: int | None = None
    sha256: str | None = None
    fetched: int = 0
    attempts: int = 0
    """Tries that ended without the clip (lost link, no answer, checksum mismatch)."""
    error: str | None = None
    requested_by: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    completed_at: float | None = None
    next_try_at: float = 0.0
    """Monotonic time of the next try while waiting."""
    restarts: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.device_id, self.clip_id)

    def out(self) -> dict[str, Any]:
        view = asdict(self)
        view.pop("next_try_at")
        view["retry_in_s"] = (
            round(max(0.0, self.next_try_at - time.monotonic()), 1) if self.state == "waiting" else None
        )
        done = 1.0 if self.state == "complete" else 0.0
        view["progress"] = round(self.fetched / self.size, 4) if self.size else done
        return view


class ClipFetcher:
    """Fetches clips from devices into ``clips_dir`` on one worker thread, one chunk at a time, resuming and
    retrying until each clip is complete or the device refuses it."""

    def __init__(
        self,
        commands: CommandClient,
        clips_dir: str | Path,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        window: int = WINDOW,
        timeout_s: float = 10.0,
        retry_min_s: float = 1.0,
        retry_max_s: float = 60.0,
        max_clip_bytes: int = MAX_CLIP_BYTES,
        max_bytes: int | None = None,
        retention_s: float | None = None,
        on_complete: Callable[[FetchJob], None] | None = None,
    ) -> None:
        self.commands = commands
        self.dir = Path(clips_dir)
        self.chunk_bytes = chunk_bytes
        self.window = max(1, window)
        self.timeout_s = timeout_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.max_bytes = max_bytes
        """Quota of the folder (fetched clips and parts); the oldest fetched clips make room. None: none."""
        self.retention_s = retention_s
        """Fetched clips older than this (since completion) are deleted. None: kept."""
        self.max_clip_bytes = max_clip_bytes if max_bytes is None else min(max_clip_bytes, max_bytes)
        self.on_complete = on_complete
        self.pruned: collections.Counter[str] = collections.Counter()
        """Fetched clips deleted, by reason (``retention``, ``quota``), and their ``bytes``."""
        self._prune_at = 0.0
        """Monotonic time of the next periodic :meth:`prune`."""
        self._jobs: dict[tuple[str, str], FetchJob] = {}
        self._listings: dict[str, tuple[float, int, dict[str, Any]]] = {}
        """device -> (monotonic time, limit, answer) of its last clip list."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread: threading.Thread | None = None

    @classmethod
    def for_scheduler(
        cls, config: SchedulerConfig, mqtt: MqttClient, store: Store | None = None, **options: Any
    ) -> ClipFetcher:
        """The fetcher of a replica: requests as the replica id, clips in :func:`default_clips_dir` under the
        quota and retention of ``config.clips``; each completed fetch is recorded in ``store`` as a
        ``clip.fetched`` event (its ``details.clip`` the clip id)."""
        if store is not None and "on_complete" not in options:
            options["on_complete"] = lambda job: store.add_event(
                "clip.fetched",
                f"clip {job.clip_id} fetched from {job.device_id} ({job.size} bytes)",
                device_id=job.device_id,
                details={
                    "clip": job.clip_id,
                    "bytes": job.size,
                    "sha256": job.sha256,
                    "requested_by": job.requested_by,
                },
            )
        options.setdefault("max_bytes", config.clips.max_bytes)
        options.setdefault("retention_s", config.clips.retention_s)
        return cls(CommandClient(mqtt, config.replicas.replica_id), default_clips_dir(config), **options)

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> ClipFetcher:
        """Pick up what a previous run left (parts resume, complete clips are listed), apply the retention and
        quota, and start the worker."""
        self._recover()
        self.prune()
        self._thread = threading.Thread(target=self._run, name="scheduler-clips", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _recover(self) -> None:
        if not self.dir.is_dir():
            return
        for device_dir in sorted(p for p in self.dir.iterdir() if p.is_dir()):
            for path in sorted(device_dir.iterdir()):
                name = path.name
                try:
                    if name.endswith(".mp4.part"):
                        device_id, clip_id = check_clip_ref(device_dir.name, name[: -len(".mp4.part")])
                        job = FetchJob(device_id, clip_id, fetched=path.stat().st_size)
                        job.__dict__.update(
                            _read_json(path.with_name(name + ".json"), ("size", "sha256", "requested_by"))
                        )
                    elif name.endswith(".mp4"):
                        device_id, clip_id = check_clip_ref(device_dir.name, name[: -len(".mp4")])
                        job = FetchJob(device_id, clip_id, state="complete", fetched=path.stat().st_size)
                        job.size = job.fetched
                        job.__dict__.update(
                            _read_json(path.with_suffix(".json"), ("sha256", "requested_by", "completed_at"))
                        )
                    else:
                        continue
                except (ValueError, OSError):
                    continue
                with self._lock:
                    if job.key not in self._jobs or job.state == "complete":
                        self._jobs[job.key] = job
        log.info("clip fetches: %d found in %s", len(self._jobs), self.dir)

    # -- requests ---------------------------------------------------------------------------------------

    def request(self, device_id: str, clip_id: str, requested_by: str | None = None) -> FetchJob:
        """Fetch ``clip_id`` of ``device_id`` (idempotent: a known job is returned as it is; a failed one is
        tried again). Returns a copy of the job."""
        check_clip_ref(device_id, clip_id)
        with self._wake:
            job = self._jobs.get((device_id, clip_id))
            if job is None:
                job = FetchJob(device_id, clip_id, requested_by=requested_by)
                self._jobs[job.key] = job
            elif job.state == "failed":
                job.state, job.error, job.next_try_at, job.restarts = "queued", None, 0.0, 0
            elif job.state == "waiting":
                job.next_try_at = 0.0  # asked again: try now
            job.updated_at = time.time()
            self._wake.notify_all()
            return FetchJob(**asdict(job))

    def jobs(self) -> list[FetchJob]:
        """Copies of every job, newest first."""
        with self._lock:
            jobs = [FetchJob(**asdict(j)) for j in self._jobs.values()]
        return sorted(jobs, key=lambda j: j.created_at, reverse=True)

    def job(self, device_id: str, clip_id: str) -> FetchJob | None:
        with self._lock:
            job = self._jobs.get((device_id, clip_id))
            return None if job is None else FetchJob(**asdict(job))

    def clip_path(self, device_id: str, clip_id: str) -> Path | None:
        """The fetched file, only when its job is complete."""
        job = self.job(device_id, clip_id)
        if job is None or job.state != "complete":
            return None
        path = self._final(device_id, clip_id)
        return path if path.is_file() else None

    def device_clips(self, device_id: str, limit: int = 50) -> dict[str, Any]:
        """The device's clips as it lists them now (``source: device``), or, when it does not answer, the
        clips this replica has fetched or is fetching from it (``source: scheduler``, with the reason)."""
        validate_id(device_id)
        with self._lock:
            last = self._listings.get(device_id)
        if last is not None and time.monotonic() - last[0] < LISTING_REUSE_S and last[1] >= limit:
            return {**last[2], "clips": last[2]["clips"][:limit]}
        try:
            answer = self.commands.call(device_id, "clips.list", {"limit": limit}, timeout_s=min(self.timeout_s, 5.0))
            clips = answer.get("clips") if isinstance(answer, dict) else None
            if not isinstance(clips, list):
                raise CommandError(f"clips.list on {device_id}: answer without a clip list", transient=False)
            listing = {"device_id": device_id, "source": "device", "error": None, "clips": clips[:limit]}
            with self._lock:
                if len(self._listings) > 10_000:
                    self._listings.clear()
                self._listings[device_id] = (time.monotonic(), limit, listing)
            return listing
        except CommandError as e:
            known = [
                {"id": j.clip_id, "bytes": j.size, "sha256": j.sha256, "fetch": j.state}
                for j in self.jobs()
                if j.device_id == device_id
            ]
            return {"device_id": device_id, "source": "scheduler", "error": str(e), "clips": known[:limit]}

    # -- retention and quota ----------------------------------------------------------------------------

    def prune(
        self, *, reserve: int = 0, keep: tuple[str, str] | None = None, now: float | None = None
    ) -> dict[str, int]:
        """Delete the fetched clips older than :attr:`retention_s`, then the oldest fetched clips until the folder
        plus ``reserve`` bytes (the rest of a fetch under way) fits :attr:`max_bytes`. Parts being fetched are
        counted, never deleted, and so is ``keep`` (the clip just fetched) for the quota. Counts each deletion
        in :attr:`pruned`, logs them, and returns this run's ``{reason: clips}``."""
        now = time.time() if now is None else now
        self._prune_at = time.monotonic() + PRUNE_INTERVAL_S
        with self._lock:
            jobs = list(self._jobs.values())
        complete: list[tuple[float, FetchJob, int]] = []
        total = 0
        for job in jobs:
            path = self._final(*job.key) if job.state == "complete" else self._part(*job.key)
            try:
                stat = path.stat()
            except OSError:
                continue
            total += stat.st_size
            if job.state == "complete":
                complete.append((job.completed_at or stat.st_mtime, job, stat.st_size))
        complete.sort(key=lambda c: c[0])  # oldest first
        deleted: collections.Counter[str] = collections.Counter()
        freed = 0
        for completed_at, job, size in complete:
            if self.retention_s is not None and now - completed_at > self.retention_s:
                reason = "retention"
            elif self.max_bytes is not None and total + reserve > self.max_bytes and job.key != keep:
                reason = "quota"
            else:
                continue
            if not self._delete(job):
                continue
            total -= size
            freed += size
            deleted[reason] += 1
            log.debug("clip %s/%s deleted (%s): %d bytes", job.device_id, job.clip_id, reason, size)
        if deleted:
            with self._lock:  # read by the service's statistics on another thread
                self.pruned.update(deleted)
                self.pruned["bytes"] += freed
            log.info(
                "clips: deleted %d fetched clip(s), %d bytes (%s) in %s; %d bytes left, quota %s",
                sum(deleted.values()), freed, ", ".join(f"{r} {n}" for r, n in sorted(deleted.items())), self.dir,
                total, self.max_bytes if self.max_bytes is not None else "none",
            )  # fmt: skip
        return dict(deleted)

    def pruned_counts(self) -> dict[str, int]:
        """A copy of :attr:`pruned`."""
        with self._lock:
            return dict(self.pruned)

    def _delete(self, job: FetchJob) -> bool:
        """Forget a fetched clip and delete its file and record; False when it changed meanwhile (asked again)."""
        with self._lock:
            if self._jobs.get(job.key) is not job or job.state != "complete":
                return False
            del self._jobs[job.key]
        final = self._final(*job.key)
        for path in (final, final.with_suffix(".json")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        _fsync_dir(final.parent)
        return True

    # -- worker -----------------------------------------------------------------------------------------

    def _next(self) -> FetchJob | None:
        """The next job due (oldest first), waiting for one; None when stopping or when a prune is due."""
        with self._wake:
            while not self._stopping:
                now = time.monotonic()
                if now >= self._prune_at:
                    return None
                due = [j for j in self._jobs.values() if j.state in ("queued", "waiting") and j.next_try_at <= now]
                if due:
                    job = min(due, key=lambda j: j.created_at)
                    job.state = "fetching"
                    return job
                waits = [j.next_try_at - now for j in self._jobs.values() if j.state == "waiting"]
                self._wake.wait(min([*waits, self._prune_at - now, 1.0]))
        return None

    def _run(self) -> None:
        while not self._stopping:
            if time.monotonic() >= self._prune_at:
                try:
                    self.prune()
                except Exception:  # a bug must not end the worker
                    log.exception("clip folder prune failed")
                    self._prune_at = time.monotonic() + PRUNE_INTERVAL_S
            job = self._next()
            if job is None:
                continue
            try:
                self._fetch(job)
            except CommandError as e:
                if e.transient:
                    self._retry_later(job, str(e))
                else:
                    self._fail(job, str(e))
            except OSError as e:
                if e.errno in _DISK_FULL:  # the scheduler's disk: space may come back
                    self._retry_later(job, f"clip {job.clip_id} of {job.device_id}: {e}")
                else:
                    self._fail(job, f"clip {job.clip_id} of {job.device_id}: {e}")
            except ValueError as e:
                self._fail(job, f"clip {job.clip_id} of {job.device_id}: {e}")
            except Exception as e:  # a bug must not end the worker
                log.exception("clip fetch %s/%s failed", job.device_id, job.clip_id)
                self._fail(job, f"unexpected error: {type(e).__name__}: {e}")

    def _retry_later(self, job: FetchJob, error: str) -> None:
        with self._lock:
            job.attempts += 1
            delay = min(self.retry_max_s, self.retry_min_s * 2 ** min(job.attempts - 1, 30))
            job.state, job.error, job.updated_at = "waiting", error, time.time()
            job.next_try_at = time.monotonic() + delay
        log.info("clip %s/%s: %s; retrying in %.1f s", job.device_id, job.clip_id, error, delay)

    def _fail(self, job: FetchJob, error: str) -> None:
        with self._lock:
            job.state, job.error, job.updated_at = "failed", error, time.time()
        log.warning("clip fetch %s/%s failed: %s", job.device_id, job.clip_id, error)

    def _part(self, device_id: str, clip_id: str) -> Path:
        return self.dir / device_id / f"{clip_id}.mp4.part"

    def _final(self, device_id: str, clip_id: str) -> Path:
        return self.dir / device_id / f"{clip_id}.mp4"

    def _fetch(self, job: FetchJob) -> None:
        """Chunks from the part's size to the end, ``window`` requests in flight, then verify and rename; raises
        on what stops it (requests still in flight are forgotten: their answers are dropped)."""
        part = self._part(job.device_id, job.clip_id)
        part.parent.mkdir(parents=True, exist_ok=True)
        in_flight: collections.deque[tuple[int, PendingCommand]] = collections.deque()
        try:
            with open(part, "ab") as out:
                try:  # replicas sharing a folder never write one part together
                    fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise CommandError(f"{part} is being written by another fetcher", transient=True) from None
                offset = out.seek(0, os.SEEK_END)
                step = self.chunk_bytes
                progress = time.monotonic()
                while True:
                    if self._stopping:
                        with self._lock:
                            job.state = "queued"
                        return
                    self._fill(job, in_flight, offset, step)
                    asked, pending = in_flight.popleft()
                    # a slow link delivers the answers one after another: the time limit runs from the last one
                    chunk = self.commands.wait(pending, deadline=max(pending.deadline, progress + self.timeout_s))
                    progress = time.monotonic()
                    data, size, digest = self._check_chunk(job, chunk, asked)
                    if job.size is not None and (size, digest) != (job.size, job.sha256) and offset > 0:
                        self._forget(in_flight)
                        self._restart(job, out, f"the clip changed on the device ({job.size} -> {size} bytes)")
                        offset = 0
                        continue
                    if (job.size, job.sha256) != (size, digest):
                        with self._lock:
                            job.size, job.sha256 = size, digest
                        self.prune(reserve=size - offset)  # make room for the rest before it arrives
                        _write_json(part.with_name(part.name + ".json"), {
                            "size": size, "sha256": digest, "requested_by": job.requested_by,
                        })  # fmt: skip
                    out.write(data)
                    out.flush()
                    offset += len(data)
                    with self._lock:
                        job.fetched, job.updated_at, job.error = offset, time.time(), None
                    if offset >= size:
                        os.fsync(out.fileno())
                        break
                    if len(data) != step:  # the device sends less than asked: go on at its pace from here
                        self._forget(in_flight)
                        step = len(data)
        finally:
            self._forget(in_flight)
        self._complete(job, part)

    def _fill(self, job: FetchJob, in_flight: collections.deque[tuple[int, PendingCommand]], offset: int,
              step: int) -> None:  # fmt: skip
        """Send reads of the next chunks until ``window`` are in flight (one while the clip's size is unknown),
        none past the end."""
        limit = self.window if job.size is not None else 1
        planned = in_flight[-1][0] + step if in_flight else offset
        while len(in_flight) < limit and (not in_flight or job.size is None or planned < job.size):
            args = {"id": job.clip_id, "offset": planned, "length": step}
            in_flight.append((planned, self.commands.send(job.device_id, "clips.read", args, timeout_s=self.timeout_s)))
            planned += step

    def _forget(self, in_flight: collections.deque[tuple[int, PendingCommand]]) -> None:
        while in_flight:
            self.commands.forget(in_flight.popleft()[1])

    def _check_chunk(self, job: FetchJob, chunk: Any, offset: int) -> tuple[bytes, int, str]:
        where = f"clips.read of {job.clip_id} on {job.device_id} at {offset}"
        if not isinstance(chunk, dict):
            raise CommandError(f"{where}: the answer is not an object", transient=False)
        size, digest, data = chunk.get("size"), chunk.get("sha256"), chunk.get("data")
        if not (isinstance(size, int) and size >= 0 and isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise CommandError(f"{where}: the answer has no valid size and sha256", transient=False)
        if size > self.max_clip_bytes:
            raise CommandError(f"{where}: the clip is {size} bytes, over the {self.max_clip_bytes}-byte limit",
                               transient=False)  # fmt: skip
        try:
            raw = base64.b64decode(data if isinstance(data, str) else "", validate=True)
        except (binascii.Error, ValueError):
            raise CommandError(f"{where}: the chunk is not valid base64", transient=False) from None
        if chunk.get("offset") != offset or offset + len(raw) > size or (not raw and offset < size):
            raise CommandError(f"{where}: the answer's range does not fit the clip ({size} bytes)", transient=False)
        return raw, size, digest

    def _restart(self, job: FetchJob, out: Any, why: str) -> None:
        """Start the clip again from byte 0 (once; the second time the job fails)."""
        if job.restarts >= 1:
            raise CommandError(f"clip {job.clip_id} of {job.device_id}: {why}, again; giving up", transient=False)
        log.warning("clip %s/%s: %s; starting again from byte 0", job.device_id, job.clip_id, why)
        out.seek(0)
        out.truncate(0)
        with self._lock:
            job.restarts += 1
            job.attempts += 1
            job.size = job.sha256 = None
            job.fetched = 0

    def _complete(self, job: FetchJob, part: Path) -> None:
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        if digest.hexdigest() != job.sha256:
            with open(part, "r+b") as out:
                self._restart(job, out, f"SHA-256 mismatch ({digest.hexdigest()[:12]} != {str(job.sha256)[:12]})")
            with self._lock:
                job.state = "queued"
            return
        final = self._final(job.device_id, job.clip_id)
        completed = time.time()
        _write_json(final.with_suffix(".json"), {
            "sha256": job.sha256, "requested_by": job.requested_by, "completed_at": completed,
        })  # fmt: skip
        os.replace(part, final)
        with contextlib.suppress(OSError):
            os.unlink(part.with_name(part.name + ".json"))
        _fsync_dir(final.parent)
        with self._lock:
            job.state, job.completed_at, job.updated_at, job.fetched = "complete", completed, completed, job.size or 0
        log.info("clip %s/%s fetched: %d bytes, sha256 %s", job.device_id, job.clip_id, job.size, job.sha256)
        self.prune(keep=job.key)
        if self.on_complete is not None:
            try:
                self.on_complete(FetchJob(**asdict(job)))
            except Exception:
                log.exception("on_complete of clip %s/%s failed", job.device_id, job.clip_id)


def default_clips_dir(config: SchedulerConfig) -> Path:
    """Where a replica keeps fetched clips: ``config.clips.folder`` when set, else ``clips/`` beside its SQLite
    store, else ``$LEPTON_SCHEDULER_DATA/clips`` (default ``./lepton-scheduler-data/clips``)."""
    if config.clips.folder is not None:
        return config.clips.folder
    url = config.store_url
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///") :]).parent / "clips"
    return Path(os.environ.get("LEPTON_SCHEDULER_DATA", "lepton-scheduler-data")) / "clips"


def _read_json(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: data[k] for k in keys if isinstance(data, dict) and k in data}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
