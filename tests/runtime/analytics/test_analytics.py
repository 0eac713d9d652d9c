"""Lines, zones and loitering on tracks."""

import numpy as np
import pytest

from lepton_edge.config.pipeline import AnalyticsConfig
from lepton_edge.runtime.analytics import Analytics
from tests.runtime.tracking.helpers import tracked

SIZE = (1000, 800)


def analytics(**config):
    return Analytics(AnalyticsConfig.model_validate(config))


def feed(a, path, track_id=1, dt=0.1, classes=None, start=0.0):
    """Feed one track along ``path`` (anchors); returns every event."""
    events = []
    for i, point in enumerate(path):
        events += a.update(tracked([track_id], [point], classes=classes), start + i * dt, SIZE).events
    return events


LINE = {"name": "gate", "start": [100, 400], "end": [900, 400]}


def test_a_crossing_counts_once_in_its_direction():
    a = analytics(lines=[LINE])
    events = feed(a, [(500, y) for y in range(300, 501, 20)])  # downward: `in` for a line drawn left to right
    assert [(e.kind, e.name, e.direction) for e in events] == [("line_crossed", "gate", "in")]
    events = feed(a, [(500, y) for y in range(500, 299, -20)], track_id=2, start=5)
    assert [e.direction for e in events] == ["out"]
    assert a.lines[0][0].totals == {"in": 1, "out": 1}


def test_jitter_on_the_line_does_not_count_again():
    a = analytics(lines=[LINE], hysteresis_px=4)
    wobble = [(500, 400 + d) for d in (3, -3, 2, -2, 3, -3.5, 1)]
    events = feed(a, [(500, 380), *wobble, (500, 420), *wobble, (500, 430)])
    assert [e.direction for e in events] == ["in"]


def test_a_crossing_between_two_frames_far_apart_counts_once():
    a = analytics(lines=[LINE])
    events = feed(a, [(500, 100), (520, 700), (530, 750)], dt=1.0)  # frames dropped while it crossed
    assert [e.direction for e in events] == ["in"]


def test_a_track_lost_just_past_the_line_counts_when_it_ends():
    # A sudden change of speed while frames were dropped: the track's last observation is 2 px past the line
    # (inside the 4 px band), then it breaks. It crossed: it counts when it ends, at the time it crossed.
    a = analytics(lines=[LINE], hysteresis_px=4)
    events = feed(a, [(500, 300), (500, 380), (500, 402)], dt=0.2)
    assert events == []
    frame = a.update(tracked([], []), 2.0, SIZE, ended=(1,))
    assert [(e.kind, e.direction, e.track_id, e.capture_ts) for e in frame.events] == [
        ("line_crossed", "in", 1, pytest.approx(0.4))
    ]
    assert a.lines[0][0].totals == {"in": 1, "out": 0}


def test_a_crossing_on_the_last_frame_of_a_stream_counts_when_its_tracks_end():
    a = analytics(lines=[LINE], hysteresis_px=4)
    feed(a, [(500, y) for y in (360, 370, 380, 390, 398)] + [(500, 401)], dt=1 / 30)
    assert a.lines[0][0].totals == {"in": 0, "out": 0}  # 1 px past: not yet clear
    a.update(tracked([], []), 1.0, SIZE, ended=(1,))  # the stream ended: so did its tracks
    assert a.lines[0][0].totals == {"in": 1, "out": 0}


def test_a_track_that_comes_back_within_the_band_does_not_count_even_when_it_ends():
    a = analytics(lines=[LINE], hysteresis_px=4)
    feed(a, [(500, 380), (500, 402), (500, 398), (500, 380)])
    a.update(tracked([], []), 9.0, SIZE, ended=(1,))
    assert a.lines[0][0].totals == {"in": 0, "out": 0}


def test_a_crossing_held_while_inside_the_band_counts_once_when_the_track_goes_clear():
    a = analytics(lines=[LINE], hysteresis_px=4)
    events = feed(a, [(500, 380), (500, 401), (500, 402), (500, 399), (500, 403), (500, 420)])
    assert [e.direction for e in events] == ["in"]
    a.update(tracked([], []), 9.0, SIZE, ended=(1,))
    assert a.lines[0][0].totals == {"in": 1, "out": 0}


