"""Video files and network streams read with PyAV, for streams that record clips: the frames are decoded as the
OpenCV sources decode them, and the packets they came from are handed to the stream's clip recorder, so a clip
keeps the camera's own encoded video (no re-encoding)."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import av
import numpy as np

from lepton_edge.config.pipeline import SourceConfig
from lepton_edge.core.errors import SourceError
from lepton_edge.runtime.clips.recorder import ClipRecorder
from lepton_edge.runtime.clips.ring import CodecTemplate, EncodedPacket
from lepton_edge.runtime.sources.base import Source
from lepton_edge.runtime.sources.reader import Pacer, mask_uri

_STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
_NOT_VIDEO_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".npy", ".npz",
})  # fmt: skip


class PyAvVideoSource(Source):
    """A video file (``path``) or a network stream (``uri``) demuxed and decoded by PyAV.

    Files are offline unless made live (then paced at their frame rate); streams are live, with ``timeout_s`` for
    opening and for each read. :meth:`attach_clips` hands every demuxed packet of the video stream to a
    :class:`ClipRecorder`, and marks which packet time each delivered frame has.
    """

    kind: Literal["image", "tensor"] = "image"

    def __init__(self, uri: str, *, path: str | Path | None = None, live: bool | None = None,
                 timeout_s: float = 5.0) -> None:
        self.uri = uri
        self.path = None if path is None else Path(path)
        self.finite = self.path is not None
        self.live = (not self.finite) if live is None else live
        self.timeout_s = timeout_s
        self._container: Any = None
        self._stream: Any = None
        self._demux: Any = None
        self._frames: deque[Any] = deque()
        self._template: CodecTemplate | None = None
        self._clips: ClipRecorder | None = None
        self._pacer: Pacer | None = None
        self._ended = False

    def attach_clips(self, recorder: ClipRecorder) -> None:
        """Feed ``recorder`` with this source's packets from the next open on."""
        self._clips = recorder

    def open(self) -> None:
        self.close()
        target = str(self.path) if self.path is not None else self.uri
        if self.path is not None and not self.path.is_file():
            raise SourceError(f"video file not found: {self.path}")
        options = {}
        if self.uri.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"
        try:
            container = av.open(target, options=options, timeout=(self.timeout_s, self.timeout_s))
        except (av.error.FFmpegError, OSError) as e:
            raise SourceError(f"{self._name()}: FFmpeg (PyAV) could not open it: {e}") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self._name()}: no video stream in it")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        self._container, self._stream, self._ended = container, stream, False
        self._demux = container.demux(stream)
        self._template = CodecTemplate(stream) if self._clips is not None else None
        if self._clips is not None:
            self._clips.reset()
        rate = stream.average_rate
        self._pacer = Pacer(float(rate)) if self.live and self.finite and rate else None
        if not self._fill():  # a file that opens but holds no decodable frame fails here, as the OpenCV source does
            self.close()
            raise SourceError(f"{self._name()}: it opened but no video frame could be decoded; it may be truncated or "
                              "use a codec this FFmpeg build lacks")

    def read(self) -> np.ndarray | None:
        if self._container is None:
            raise SourceError(f"{self._name()}: read() called before open()")
        if self._pacer is not None:
            self._pacer.wait()
        if not self._frames and not self._fill():
            if self._clips is not None:
                self._clips.finish()
            return None
        frame = self._frames.popleft()
        if self._clips is not None and frame.time is not None:
            self._clips.mark(time.monotonic(), float(frame.time))
        image: np.ndarray = frame.to_ndarray(format="bgr24")
        return image

    def close(self) -> None:
        container, self._container = self._container, None
        self._demux, self._stream = None, None
        self._frames.clear()
        if container is not None:
            container.close()

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"uri": mask_uri(self.uri), "live": self.live, "kind": self.kind, "backend": "pyav"}
        stream = self._stream
        if stream is not None:
            rate = stream.average_rate
            info.update(width=stream.codec_context.width, height=stream.codec_context.height,
                        fps=round(float(rate), 3) if rate else None, codec=stream.codec_context.name,
                        clips=self._clips is not None)
            if self.path is not None:
                info.update(path=str(self.path), frame_count=stream.frames or None)
        return info

    def _name(self) -> str:
        return str(self.path) if self.path is not None else mask_uri(self.uri)

    def _fill(self) -> bool:
        """Demux and decode until at least one frame waits; False at the end of the stream."""
        while not self._frames:
            if self._ended:
                return False
            try:
                packet = next(self._demux)
            except StopIteration:
                self._ended = True
                return False
            except av.error.FFmpegError as e:
                raise SourceError(f"{self._name()}: reading failed: {e}") from None
            if packet.size and self._clips is not None and self._template is not None:
                self._keep(packet)
            try:
                self._frames.extend(packet.decode())
            except av.error.FFmpegError as e:
                if packet.size == 0:
                    continue
                raise SourceError(f"{self._name()}: decoding failed: {e}") from None
            if packet.size == 0:  # the flush packet at the end: decoded what remained
                self._ended = True
        return True

    def _keep(self, packet: Any) -> None:
        assert self._template is not None and self._clips is not None
        base = packet.time_base or self._template.time_base
        ts = packet.pts if packet.pts is not None else packet.dts
        t = float(ts * base) if ts is not None else 0.0
        self._clips.add_packet(EncodedPacket(
            bytes(packet), packet.pts, packet.dts, int(packet.duration or 0), bool(packet.is_keyframe), t,
            time.monotonic(), time.time(), self._template,
        ))  # fmt: skip


def clip_source(config: SourceConfig) -> PyAvVideoSource | None:
    """The PyAV source for ``config`` when it is a video file or a network stream (whose packets a clip can keep);
    None for any other source (cameras, images, synthetic, tensors, GStreamer), which is read as usual and whose
    clips are encoded from raw frames."""
    uri = config.uri.strip()
    live = config.live
    if uri.lower().startswith(_STREAM_SCHEMES):
        return PyAvVideoSource(uri, live=True if live is None else live, timeout_s=config.reconnect.stall_timeout_s)
    if "://" in uri and not uri.lower().startswith("file://"):
        return None
    if uri.startswith(("/dev/", "gst:")):
        return None
    path = Path(unquote(uri[len("file://"):]) if uri.lower().startswith("file://") else uri).expanduser()
    if path.is_dir() or path.suffix.lower() in _NOT_VIDEO_SUFFIXES:
        return None
    return PyAvVideoSource(uri, path=path, live=live)
