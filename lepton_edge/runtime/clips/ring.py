"""The recent past of one stream: the source's own encoded packets, or downscaled raw frames, kept for the
pre-roll and bounded in bytes."""

from __future__ import annotations

import io
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np


class CodecTemplate:
    """The codec parameters of a demuxed stream (extradata included), kept apart from the source's container so
    clips can be written after the source was closed or reopened. ``stream`` is the template for
    ``OutputContainer.add_stream_from_template``."""

    def __init__(self, stream: Any) -> None:
        self._holder = av.open(io.BytesIO(), "w", format="mp4")  # never written: it only holds the parameters
        self.stream = self._holder.add_stream_from_template(stream)
        self.codec = str(stream.codec_context.name)
        self.time_base = Fraction(stream.time_base)
        self.width = int(stream.codec_context.width or 0)
        self.height = int(stream.codec_context.height or 0)


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """One packet as the source demuxed it, with the stream time ``t`` (pts in seconds) and when it was read."""

    data: bytes
    pts: int | None
    dts: int | None
    duration: int
    keyframe: bool
    t: float
    capture_ts: float
    wall_time: float
    template: CodecTemplate

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One decoded frame (BGR, already downscaled) at capture time ``t``; every raw frame is a keyframe."""

    image: np.ndarray
    t: float
    capture_ts: float
    wall_time: float
    keyframe: bool = True

    @property
    def nbytes(self) -> int:
        return int(self.image.nbytes)


Entry = EncodedPacket | RawFrame


class PacketRing:
    """Entries in arrival order, kept for ``pre_s`` seconds of stream time back to the keyframe at or before that,
    and at most ``max_bytes`` (the oldest leave first, counted in ``evicted``). Not thread safe: the recorder
    holds its lock around every call."""

    def __init__(self, pre_s: float, max_bytes: int) -> None:
        self.pre_s = pre_s
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evicted = 0
        """Entries dropped for the byte bound before their pre-roll time was over."""
        self._entries: deque[Entry] = deque()
        self._keys: deque[float] = deque()
        """Stream times of the keyframes in the ring, oldest first."""

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    @property
    def newest_t(self) -> float | None:
        return self._entries[-1].t if self._entries else None

    def clear(self) -> None:
        self._entries.clear()
        self._keys.clear()
        self.bytes = 0

    def append(self, entry: Entry) -> None:
        self._entries.append(entry)
        self.bytes += entry.nbytes
        if entry.keyframe:
            self._keys.append(entry.t)
        # Keep one keyframe at or before newest - pre_s: everything older is not needed for any pre-roll.
        while len(self._keys) >= 2 and self._keys[1] <= entry.t - self.pre_s:
            self._drop_gop()
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            self.evicted += self._drop_gop() if self._keys and len(self._keys) >= 2 else self._drop_one()

    def since(self, start_t: float) -> list[Entry]:
        """The entries from the last keyframe at or before ``start_t`` (the oldest keyframe when none is that old)
        to the newest; empty when the ring holds no keyframe."""
        if not self._keys:
            return []
        keys = list(self._keys)
        cut = keys[max(0, bisect_right(keys, start_t) - 1)]
        out: list[Entry] = []
        started = False
        for entry in self._entries:
            if not started and entry.keyframe and entry.t == cut:
                started = True
            if started:
                out.append(entry)
        return out

    def _drop_one(self) -> int:
        entry = self._entries.popleft()
        self.bytes -= entry.nbytes
        if entry.keyframe and self._keys:
            self._keys.popleft()
        return 1

    def _drop_gop(self) -> int:
        """Drop the oldest keyframe and what follows it up to the next keyframe (or junk before the first one)."""
        dropped = self._drop_one()
        while self._entries and not self._entries[0].keyframe:
            dropped += self._drop_one()
        return dropped
