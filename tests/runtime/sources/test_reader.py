import logging
import socket
import threading
import time

import numpy as np
import pytest

from lepton_edge.config.pipeline import ReconnectConfig, SourceConfig
from lepton_edge.core.errors import SourceError
from lepton_edge.core.results import Frame
from lepton_edge.runtime.sources import FrameReader, SourceState, create_source
from tests.runtime.sources.media import read_all, wait_until, write_video
from tests.runtime.sources.mjpeg_server import MjpegCamera

FAST_RECONNECT = ReconnectConfig(initial_backoff_s=0.05, max_backoff_s=0.2, stall_timeout_s=1.0)


class Collector:
    """Iterates a reader on its own thread, as the pipeline does."""

    def __init__(self, reader: FrameReader) -> None:
        self.reader = reader
        self.frames: list[Frame] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for frame in self.reader:
                self.frames.append(frame)
        except BaseException as e:
            self.error = e

    def join(self, timeout: float = 5.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the reader did not stop"


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_frames_carry_sequence_source_id_and_timestamps():
    config = SourceConfig(uri="synthetic://shapes?fps=0&frames=3&width=64&height=48", id="cam-a")
    before_mono, before_wall = time.monotonic(), time.time()
    frames, reader = read_all(config)
    assert [f.seq for f in frames] == [0, 1, 2]
    assert {f.source_id for f in frames} == {"cam-a"}
    assert all(before_mono <= f.capture_ts <= time.monotonic() for f in frames)
    assert all(abs(f.wall_time - before_wall) < 60 for f in frames)
    assert frames[0].capture_ts <= frames[1].capture_ts <= frames[2].capture_ts
    stats = reader.stats()
    assert stats["state"] == "ended" and stats["frames"] == 3 and stats["reconnects"] == 0
    assert stats["source"]["width"] == 64 and stats["last_error"] is None


def test_source_id_defaults_to_the_masked_uri():
    config = SourceConfig(uri="rtsp://admin:secret@cam.local/live")
    assert FrameReader(create_source(config), config).source_id == "rtsp://***@cam.local/live"


def test_offline_open_failure_raises_and_fails(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"nothing here")
    config = SourceConfig(uri=str(tmp_path / "bad.mp4"))
    reader = FrameReader(create_source(config), config)
    with pytest.raises(SourceError, match="cannot decode"):
        list(reader)
    assert reader.state is SourceState.FAILED
    assert "cannot decode" in reader.last_error


def test_offline_file_replaced_before_a_loop_restart_fails_clearly(tmp_path):
    path = write_video(tmp_path / "clip.mp4", frames=3)
    config = SourceConfig(uri=str(path), loop=True)
    reader = FrameReader(create_source(config), config)
    frames = []
    with pytest.raises(SourceError, match=r"clip\.mp4"):
        for frame in reader:
            frames.append(frame)
            if len(frames) == 3:
                path.write_bytes(b"now corrupt")  # the loop's reopen meets a broken file
    assert len(frames) == 3 and reader.state is SourceState.FAILED


def test_live_source_that_never_opens_fails_after_max_attempts(caplog):
    config = SourceConfig(
        uri=f"http://127.0.0.1:{_refused_port()}/stream.mjpg",
        reconnect=ReconnectConfig(initial_backoff_s=0.02, max_backoff_s=0.05, max_attempts=3),
    )
    reader = FrameReader(create_source(config), config)
    with caplog.at_level(logging.DEBUG), pytest.raises(SourceError, match="gave up after 3 reconnect"):
        list(reader)
    assert reader.state is SourceState.FAILED and reader.reconnects == 0 and reader.frames == 0
    assert "cannot open stream" in reader.last_error
    failed_attempts = [r for r in caplog.records if r.msg.startswith("%s: reconnect attempt %d failed")]
    assert len(failed_attempts) == 3


def test_stop_is_honoured_while_waiting_to_reconnect():
    config = SourceConfig(
        uri=f"http://127.0.0.1:{_refused_port()}/stream.mjpg",
        reconnect=ReconnectConfig(initial_backoff_s=30, max_backoff_s=60, stall_timeout_s=1.0),
    )
    stop = threading.Event()
    reader = FrameReader(create_source(config), config, stop)
    collector = Collector(reader)
    wait_until(lambda: reader.state is SourceState.RECONNECTING, 5, "the reader waits to reconnect")
    stop.set()
    collector.join(timeout=2.0)  # far less than the 30 s backoff
    assert collector.error is None and reader.state is SourceState.STOPPED


def test_close_from_another_thread_ends_a_live_reader():
    config = SourceConfig(uri="synthetic://shapes?fps=50&width=64&height=48")
    reader = FrameReader(create_source(config), config)
    collector = Collector(reader)
    wait_until(lambda: reader.frames >= 3, 5, "frames flow")
    assert reader.state is SourceState.STREAMING
    reader.close()
    collector.join()
    assert reader.state is SourceState.STOPPED and collector.error is None


def test_closed_reader_yields_nothing_and_iterates_once():
    config = SourceConfig(uri="synthetic://shapes?fps=0&frames=2&width=64&height=48")
    reader = FrameReader(create_source(config), config)
    reader.close()
    assert list(reader) == [] and reader.state is SourceState.STOPPED
    with pytest.raises(RuntimeError, match="only once"):
        iter(reader)


def test_breaking_out_of_the_loop_closes_the_source(tmp_path):
    config = SourceConfig(uri=str(write_video(tmp_path / "clip.mp4", frames=10)))
    source = create_source(config)
    reader = FrameReader(source, config)
    for frame in reader:
        assert isinstance(frame.data, np.ndarray)
        break
    assert source._cap is None  # released by the reader's generator on exit
    assert reader.state is SourceState.STOPPED


@pytest.mark.integration
def test_mjpeg_stream_reconnects_after_the_server_restarts():
    camera = MjpegCamera(fps=25)
    config = SourceConfig(uri=camera.url, reconnect=FAST_RECONNECT)
    stop = threading.Event()
    reader = FrameReader(create_source(config), config, stop)
    collector = Collector(reader)
    try:
        wait_until(lambda: reader.frames >= 5, 10, "frames arrive from the stream")
        assert reader.state is SourceState.STREAMING
        assert collector.frames[0].data.shape == (120, 160, 3)

        camera.stop()
        wait_until(
            lambda: reader.state in (SourceState.RECONNECTING, SourceState.STALLED), 5, "the reader notices"
        )
        time.sleep(0.3)  # a few refused reconnect attempts
        assert reader.state is SourceState.RECONNECTING
        frames_during_outage = reader.frames

        camera = MjpegCamera(port=camera.port, fps=25)
        wait_until(lambda: reader.frames >= frames_during_outage + 5, 10, "frames resume after the restart")
        assert reader.reconnects >= 1
        assert reader.state is SourceState.STREAMING
        assert reader.last_error is not None
    finally:
        stop.set()
        collector.join()
        camera.stop()
    assert collector.error is None
    assert [f.seq for f in collector.frames] == list(range(len(collector.frames)))
    assert reader.state is SourceState.STOPPED


@pytest.mark.integration
def test_frozen_mjpeg_stream_is_detected_as_stalled_and_recovers():
    with MjpegCamera(fps=25) as camera:
        config = SourceConfig(uri=camera.url, reconnect=FAST_RECONNECT)
        stop = threading.Event()
        reader = FrameReader(create_source(config), config, stop)
        collector = Collector(reader)
        try:
            wait_until(lambda: reader.frames >= 5, 10, "frames arrive from the stream")
            camera.frozen.set()  # the connection stays open, no frame comes
            wait_until(lambda: reader.state is SourceState.STALLED, 5, "the reader reports the stall")
            wait_until(lambda: "no frame for" in (reader.last_error or ""), 5, "the stall is recorded")
            stalled_at = reader.frames
            camera.frozen.clear()
            wait_until(lambda: reader.frames >= stalled_at + 5, 10, "frames resume")
            assert reader.reconnects >= 1 and reader.state is SourceState.STREAMING
        finally:
            stop.set()
            collector.join()
        assert collector.error is None
