"""Analytics on tracks (docs/tracking.md): polygon zones (enter, exit, occupancy, dwell, loitering) and
directional counting lines, with typed events."""

from lepton_edge.runtime.analytics.analytics import Analytics, anchor_points
from lepton_edge.runtime.analytics.events import AnalyticsEvent, AnalyticsFrame, Geometry

__all__ = ["Analytics", "AnalyticsEvent", "AnalyticsFrame", "Geometry", "anchor_points"]
