"""Multi-object tracking in capture-time seconds (docs/tracking.md): :class:`Tracker` per stream."""

from lepton_edge.runtime.tracking.stage import TrackingStage
from lepton_edge.runtime.tracking.tracker import Tracker, TrackUpdate

__all__ = ["TrackUpdate", "Tracker", "TrackingStage"]
