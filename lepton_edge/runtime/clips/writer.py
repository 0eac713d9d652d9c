"""Writing one clip file with PyAV: the source's packets remuxed without re-encoding, or raw frames encoded."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av

from lepton_edge.core.fileio import fsync_path
from lepton_edge.runtime.clips.ring import EncodedPacket, RawFrame

RAW_ENCODERS = ("libx264", "mpeg4")
"""Encoders for raw frames, first available wins (the PyAV wheels bundle libx264; the pip OpenCV has no H.264)."""
_RAW_TIME_BASE = Fraction(1, 1000)


def raw_encoder() -> str:
    """The first of :data:`RAW_ENCODERS` this FFmpeg has."""
    for name in RAW_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # UnknownCodecError: this build lacks it
            continue
        return name
    raise RuntimeError(f"none of the clip encoders {', '.join(RAW_ENCODERS)} is in this FFmpeg build (PyAV)")


def remux(path: Path, packets: Sequence[EncodedPacket]) -> str:
    """Write ``packets`` (starting at a keyframe, one codec template) to the MP4 ``path`` as they are; the codec."""
    first = packets[0]
    template = first.template
    base = first.dts if first.dts is not None else (first.pts or 0)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream_from_template(template.stream)
        stream.time_base = template.time_base
        for entry in packets:
            packet = av.Packet(entry.data)
            packet.pts = None if entry.pts is None else entry.pts - base
            packet.dts = None if entry.dts is None else entry.dts - base
            packet.duration = entry.duration
            packet.time_base = template.time_base
            packet.is_keyframe = entry.keyframe
            packet.stream = stream
            out.mux(packet)
    fsync_path(path)
    return template.codec


def encode(path: Path, frames: Sequence[RawFrame], encoder: str, fps: float) -> str:
    """Encode ``frames`` (BGR, timed by their capture times) to the MP4 ``path``; the codec."""
    height, width = frames[0].image.shape[:2]
    width, height = width - width % 2, height - height % 2  # yuv420p needs even sides
    t0 = frames[0].t
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream(encoder, rate=Fraction(round(fps * 1000), 1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = _RAW_TIME_BASE
        if encoder == "libx264":
            stream.codec_context.options = {"preset": "veryfast", "crf": "26"}
        last = -1
        for entry in frames:
            pts = max(round((entry.t - t0) * 1000), last + 1)  # strictly increasing, in milliseconds
            image = entry.image[:height, :width]
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base, last = pts, _RAW_TIME_BASE, pts
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        codec = str(stream.codec_context.name)
    fsync_path(path)
    return "h264" if codec == "libx264" else codec

