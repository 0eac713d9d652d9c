"""Schema of event clips with pre-roll (lepton_edge.runtime.clips): one per stream."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from lepton_edge.config.base import Strict

ClipTriggerKind = Literal["zone_enter", "zone_exit", "line_crossed", "loitering", "appeared"]
"""Analytics event kinds that can start a clip (the kinds of lepton_edge.runtime.analytics.events.EventKind)."""
MIB = 1 << 20
MAX_CLIP_FOLDER_BYTES = 1 << 40
"""Largest clip quota a config may set (1 TiB); a remote config is bounded lower by the device's remote policy."""
MAX_RETENTION_S = 366 * 86400


class ClipsConfig(Strict):
    """Clips around analytics events: ``pre_s`` seconds before to ``post_s`` after, merged when they overlap, kept
    in ``folder`` within ``max_bytes`` and ``retention_s`` (oldest deleted first)."""

    enabled: bool = Field(False, description="Record a clip for each analytics event of the stream.")
    folder: Path = Field(
        Path("clips"),
        description="Folder of the clips (`<id>.mp4` and its `<id>.json` metadata); created when missing. Use a "
        "folder of its own: `.part` files and clips without metadata found there at start are deleted.",
    )
    pre_s: float = Field(5.0, ge=0, le=60, allow_inf_nan=False, description="Seconds before the event (0..60).")
    post_s: float = Field(10.0, ge=0, le=300, allow_inf_nan=False, description="Seconds after the event (0..300).")
    max_clip_s: float = Field(
        60.0, ge=1, le=900, allow_inf_nan=False,
        description="Longest clip in seconds (1..900): overlapping events extend a running clip up to this."
    )
    max_bytes: int = Field(
        1024 * MIB, ge=MIB, le=MAX_CLIP_FOLDER_BYTES,
        description="Quota of the clip folder in bytes (1 MiB..1 TiB); the oldest clips are deleted to stay below."
    )
    retention_s: float = Field(
        7 * 86400.0, ge=60, le=MAX_RETENTION_S, allow_inf_nan=False,
        description="Clips older than this many seconds are deleted (60 s..366 days; default a week)."
    )
    trigger_kinds: list[ClipTriggerKind] | None = Field(
        None, max_length=5, description="Event kinds that start a clip; null (the default) for all of them."
    )
    ring_max_bytes: int = Field(
        64 * MIB, ge=MIB, le=1024 * MIB,
        description="Memory for the recent past and each clip being recorded, in bytes (1 MiB..1 GiB): the "
        "source's own packets for files and streams, downscaled frames for cameras and other raw sources.",
    )
    raw_max_width: int = Field(
        640, ge=64, le=4096, description="Raw sources: frames wider than this are downscaled before buffering."
    )
    raw_fps: float = Field(
        10.0, gt=0, le=60, allow_inf_nan=False,
        description="Raw sources: most frames per second buffered and encoded (0..60)."
    )

    @model_validator(mode="after")
    def _clip_fits(self) -> ClipsConfig:
        if self.pre_s + self.post_s > self.max_clip_s:
            raise ValueError(
                f"clips: pre_s + post_s ({self.pre_s:g} + {self.post_s:g} s) is longer than max_clip_s "
                f"({self.max_clip_s:g} s); raise max_clip_s or shorten the clip"
            )
        return self
