"""Clips of one stream: triggered by events, cut from the ring's pre-roll, written on the recorder's own thread."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import secrets
import threading
import time
from bisect import bisect_right
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lepton_edge.config.clips import ClipsConfig
from lepton_edge.core.errors import error_text
from lepton_edge.core.fileio import file_digest, fsync_path
from lepton_edge.runtime.clips import writer
from lepton_edge.runtime.clips.ring import EncodedPacket, Entry, PacketRing, RawFrame
from lepton_edge.runtime.clips.store import ClipStore

log = logging.getLogger(__name__)

MAX_ACTIVE = 4
"""Clips recording at once per stream (events that overlap none of them start another); more are refused."""
MAX_PENDING = 4
"""Finished clips waiting for the writer; a clip finished while this many wait is dropped and counted."""
GRACE_S = 2.0
"""A clip whose stream stops delivering is finished this long after its end should have arrived."""
_KNOWN_EVENTS = 4096
_MARKS = 8192
_ENFORCE_INTERVAL_S = 60.0
_STOP = object()


@dataclass(frozen=True, slots=True)
class ClipRef:
    """Where an event is: clip ``clip_id``, ``offset_s`` seconds after the clip's start."""

    clip_id: str
    offset_s: float

    def reference(self) -> str:
        """``clip:<id>@<offset>``, the event message's ``snapshot`` reference."""
        return f"clip:{self.clip_id}@{max(0.0, self.offset_s):.3f}"


@dataclass(slots=True)
class _Clip:
    id: str
    start_t: float
    end_t: float
    cap_t: float
    deadline: float
    event_ids: list[str]
    entries: list[Entry] = field(default_factory=list)
    bytes: int = 0


