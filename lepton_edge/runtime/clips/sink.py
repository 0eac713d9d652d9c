"""The clip sink of a stream: triggers clips on analytics events and, for raw sources, buffers the frames."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lepton_edge.config.clips import ClipsConfig
from lepton_edge.core.results import Result
from lepton_edge.runtime.analytics.events import AnalyticsEvent
from lepton_edge.runtime.clips.recorder import ClipRecorder, ClipRef
from lepton_edge.runtime.clips.store import ClipStore
from lepton_edge.runtime.sinks.base import Sink

EventKey = Callable[[Result, AnalyticsEvent], str]
"""The id of an event of a result; the clip sink and the event messages must agree on it (device.results gives
the protocol's ``analytics_event_key``)."""


def local_event_key(result: Result, event: AnalyticsEvent) -> str:
    """An event id for pipelines without a device: stream, kind, track, name and capture time."""
    return f"{result.source_id}:{event.kind}:{event.track_id}:{event.name}:{event.capture_ts:.6f}"


class ClipSink(Sink):
    """Starts a clip for each analytics event of a kind in ``config.trigger_kinds`` (on the pipeline's thread: a
    lock and a few list operations) and, for raw sources (``raw=True``), buffers each frame downscaled to
    ``raw_max_width`` and at most ``raw_fps`` per second (on the sink's own thread). Encoded sources feed the
    recorder themselves (:meth:`PyAvVideoSource.attach_clips`); their sink needs no pixels."""

    name = "clips"

    def __init__(self, recorder: ClipRecorder, *, raw: bool, event_key: EventKey = local_event_key,
                 queue_size: int = 8) -> None:
        super().__init__(queue_size)
        self.recorder = recorder
        self.config = recorder.config
        self.needs_image = raw
        self.event_key = event_key
        self._kinds = None if self.config.trigger_kinds is None else frozenset(self.config.trigger_kinds)
        self._next_frame_ts: float | None = None

    def offer(self, result: Result) -> bool:
        analytics = result.analytics
        if analytics is not None:
            for event in analytics.events:
                self.clip_ref(event, self.event_key(result, event))
        if not self.needs_image or result.image is None:
            return True
        return super().offer(result)

    def clip_ref(self, event: AnalyticsEvent, event_id: str) -> str | None:
        """The event's clip reference (``clip:<id>@<offset>``), starting or extending the clip; the same event id
        always gets the same one. None for kinds that start no clip or when the recorder refused it."""
        if self._kinds is not None and event.kind not in self._kinds:
            return None
        ref: ClipRef | None = self.recorder.trigger(event.capture_ts, event_id)
        return None if ref is None else ref.reference()

    def write(self, result: Result) -> None:
        image = result.image
        if image is None:
            return
        period = 1.0 / self.config.raw_fps
        due = self._next_frame_ts
        if due is not None and result.capture_ts < due - 0.1 * period:  # 10 %: a camera at raw_fps has jitter
            return
        self._next_frame_ts = max(due or 0.0, result.capture_ts) + period
        self.recorder.add_frame(_downscale(image, self.config.raw_max_width), result.capture_ts, result.wall_time)

    def release(self) -> None:
        self.recorder.close()

    def stats(self) -> dict[str, Any]:
        """The sink's own figures (``written``, ``dropped``: raw frames buffered or not) and the recorder's."""
        return {**super().stats(), **self.recorder.stats()}


def _downscale(image: Any, max_width: int) -> Any:
    height, width = image.shape[:2]
    if width <= max_width:
        return image.copy()
    import cv2  # optional dependency; raw sources read through OpenCV have it

    size = (max_width, max(2, round(height * max_width / width)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


_STORES: dict[Path, ClipStore] = {}
_STORES_LOCK = threading.Lock()


def open_clip_store(config: ClipsConfig) -> ClipStore:
    """The store of ``config.folder``, shared by every stream of this process that records there (a second store
    on the same folder would delete the first one's ``.part`` files at start and not see its quota)."""
    folder = Path(config.folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = ClipStore(key, config.max_bytes, config.retention_s)
        return store


def create_clip_sink(config: ClipsConfig, stream_id: str, source: Any = None, *,
                     event_key: EventKey = local_event_key) -> ClipSink:
    """The clip sink of stream ``stream_id``. A ``source`` with ``attach_clips`` (the PyAV video source of files and
    streams) feeds its own packets, so clips keep them without re-encoding; any other source is fed raw frames
    by the sink and encoded. Create the source with :func:`~lepton_edge.runtime.sources.pyav_video.clip_source` so
    files and streams get the PyAV one."""
    recorder = ClipRecorder(stream_id, config, open_clip_store(config))
    attach = getattr(source, "attach_clips", None)
    if attach is not None:
        attach(recorder)
    return ClipSink(recorder, raw=attach is None, event_key=event_key)


class ClipRefs:
    """The clip sinks of a device's streams, as the analytics event sink's ``clip_ref``: the clip reference of an
    event of ``stream`` (None when the stream records no clips)."""

    def __init__(self) -> None:
        self._sinks: dict[str, ClipSink] = {}
        self._lock = threading.Lock()

    def add(self, stream: str, sink: ClipSink) -> None:
        with self._lock:
            self._sinks[stream] = sink

    def remove(self, stream: str) -> None:
        with self._lock:
            self._sinks.pop(stream, None)

    def __call__(self, stream: str, event: AnalyticsEvent, event_id: str) -> str | None:
        with self._lock:
            sink = self._sinks.get(stream)
        return None if sink is None else sink.clip_ref(event, event_id)
