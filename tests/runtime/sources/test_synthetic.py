import itertools
import time

import numpy as np
import pytest

from lepton_edge.config.pipeline import SourceConfig
from lepton_edge.core.errors import SourceError
from lepton_edge.runtime.sources import SourceState, create_source
from lepton_edge.runtime.sources.reader import Pacer
from lepton_edge.runtime.sources.synthetic import SyntheticSource
from tests.runtime.sources.media import read_all

SMALL = "synthetic://shapes?fps=0&width=96&height=64"


def test_same_seed_gives_the_same_frames_and_another_seed_does_not():
    a, _ = read_all(SourceConfig(uri=f"{SMALL}&seed=3&frames=4"))
    b, _ = read_all(SourceConfig(uri=f"{SMALL}&seed=3&frames=4"))
    c, _ = read_all(SourceConfig(uri=f"{SMALL}&seed=4&frames=4"))
    assert all(np.array_equal(x.data, y.data) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].data, c[0].data)


def test_frames_limit_ends_the_stream_with_new_arrays_that_move():
    frames, reader = read_all(SourceConfig(uri=f"{SMALL}&frames=5"))
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert reader.state is SourceState.ENDED
    assert frames[0].data.shape == (64, 96, 3) and frames[0].data.dtype == np.uint8
    # Downstream stages keep frames, so each must be its own array; and the shapes move.
    assert not np.shares_memory(frames[0].data, frames[1].data)
    assert not np.array_equal(frames[0].data, frames[4].data)


def test_scene_boxes_match_the_rendered_count():
    source = SyntheticSource("synthetic://shapes?fps=0&count=4&seed=1&width=128&height=96")
    source.open()
    source.read()
    boxes, classes = source.scene.boxes()
    assert len(boxes) == len(classes) == 4


def test_fps_zero_is_offline_and_positive_fps_is_live():
    assert create_source(SourceConfig(uri="synthetic://shapes?fps=0")).live is False
    assert create_source(SourceConfig(uri="synthetic://shapes?fps=15")).live is True
    assert create_source(SourceConfig(uri="synthetic://shapes")).live is True
    assert create_source(SourceConfig(uri="synthetic://shapes?fps=15", live=False)).live is False
    assert create_source(SourceConfig(uri="synthetic://shapes")).kind == "image"


def test_live_synthetic_is_paced_and_ends_after_its_frames():
    started = time.monotonic()
    frames, reader = read_all(SourceConfig(uri="synthetic://shapes?fps=20&frames=5&width=64&height=48"))
    elapsed = time.monotonic() - started
    assert len(frames) == 5
    assert reader.state is SourceState.ENDED  # a live but finite source ends instead of reconnecting
    assert elapsed >= 4 / 20 * 0.9  # four periods between five frames
    assert all(b.capture_ts > a.capture_ts for a, b in itertools.pairwise(frames))


def test_pacer_skips_ahead_instead_of_bursting_after_falling_behind():
    pacer = Pacer(fps=5)  # slots every 0.2 s
    pacer.wait()
    time.sleep(0.7)  # fell behind by three slots
    started = time.monotonic()
    for _ in range(4):
        pacer.wait()
    # Catching up would release slots 0.2, 0.4 and 0.6 at once and wait only for 0.8 (about 0.1 s);
    # skipping ahead releases one frame now, then one per slot: at least two full periods.
    assert time.monotonic() - started >= 0.35


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("colour=red", "colour"),
        ("fps=-1", "fps"),
        ("fps=fast", "fps"),
        ("fps=nan", "fps"),
        ("width=10", "width"),
        ("height=abc", "height"),
        ("count=6-3", "count"),
        ("count=many", "count"),
        ("seed=-2", "seed"),
        ("frames=1.5", "frames"),
        ("fps=", "fps"),
        ("fps=5&fps=6", "fps"),
    ],
)
def test_bad_parameters_are_rejected_naming_the_parameter_and_uri(query, parameter):
    uri = f"synthetic://shapes?{query}"
    with pytest.raises(SourceError) as info:
        create_source(SourceConfig(uri=uri))
    assert repr(parameter) in str(info.value)
    assert uri in str(info.value)


def test_unknown_scene_is_rejected():
    with pytest.raises(SourceError, match="unknown synthetic scene 'stars'; available: shapes"):
        create_source(SourceConfig(uri="synthetic://stars"))
