"""Event clips with pre-roll: a ring of each stream's recent past (the source's own packets where it is encoded,
downscaled frames otherwise), clips cut around analytics events and written without re-encoding where possible,
and the clip folder with its quota and retention (docs/clips.md)."""

from __future__ import annotations

from lepton_edge.runtime.clips.recorder import ClipRecorder, ClipRef
from lepton_edge.runtime.clips.ring import CodecTemplate, EncodedPacket, PacketRing, RawFrame
from lepton_edge.runtime.clips.sink import ClipRefs, ClipSink, create_clip_sink, local_event_key, open_clip_store
from lepton_edge.runtime.clips.store import CLIP_ID_PATTERN, ClipError, ClipStore, check_clip_id

__all__ = [
    "CLIP_ID_PATTERN",
    "ClipError",
    "ClipRecorder",
    "ClipRef",
    "ClipRefs",
    "ClipSink",
    "ClipStore",
    "CodecTemplate",
    "EncodedPacket",
    "PacketRing",
    "RawFrame",
    "check_clip_id",
    "create_clip_sink",
    "local_event_key",
    "open_clip_store",
]
