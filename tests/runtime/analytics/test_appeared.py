"""`appeared` events: one per confirmed track, with its class and confidence, only when asked for."""

from lepton_edge.config.pipeline import AnalyticsConfig
from lepton_edge.runtime.analytics import Analytics
from tests.runtime.tracking.helpers import tracked

SIZE = (1000, 800)


def test_each_track_appears_once_with_its_class_and_confidence():
    a = Analytics(AnalyticsConfig(appeared=True))
    first = a.update(tracked([1, -1], [(100, 100), (300, 300)]), 0.0, SIZE).events
    assert [(e.kind, e.track_id, e.label, round(e.confidence, 2)) for e in first] == [("appeared", 1, "person", 0.9)]
    assert a.update(tracked([1, 2], [(110, 100), (300, 300)], classes=[0, 1]), 0.1, SIZE).events[0].track_id == 2
    assert a.update(tracked([1, 2], [(120, 100), (300, 300)]), 0.2, SIZE).events == ()
    assert a.update(tracked([3], [(500, 500)]), 0.3, SIZE, ended=(1, 2)).events[0].track_id == 3


def test_no_appeared_events_unless_configured():
    a = Analytics(AnalyticsConfig())
    assert a.update(tracked([1], [(100, 100)]), 0.0, SIZE).events == ()
