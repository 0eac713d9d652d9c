"""The tracker in capture-time seconds: ids through dropped frames and irregular intervals, crossing objects,
lifetimes in seconds, ByteTrack's two score stages."""

import numpy as np
import pytest

from lepton_edge.config.pipeline import TrackingConfig
from lepton_edge.runtime.tracking import Tracker
from tests.runtime.tracking.helpers import detections


def ids_of(update):
    return update.detections.tracks.ids.tolist()


def test_a_fast_object_keeps_its_id_through_dropped_frames_and_irregular_intervals():
    # 600 px/s with a 40 px wide box: after a 0.2 s gap the object is 120 px (3 widths) from where it was,
    # so only a prediction that scales with the real time between frames still overlaps it.
    tracker = Tracker(TrackingConfig())
    rng = np.random.default_rng(0)
    t, seen = 0.0, set()
    for _ in range(60):
        update = tracker.update(detections([[100 + 600 * t, 300]]), t)
        seen.update(i for i in ids_of(update) if i >= 0)
        t += float(rng.choice([1 / 30, 2 / 30, 0.2, 0.05]))
    assert seen == {1}


def test_frame_counting_would_lose_it():
    # The same object, with the same gaps, but every frame stamped 1/30 s apart: the prediction lags
    # and no single track follows it. This is what the time-based model is for.
    tracker = Tracker(TrackingConfig(recover_gate=0))
    seen = set()
    for frame in range(40):
        t = frame * 0.2
        update = tracker.update(detections([[100 + 600 * t, 300]]), frame / 30)
        seen.update(i for i in ids_of(update) if i >= 0)
    assert seen != {1}


@pytest.mark.parametrize("factor", [0.2, 1.8])
def test_an_object_that_brakes_or_speeds_up_during_a_gap_keeps_its_id(factor):
    # 300 px/s, then a 0.2 s gap during which it changes speed: it is 60 * factor px on instead of the 60 px
    # predicted, off the predicted box and many deviations from the predicted centre, but on its own path.
    tracker = Tracker(TrackingConfig())
    times = [f / 30 for f in range(30)] + [1.0 + 0.2 + f / 30 for f in range(20)]
    seen = set()
    for t in times:
        x = 100 + 300 * t if t <= 1.0 else 400 + 300 * factor * (t - 1.0)
        seen.update(i for i in ids_of(tracker.update(detections([[x, 300]]), t)) if i >= 0)
    assert seen == {1}


def test_a_detection_behind_a_track_or_off_its_path_is_not_taken_by_it():
    tracker = Tracker(TrackingConfig())
    for f in range(30):
        tracker.update(detections([[100 + 300 * f / 30, 300]]), f / 30)
    # 0.2 s later: one detection back where it came from, one well off its line of motion.
    update = tracker.update(detections([[250, 300], [420, 420]]), 29 / 30 + 0.2)
    assert ids_of(update) == [-1, -1]


def test_crossing_objects_keep_their_own_ids():
    tracker = Tracker(TrackingConfig())
    for f in range(60):
        t = f / 30
        update = tracker.update(detections([[100 + 300 * t, 300], [700 - 300 * t, 305]]), t)
        if f > 2:
            assert ids_of(update) == [1, 2], f"frame {f}"


def test_velocity_is_in_pixels_per_second_whatever_the_frame_rate():
    for fps in (10, 60):
        tracker = Tracker(TrackingConfig())
        for f in range(fps):
            update = tracker.update(detections([[100 + 200 * f / fps, 300 - 50 * f / fps]]), f / fps)
        vx, vy = update.detections.tracks.velocities[0]
        assert vx == pytest.approx(200, rel=0.05) and vy == pytest.approx(-50, rel=0.1)
        assert update.detections.tracks.ages_s[0] == pytest.approx((fps - 1) / fps)


def test_a_lost_track_ends_after_max_lost_s_of_capture_time_not_after_a_number_of_frames():
    config = TrackingConfig(max_lost_s=1.0)
    for frames_while_lost in (2, 100):
        tracker = Tracker(config)
        for f in range(5):
            tracker.update(detections([[100, 100]]), f * 0.1)
        ended = []
        for t in np.linspace(0.45, 1.35, frames_while_lost):  # 0.95 s after the last detection
            ended += tracker.update(detections([]), float(t)).ended
        assert ended == []
        assert ids_of(tracker.update(detections([[100, 100]]), 1.39)) == [1]  # back within the second
        ended = tracker.update(detections([]), 2.5).ended
        assert ended == (1,)
        assert len(tracker) == 0


def test_low_scores_extend_tracks_but_never_start_them():
    tracker = Tracker(TrackingConfig())
    for f in range(3):
        update = tracker.update(detections([[100 + f, 100], [400, 400]], scores=[0.9, 0.3]), f / 30)
    assert ids_of(update) == [1, -1]
    for f in range(3, 6):  # the object is half hidden: weak detections keep its track
        update = tracker.update(detections([[100 + f, 100]], scores=[0.2]), f / 30)
    assert ids_of(update) == [1]


@pytest.mark.parametrize(("agnostic", "expected"), [(False, [-1]), (True, [1])])
def test_per_class_or_class_agnostic_association(agnostic, expected):
    tracker = Tracker(TrackingConfig(class_agnostic=agnostic, confirm_hits=2))
    for f in range(3):
        tracker.update(detections([[100, 100]], classes=[0]), f / 30)
    update = tracker.update(detections([[100, 100]], classes=[1]), 3 / 30)
    assert ids_of(update) == expected


def test_time_going_back_starts_again():
    tracker = Tracker(TrackingConfig())
    for f in range(3):
        tracker.update(detections([[100, 100]]), 10 + f / 30)
    update = tracker.update(detections([[100, 100]]), 0.0)
    assert update.ended == (1,) and ids_of(update) == [-1]
    update = tracker.update(detections([[100, 100]]), 0.1)
    assert ids_of(update) == [2]  # ids are not reused


def test_max_tracks_ends_the_longest_lost_first():
    tracker = Tracker(TrackingConfig(max_tracks=2, confirm_hits=1))
    tracker.update(detections([[100, 100]]), 0.0)
    tracker.update(detections([[400, 100]]), 0.1)
    update = tracker.update(detections([[400, 100], [700, 100]]), 0.2)
    assert update.ended == (1,) and len(tracker) == 2
