import socket

import numpy as np
import pytest

from lepton_edge.config.pipeline import ReconnectConfig, SourceConfig
from lepton_edge.core.errors import SourceError
from lepton_edge.runtime.sources import SourceState, create_source, gstreamer_available, require_gstreamer
from lepton_edge.runtime.sources.video import StreamSource, V4L2Source, VideoFileSource
from tests.runtime.sources.media import level, read_all, write_video


def test_video_file_gives_every_frame_in_order(tmp_path):
    path = write_video(tmp_path / "clip.mp4", frames=12, size=(64, 48), fps=10)
    config = SourceConfig(uri=str(path))
    assert isinstance(create_source(config), VideoFileSource)
    frames, reader = read_all(config)
    assert len(frames) == 12
    assert [f.seq for f in frames] == list(range(12))
    assert all(f.data.shape == (48, 64, 3) and f.data.dtype == np.uint8 for f in frames)
    assert all(abs(float(f.data.mean()) - level(i)) < 6 for i, f in enumerate(frames))  # lossy, in order
    assert reader.state is SourceState.ENDED
    info = reader.stats()["source"]
    assert (info["width"], info["height"], info["frame_count"], info["fps"]) == (64, 48, 12, 10)
    assert info["backend"] == "FFMPEG" and info["live"] is False


def test_video_file_loops_with_continuous_sequence_numbers(tmp_path):
    path = write_video(tmp_path / "clip.mp4", frames=6)
    frames, reader = read_all(SourceConfig(uri=str(path), loop=True), limit=15)
    assert [f.seq for f in frames] == list(range(15))
    means = [round(float(f.data.mean())) for f in frames]
    assert means[:6] == means[6:12] == means[12:] + means[3:6]
    assert reader.state is SourceState.STOPPED


def test_live_video_file_plays_at_its_frame_rate(tmp_path):
    path = write_video(tmp_path / "clip.mp4", frames=4, fps=20)
    config = SourceConfig(uri=str(path), live=True)
    assert create_source(config).live is True
    frames, reader = read_all(config)
    assert len(frames) == 4 and reader.state is SourceState.ENDED
    assert frames[-1].capture_ts - frames[0].capture_ts >= 3 / 20 * 0.9


@pytest.mark.parametrize("content", [b"", b"this is not a video at all" * 100])
def test_undecodable_video_file_is_an_error(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=r"broken\.mp4: cannot decode this file as a video") as info:
        read_all(SourceConfig(uri=str(path)))
    assert "FFmpeg" in str(info.value)


def test_truncated_video_file_is_an_error(tmp_path):
    good = write_video(tmp_path / "good.mp4", frames=12).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(good[: len(good) // 3])  # mp4v puts the index at the end: nothing is decodable
    with pytest.raises(SourceError, match=r"cut\.mp4"):
        read_all(SourceConfig(uri=str(path)))


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_stream_error_is_clear_and_hides_credentials():
    uri = f"http://admin:hunter2@127.0.0.1:{_refused_port()}/stream.mjpg"
    source = create_source(SourceConfig(uri=uri, reconnect=ReconnectConfig(stall_timeout_s=1)))
    assert isinstance(source, StreamSource) and source.live is True
    with pytest.raises(SourceError, match=r"cannot open stream http://\*\*\*@127\.0\.0\.1") as info:
        source.open()
    assert "hunter2" not in str(info.value) and "admin" not in str(info.value)
    assert "within 1 s" in str(info.value)


@pytest.mark.parametrize("uri", ["/dev/video97", "v4l2://97", "v4l2:///dev/video97"])
def test_missing_camera_is_named(uri):
    source = create_source(SourceConfig(uri=uri))
    assert isinstance(source, V4L2Source) and source.live is True
    with pytest.raises(SourceError, match=r"camera /dev/video97 not found"):
        source.open()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("v4l2://0?width=wide", "parameter 'width'"),
        ("v4l2://0?zoom=2", "unknown parameter 'zoom'"),
        ("v4l2://0?fourcc=MJPEG", "fourcc must be 4 characters"),
        ("v4l2://front", "expected v4l2://N"),
        ("csi://0?fps=0", "parameter 'fps'"),
        ("csi://0?flip=9", "parameter 'flip'"),
        ("csi://left", "sensor id must be a number"),
        ("gst:videotestsrc ! fakesink", "must end in appsink"),
        ("gst:", "empty GStreamer pipeline"),
    ],
)
def test_bad_camera_uris_are_rejected(uri, message):
    with pytest.raises(SourceError, match=message):
        create_source(SourceConfig(uri=uri))


def test_gstreamer_flag_matches_opencv_build_information():
    import cv2

    line = next(x for x in cv2.getBuildInformation().splitlines() if x.strip().startswith("GStreamer:"))
    assert gstreamer_available() == ("YES" in line)


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV has GStreamer")
@pytest.mark.parametrize("uri", ["csi://0", "csi://1?width=1280&fps=60", "gst:videotestsrc ! appsink"])
def test_gstreamer_sources_explain_the_missing_gstreamer(uri):
    with pytest.raises(SourceError) as info:
        create_source(SourceConfig(uri=uri))
    message = str(info.value)
    assert "built without GStreamer" in message
    assert "python3-opencv" in message and "LEPTON_SYSTEM_OPENCV=1" in message and "`opencv` extra" in message
    with pytest.raises(SourceError, match="built without GStreamer"):
        require_gstreamer(uri)


@pytest.mark.skipif(not gstreamer_available(), reason="this OpenCV has no GStreamer")
def test_gstreamer_pipeline_gives_frames():
    frames, _ = read_all(
        SourceConfig(uri="gst:videotestsrc num-buffers=3 ! videoconvert ! video/x-raw,format=BGR ! appsink"),
        limit=3,
    )
    assert len(frames) == 3
