"""The source interface. Concrete sources live beside this module; ``lepton_edge.runtime.sources.create_source``
picks one from the URI, and :class:`FrameReader` turns any source into a stream of :class:`Frame`
with sequence numbers, capture timestamps, stall detection and reconnection.
"""

from __future__ import annotations

import abc
import enum
from typing import Any, Literal

import numpy as np


class SourceState(str, enum.Enum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    FAILED = "failed"
    STOPPED = "stopped"


class Source(abc.ABC):
    """A producer of images (HxWx3 BGR uint8) or sensor tensors.

    ``open()`` raises :class:`~lepton_edge.core.errors.SourceError` with a clear message when the source
    cannot be opened; ``read()`` blocks for the next item and returns None when a finite source ends,
    raising SourceError when reading fails.
    """

    uri: str
    live: bool
    """Live sources (cameras, streams, paced generators) are read with latest-frame-wins."""
    kind: Literal["image", "tensor"] = "image"
    """Images go through preprocessing; recorded tensors are fed to the model as they are."""
    finite: bool = False
    """True when end of stream means the content ended (files), not a lost connection."""

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def read(self) -> np.ndarray | None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        """Facts about the opened source (size, fps, backend) for logs and telemetry."""
        return {"uri": self.uri, "live": self.live}
