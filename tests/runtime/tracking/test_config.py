"""The tracking and analytics sections: errors name the field, and what a remote config could abuse is bounded."""

import time

import pytest

from lepton_edge.config.device import parse_config
from lepton_edge.core.errors import ConfigError


def device(**sections):
    return {"model": {"path": "m.onnx"}, "source": {"uri": "synthetic://shapes"}, **sections}


def refused(data):
    with pytest.raises(ConfigError) as e:
        parse_config(data, "remote")
    return str(e.value)


SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10]]


def test_a_valid_section_parses():
    config = parse_config(
        device(
            tracking={"max_lost_s": 2},
            analytics={
                "zones": [{"name": "door", "polygon": SQUARE, "loiter_s": 30}],
                "lines": [{"name": "gate", "start": [0, 5], "end": [10, 5], "classes": ["person"]}],
            },
        ),
        "test",
    )
    assert config.tracking.max_lost_s == 2 and config.analytics.zones[0].loiter_s == 30


@pytest.mark.parametrize(
    ("sections", "named"),
    [
        ({"tracking": {"max_lost_s": 0}}, "tracking.max_lost_s"),
        ({"tracking": {"confirm_hits": 10**9}}, "tracking.confirm_hits"),
        ({"tracking": {"high_treshold": 0.5}}, "tracking.high_treshold"),
        ({"tracking": {"low_threshold": 0.9, "high_threshold": 0.5}}, "tracking.low_threshold"),
        ({"tracking": {}, "analytics": {"zones": [{"name": "z", "polygon": SQUARE[:2]}]}}, "analytics.zones.0.polygon"),
        (
            {"tracking": {}, "analytics": {"lines": [{"name": "l", "start": [1, 1], "end": [1, 1]}]}},
            "analytics.lines.0",
        ),
        ({"tracking": {}, "analytics": {"zones": [{"name": "a", "polygon": SQUARE}] * 2}}, "given twice: a"),
        (
            {"tracking": {}, "analytics": {"coordinates": "normalized", "zones": [{"name": "z", "polygon": SQUARE}]}},
            "zone 'z': normalized coordinates must be within 0..1",
        ),
        ({"analytics": {}}, "add a tracking section"),
    ],
)
def test_errors_name_the_field(sections, named):
    assert named in refused(device(**sections))


@pytest.mark.parametrize(
    "abuse",
    [
        {"zones": [{"name": f"z{i}", "polygon": SQUARE} for i in range(10**6)]},
        {"lines": [{"name": f"l{i}", "start": [0, 0], "end": [1, 1]} for i in range(10**5)]},
        {"zones": [{"name": "huge", "polygon": [[i % 16000, i // 16000] for i in range(10**6)]}]},
        {"zones": [{"name": "nan", "polygon": [[0, 0], [float("nan"), 1], [1, 1]]}]},
        {"lines": [{"name": "inf", "start": [0, 0], "end": [float("inf"), 1]}]},
        {"lines": [{"name": "far", "start": [0, 0], "end": [1e12, 1]}]},
        {"lines": [{"name": "neg", "start": [-5, 0], "end": [1, 1]}]},
        {"zones": [{"name": "z", "polygon": SQUARE, "classes": ["x"] * 10**5}]},
        {"zones": [{"name": "z" * 10**6, "polygon": SQUARE}]},
        {"zones": [{"name": "z", "polygon": SQUARE, "loiter_s": 1e300}]},
        {"counts_interval_s": 0},
    ],
)
def test_remote_abuse_is_refused_quickly(abuse):
    t0 = time.perf_counter()
    message = refused(device(tracking={"max_tracks": 100}, analytics=abuse))
    assert "analytics" in message
    assert time.perf_counter() - t0 < 5.0, "validation must stay cheap whatever arrives"


def test_max_tracks_is_bounded():
    assert "tracking.max_tracks" in refused(device(tracking={"max_tracks": 10**7}))