def test_a_pending_crossing_beyond_the_end_of_the_segment_does_not_count():
    a = analytics(lines=[LINE], hysteresis_px=4)
    feed(a, [(950, 380), (950, 402)])
    a.update(tracked([], []), 9.0, SIZE, ended=(1,))
    assert a.lines[0][0].totals == {"in": 0, "out": 0}


def test_passing_beyond_the_end_of_the_segment_is_not_a_crossing():
    a = analytics(lines=[LINE])
    assert feed(a, [(950, y) for y in range(300, 501, 20)]) == []
    assert a.lines[0][0].totals == {"in": 0, "out": 0}


def test_counts_per_class_and_class_filters():
    a = analytics(
        lines=[LINE, {"name": "cars", "start": [100, 400], "end": [900, 400], "classes": ["car"]}], counts_interval_s=1
    )
    feed(a, [(500, 300), (500, 500)], track_id=1, classes=[0])
    feed(a, [(600, 300), (600, 500)], track_id=2, classes=[1], start=1)
    counts = a.update(tracked([], []), 10.0, SIZE).counts
    assert counts["lines"]["gate"]["in"] == {"person": 1, "car": 1}
    assert counts["lines"]["cars"]["in"] == {"car": 1}


ZONE = {"name": "door", "polygon": [[200, 200], [600, 200], [600, 600], [200, 600]]}


def test_zone_enter_exit_and_dwell_time():
    a = analytics(zones=[ZONE])
    path = [(100, 400), (250, 400), (400, 400), (550, 400), (700, 400)]
    events = feed(a, path, dt=1.0)
    assert [(e.kind, e.capture_ts) for e in events] == [("zone_enter", 1.0), ("zone_exit", 4.0)]
    assert events[1].dwell_s == pytest.approx(3.0)


def test_occupancy_and_a_track_that_ends_inside_leaves():
    a = analytics(zones=[ZONE])
    frame = a.update(tracked([1, 2], [(300, 300), (400, 400)]), 0.0, SIZE)
    assert frame.occupancy == {"door": 2}
    frame = a.update(tracked([2], [(400, 400)]), 2.0, SIZE, ended=(1,))
    assert [(e.kind, e.track_id, e.dwell_s) for e in frame.events] == [("zone_exit", 1, 2.0)]
    assert frame.occupancy == {"door": 1}


def test_jitter_on_the_zone_edge_enters_once():
    a = analytics(zones=[ZONE], hysteresis_px=4)
    events = feed(a, [(200 + d, 400) for d in (-5, 1, -2, 2, -3, 1, -1)])
    assert [e.kind for e in events] == ["zone_enter"]


def test_loitering_is_raised_once_per_visit_after_its_time():
    a = analytics(zones=[{**ZONE, "loiter_s": 5}])
    events = feed(a, [(400, 400)] * 20, dt=0.5)  # 9.5 s inside
    loiter = [e for e in events if e.kind == "loitering"]
    assert len(loiter) == 1 and loiter[0].capture_ts == 5.0 and loiter[0].dwell_s == pytest.approx(5.0)


def test_normalized_geometry_is_scaled_to_the_frame():
    a = analytics(coordinates="normalized", lines=[{"name": "mid", "start": [0, 0.5], "end": [1, 0.5]}])
    events = feed(a, [(500, 300), (500, 500)])  # the frame is 1000x800: the line is at y=400
    assert [e.direction for e in events] == ["in"]
    assert np.allclose(a.update(tracked([], []), 9, SIZE).geometry.lines["mid"], [[0, 400], [1000, 400]])


def test_events_are_written_in_results():
    a = analytics(lines=[LINE])
    feed(a, [(500, 300)])
    frame = a.update(tracked([1], [(500, 500)]), 1.0, SIZE)
    assert frame.to_dict() == {
        "events": [
            {
                "kind": "line_crossed",
                "name": "gate",
                "track_id": 1,
                "class_id": 0,
                "label": "person",
                "capture_ts": 1.0,
                "direction": "in",
            }
        ]
    }