class ClipRecorder:
    """Records clips of stream ``stream_id`` into ``store``.

    Feed it from the stream: :meth:`add_packet` (the source's own packets) with :meth:`mark` (which packet time each
    delivered frame has), or :meth:`add_frame` (raw frames, timed by capture time). :meth:`trigger` at an event's
    capture time returns the clip's reference at once; an event that overlaps a clip being recorded extends it (up to
    ``max_clip_s``) instead of starting another. Feeding and triggering are cheap and thread safe; files are written
    on the recorder's thread, never the caller's. A failed write deletes its ``.part``, is counted and logged, and the
    recorder goes on.
    """

    def __init__(self, stream_id: str, config: ClipsConfig, store: ClipStore) -> None:
        self.stream_id = stream_id
        self.config = config
        self.store = store
        self.started = 0
        self.merged = 0
        """Events that joined a clip already recording."""
        self.written = 0
        self.bytes_written = 0
        self.failed = 0
        """Clips abandoned by a write error (disk full, ...): their ``.part`` is deleted."""
        self.refused = 0
        """Events that found MAX_ACTIVE clips recording and no clip to join."""
        self.dropped = 0
        """Finished clips dropped because MAX_PENDING waited for the writer."""
        self.empty = 0
        """Clips that ended without a single usable frame (no keyframe arrived)."""
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._ring = PacketRing(config.pre_s, config.ring_max_bytes)
        self._marks: deque[tuple[float, float]] = deque(maxlen=_MARKS)
        self._active: list[_Clip] = []
        self._known: OrderedDict[str, ClipRef] = OrderedDict()
        self._jobs: queue.Queue[Any] = queue.Queue(MAX_PENDING)
        self._encoder: str | None = None
        self._slug = re.sub(r"[^A-Za-z0-9_-]+", "-", stream_id).strip("-_")[:40] or "stream"
        self._thread = threading.Thread(target=self._run, name=f"lepton-clips-{self._slug}", daemon=True)
        self._thread.start()

    # -- feeding (the source's or a sink's thread) --------------------------------------------------------

    def reset(self) -> None:
        """The source (re)opened: stream times start over. Clips recording are finished with what they have."""
        with self._lock:
            for clip in list(self._active):
                self._finish(clip)
            self._ring.clear()
            self._marks.clear()

    def add_packet(self, packet: EncodedPacket) -> None:
        self._add(packet)

    def mark(self, capture_ts: float, t: float) -> None:
        """The frame delivered at monotonic time ``capture_ts`` has stream time ``t`` (its pts, in seconds)."""
        with self._lock:
            self._marks.append((capture_ts, t))

    def add_frame(self, image: np.ndarray, capture_ts: float, wall_time: float) -> None:
        """A raw frame (BGR, already downscaled); its stream time is its capture time."""
        self._add(RawFrame(image, capture_ts, capture_ts, wall_time))

    def finish(self) -> None:
        """The stream ended: finish the clips recording with what they have."""
        with self._lock:
            for clip in list(self._active):
                self._finish(clip)

    # -- triggering (any thread) ------------------------------------------------------------------------

    def trigger(self, capture_ts: float, event_id: str) -> ClipRef | None:
        """Start (or extend) the clip around the event at monotonic ``capture_ts``; the same ``event_id`` always gets
        the same reference. None when MAX_ACTIVE clips are recording already (counted in ``refused``)."""
        cfg = self.config
        with self._lock:
            known = self._known.get(event_id)
            if known is not None:
                return known
            t = self._time_at(capture_ts)
            now = time.monotonic()
            for clip in self._active:
                if t - cfg.pre_s <= clip.end_t and t <= clip.cap_t:
                    clip.end_t = min(max(clip.end_t, t + cfg.post_s), clip.cap_t)
                    clip.deadline = max(clip.deadline, now + clip.end_t - t + GRACE_S)
                    clip.event_ids.append(event_id)
                    self.merged += 1
                    ref = ClipRef(clip.id, t - clip.start_t)
                    break
            else:
                if len(self._active) >= MAX_ACTIVE:
                    self.refused += 1
                    return None
                ref = self._start(t, now, event_id)
            self._known[event_id] = ref
            while len(self._known) > _KNOWN_EVENTS:
                self._known.popitem(last=False)
            return ref

    # -- lifecycle and figures ----------------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Finish the clips recording, write what waits, stop the thread."""
        self.finish()
        with contextlib.suppress(queue.Full):
            self._jobs.put(_STOP, timeout=timeout)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("clips of %s: the writer did not finish within %.0f s", self.stream_id, timeout)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            ring = {"ring_bytes": self._ring.bytes, "ring_entries": len(self._ring), "ring_evicted": self._ring.evicted,
                    "recording": len(self._active)}
        return {
            "started": self.started, "merged": self.merged, "clips_written": self.written,
            "bytes_written": self.bytes_written, "failed": self.failed, "refused": self.refused,
            "clips_dropped": self.dropped, "empty": self.empty, "clip_error": self.last_error, **ring,
            **self.store.stats(),
        }  # fmt: skip

    # -- internals (callers hold the lock) --------------------------------------------------------------------

    def _time_at(self, capture_ts: float) -> float:
        """The stream time of the frame delivered at ``capture_ts`` (raw streams: the capture time itself)."""
        if not self._marks:
            return capture_ts
        i = bisect_right(self._marks, (capture_ts, float("inf")))
        return self._marks[max(0, i - 1)][1]

    def _start(self, t: float, now: float, event_id: str) -> ClipRef:
        cfg = self.config
        end_t = t + cfg.post_s
        entries = [e for e in self._ring.since(t - cfg.pre_s) if e.t <= end_t]
        start_t = entries[0].t if entries else t - cfg.pre_s
        wall = time.time()
        clip_id = (f"{self._slug}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(wall))}"
                   f"{int(wall * 1000) % 1000:03d}Z-{secrets.token_hex(3)}")
        clip = _Clip(clip_id, start_t, end_t, max(start_t, t - cfg.pre_s) + cfg.max_clip_s,
                     now + cfg.post_s + GRACE_S, [event_id], entries, sum(e.nbytes for e in entries))
        self._active.append(clip)
        self.started += 1
        newest = self._ring.newest_t
        if newest is not None and newest > end_t:
            self._finish(clip)
        return ClipRef(clip_id, t - start_t)

    def _add(self, entry: Entry) -> None:
        with self._lock:
            self._ring.append(entry)
            for clip in list(self._active):
                if clip.entries and isinstance(entry, EncodedPacket):
                    head = clip.entries[0]
                    if isinstance(head, EncodedPacket) and head.template is not entry.template:
                        self._finish(clip)  # the source reopened with other parameters
                        continue
                if entry.t > clip.end_t:
                    self._finish(clip)
                    continue
                if not clip.entries:
                    if not entry.keyframe or entry.t < clip.start_t:
                        continue
                    clip.start_t = entry.t
                clip.entries.append(entry)
                clip.bytes += entry.nbytes
                if clip.bytes > self.config.ring_max_bytes:
                    log.warning("clip %s reached clips.ring_max_bytes (%d bytes); it ends here", clip.id, clip.bytes)
                    self._finish(clip)

    def _finish(self, clip: _Clip) -> None:
        self._active.remove(clip)
        if not clip.entries:
            self.empty += 1
            log.warning("clip %s of %s ended without a usable frame (no keyframe arrived)", clip.id, self.stream_id)
            return
        try:
            self._jobs.put_nowait(clip)
        except queue.Full:
            self.dropped += 1
            log.error("clip %s of %s dropped: %d clips already wait for the writer", clip.id, self.stream_id,
                      MAX_PENDING)

    # -- the writer thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        last_enforce = time.monotonic()
        while True:
            try:
                job = self._jobs.get(timeout=0.25)
            except queue.Empty:
                job = None
            if job is _STOP:
                return
            if job is not None:
                self._write(job)
            now = time.monotonic()
            with self._lock:
                for clip in [c for c in self._active if now > c.deadline]:
                    self._finish(clip)
            if now - last_enforce > _ENFORCE_INTERVAL_S:
                last_enforce = now
                try:
                    self.store.enforce()
                except Exception as e:
                    log.error("clips of %s: retention failed: %s", self.stream_id, error_text(e))

    def _write(self, clip: _Clip) -> None:
        store = self.store
        part, final = store.part_path(clip.id), store.path(clip.id)
        entries = clip.entries
        try:
            if isinstance(entries[0], EncodedPacket):
                codec, reencoded = writer.remux(part, [e for e in entries if isinstance(e, EncodedPacket)]), False
            else:
                if self._encoder is None:
                    self._encoder = writer.raw_encoder()
                frames = [e for e in entries if isinstance(e, RawFrame)]
                codec, reencoded = writer.encode(part, frames, self._encoder, self.config.raw_fps), True
            os.replace(part, final)
            fsync_path(store.folder)
            size, sha256 = file_digest(final)
            first, last = entries[0], entries[-1]
            store.commit(clip.id, {
                "id": clip.id, "stream": self.stream_id,
                "start_capture": round(first.capture_ts, 6), "end_capture": round(last.capture_ts, 6),
                "start_wall": round(first.wall_time, 6), "end_wall": round(last.wall_time, 6),
                "duration_s": round(max(e.t for e in entries) - first.t, 6), "frames": len(entries),
                "event_ids": list(clip.event_ids), "bytes": size, "sha256": sha256, "codec": codec,
                "reencoded": reencoded, "created": round(time.time(), 3),
            })  # fmt: skip
        except Exception as e:  # disk full, I/O error, a codec the muxer refuses: abandon this clip, keep going
            self.failed += 1
            self.last_error = f"clip {clip.id}: {error_text(e)}"
            log.error("clips of %s: clip %s abandoned: %s", self.stream_id, clip.id, error_text(e))
            for path in (part, final, store.metadata_path(clip.id)):
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(Exception):
                store.remove(clip.id)
            return
        self.written += 1
        self.bytes_written += size
        log.info("clip %s of %s written: %.1f s, %d bytes, %d event(s), %s", clip.id, self.stream_id,
                 max(e.t for e in entries) - first.t, size, len(clip.event_ids),
                 "encoded" if reencoded else "the source's packets")
