"""Event clips on real files: packets kept without re-encoding, merged triggers, quota and retention, disk full,
a kill during a write, and raw frames encoded."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import av
import numpy as np
import pytest

from lepton_edge.config.clips import ClipsConfig
from lepton_edge.config.pipeline import SourceConfig
from lepton_edge.core.results import Detections, Result
from lepton_edge.device.results import analytics_event_key, analytics_events
from lepton_edge.runtime.analytics.events import AnalyticsEvent, AnalyticsFrame, Geometry
from lepton_edge.runtime.clips import (
    ClipError,
    ClipRecorder,
    ClipRefs,
    ClipSink,
    ClipStore,
    PacketRing,
    RawFrame,
    create_clip_sink,
)
from lepton_edge.runtime.sources import FrameReader
from lepton_edge.runtime.sources.pyav_video import PyAvVideoSource, clip_source
from tests.support.http_server import LoopbackServer
from tests.support.tiny_fs import fill, mounted_tmpfs

FPS = 25
SECONDS = 10
GOP = 25  # a keyframe every second


def make_video(path: Path, seconds: int = SECONDS, size: tuple[int, int] = (160, 120)) -> Path:
    """An H.264 MP4 with a keyframe every second and no B-frames; each frame is different."""
    width, height = size
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = GOP
        stream.codec_context.options = {"keyint_min": str(GOP), "sc_threshold": "0", "bf": "0", "preset": "ultrafast"}
        for i in range(seconds * FPS):
            image = np.roll(noise, i * 3, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def packets_of(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as container:
        return [p for p in container.demux(video=0) if p.size]


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "source.mp4")


def config(folder: Path, **overrides: object) -> ClipsConfig:
    return ClipsConfig.model_validate({"enabled": True, "folder": str(folder), "pre_s": 2.0, "post_s": 3.0,
                                       **overrides})


def play(video: Path, recorder: ClipRecorder, triggers: dict[int, str]) -> int:
    """Read the file through the PyAV source feeding ``recorder``; after frame ``n`` (1-based) trigger its event at
    that frame's capture time, as the pipeline would. The frame count."""
    source = PyAvVideoSource(str(video), path=video)
    source.attach_clips(recorder)
    source.open()
    frames = 0
    try:
        while source.read() is not None:
            frames += 1
            if frames in triggers:
                recorder.trigger(time.monotonic(), triggers[frames])
    finally:
        source.close()
    recorder.close()
    return frames


def recorder_for(cfg: ClipsConfig) -> ClipRecorder:
    return ClipRecorder("cam-1", cfg, ClipStore(cfg.folder, cfg.max_bytes, cfg.retention_s))


def test_clip_keeps_the_source_packets_from_the_keyframe_before_its_start(video: Path, tmp_path: Path) -> None:
    recorder = recorder_for(config(tmp_path / "clips"))
    assert play(video, recorder, {138: "e1"}) == SECONDS * FPS  # the event at t = 137 / 25 = 5.48 s

    [clip] = recorder.store.list()
    assert recorder.stats()["clips_written"] == 1 and recorder.stats()["failed"] == 0
    # From the keyframe at or before 5.48 - 2 = 3.48 s (frame 75, t = 3.0) to 5.48 + 3 = 8.48 s (frame 212).
    source = packets_of(video)[75:213]
    got = packets_of(recorder.store.path(clip["id"]))
    assert len(got) == len(source) == 138
    assert [bytes(p) for p in got] == [bytes(p) for p in source]  # remuxed, not re-encoded
    assert got[0].is_keyframe
    assert decoded_frames(recorder.store.path(clip["id"])) == 138  # and it plays
    assert (clip["codec"], clip["reencoded"], clip["event_ids"], clip["stream"]) == ("h264", False, ["e1"], "cam-1")
    assert clip["duration_s"] == pytest.approx(212 / FPS - 3.0)
    data = recorder.store.path(clip["id"]).read_bytes()
    assert clip["bytes"] == len(data)
    sidecar = json.loads(recorder.store.metadata_path(clip["id"]).read_text())
    assert sidecar["sha256"] == hashlib.sha256(data).hexdigest()
    assert sidecar["start_wall"] <= sidecar["end_wall"] and sidecar["start_capture"] <= sidecar["end_capture"]


def test_overlapping_events_make_one_clip_and_apart_ones_two(video: Path, tmp_path: Path) -> None:
    recorder = recorder_for(config(tmp_path / "clips", pre_s=1.0, post_s=1.0))
    # 2.0 s and 2.8 s overlap (2.8 - 1 <= 2.0 + 1); 6.0 s is apart.
    play(video, recorder, {51: "a", 71: "b", 151: "c"})
    clips = sorted(recorder.store.list(), key=lambda c: c["start_wall"])
    assert [c["event_ids"] for c in clips] == [["a", "b"], ["c"]]
    assert recorder.merged == 1 and recorder.started == 2
    first = packets_of(recorder.store.path(clips[0]["id"]))
    assert len(first) == 71  # keyframe 1.0 s (frame 25) to 2.8 + 1 = 3.8 s (frame 95)
    assert decoded_frames(recorder.store.path(clips[1]["id"])) == 51  # 5.0 s (frame 125) to 7.0 s (frame 175)


def test_a_long_run_of_events_is_capped_at_max_clip_s(video: Path, tmp_path: Path) -> None:
    recorder = recorder_for(config(tmp_path / "clips", pre_s=1.0, post_s=1.0, max_clip_s=3.0))
    play(video, recorder, {n: f"e{n}" for n in range(26, 200, 10)})  # an event every 0.4 s from 1.0 s on
    clips = recorder.store.list()
    assert len(clips) >= 3
    for clip in clips:
        assert clip["duration_s"] <= 3.0 + 1.0  # the cap, plus at most one GOP cut before the start
    assert sum(len(c["event_ids"]) for c in clips) == len(range(26, 200, 10))


def test_the_same_event_gets_the_same_clip_reference(tmp_path: Path) -> None:
    recorder = recorder_for(config(tmp_path / "clips"))
    try:
        first = recorder.trigger(10.0, "same")
        assert first is not None and recorder.trigger(10.0, "same") == first
        assert recorder.started == 1 and recorder.merged == 0
        assert first.reference().startswith(f"clip:{first.clip_id}@")
    finally:
        recorder.close()


def test_the_ring_keeps_pre_s_back_to_a_keyframe_and_its_byte_bound() -> None:
    ring = PacketRing(pre_s=2.0, max_bytes=10_000)
    image = np.zeros((10, 10, 3), np.uint8)  # 300 bytes
    for i in range(100):
        ring.append(RawFrame(image, i * 0.1, i * 0.1, 0.0))
    times = [e.t for e in ring]
    assert times[0] == pytest.approx(9.9 - 2.0) and len(times) == 21
    small = PacketRing(pre_s=60.0, max_bytes=3_000)
    for i in range(100):
        small.append(RawFrame(image, i * 0.1, i * 0.1, 0.0))
    assert small.bytes <= 3_000 and len(small) == 10 and small.evicted == 90


def fake_clip(store: ClipStore, clip_id: str, size: int, end_wall: float) -> None:
    store.path(clip_id).write_bytes(b"\0" * size)
    store.commit(clip_id, {"id": clip_id, "stream": "s", "bytes": size, "end_wall": end_wall})


def test_quota_and_retention_delete_the_oldest_and_count(tmp_path: Path) -> None:
    now = time.time()
    store = ClipStore(tmp_path / "clips", max_bytes=10_000, retention_s=3600)
    for i in range(4):
        fake_clip(store, f"c{i}", 3_000, now - 100 + i)
    assert [c["id"] for c in store.list()] == ["c3", "c2", "c1"]  # c0 went for the quota
    assert store.deleted_quota == 1 and not store.path("c0").exists() and not store.metadata_path("c0").exists()
    assert store.total_bytes() <= 10_000
    assert store.enforce(now=now + 3600 - 98.5) == 1  # c1 is now past its retention
    assert [c["id"] for c in store.list()] == ["c3", "c2"] and store.deleted_retention == 1
    reopened = ClipStore(tmp_path / "clips", max_bytes=10_000, retention_s=3600)
    assert [c["id"] for c in reopened.list()] == ["c3", "c2"]


@pytest.mark.parametrize("clip_id", ["../x", "a/b", ".hidden", "", "x" * 129, "a\x00b", "..", "a..b", "/etc/passwd"])
def test_clip_ids_are_names_never_paths(tmp_path: Path, clip_id: str) -> None:
    store = ClipStore(tmp_path / "clips", max_bytes=10_000, retention_s=3600)
    with pytest.raises(ClipError, match="not a clip id"):
        store.path(clip_id)


def test_start_up_deletes_what_an_interrupted_write_left_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a.mp4.part", "b.mp4", "notes.txt", "config.json"):
        (folder / name).write_bytes(b"x")
    store = ClipStore(folder, max_bytes=10_000, retention_s=3600)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "notes.txt"]
    assert store.removed_incomplete == 2 and store.list() == []


def test_disk_full_abandons_the_clip_and_the_recorder_goes_on(video: Path, tmp_path: Path) -> None:
    with contextlib.contextmanager(mounted_tmpfs)(tmp_path / "tiny", 4) as tiny:
        recorder = recorder_for(config(tiny / "clips"))
        filler = fill(tiny)
        source = PyAvVideoSource(str(video), path=video)
        source.attach_clips(recorder)
        source.open()
        for n in range(1, SECONDS * FPS + 1):
            assert source.read() is not None
            if n == 60:
                recorder.trigger(time.monotonic(), "full")
            if n == 150:  # the first clip (to 5.4 s) has failed by now: make room, and the next one is written
                deadline = time.monotonic() + 10
                while recorder.failed == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                filler.unlink()
                recorder.trigger(time.monotonic(), "room")
        source.close()
        recorder.close()
        assert recorder.failed == 1 and "No space left" in (recorder.last_error or "")
        [clip] = recorder.store.list()
        assert clip["event_ids"] == ["room"]
        names = sorted(p.name for p in (tiny / "clips").iterdir())
        assert names == [f"{clip['id']}.json", f"{clip['id']}.mp4"]  # no .part, no torn clip
        assert decoded_frames(recorder.store.path(clip["id"])) > 0


_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from lepton_edge.config.clips import ClipsConfig
    from lepton_edge.runtime.clips import ClipRecorder, ClipStore
    cfg = ClipsConfig(enabled=True, folder=sys.argv[1], pre_s=60, post_s=0, max_clip_s=60,
                      ring_max_bytes=256 * 1024 * 1024)
    recorder = ClipRecorder("cam", cfg, ClipStore(cfg.folder, cfg.max_bytes, cfg.retention_s))
    rng = np.random.default_rng(0)
    for i in range(400):  # noise encodes slowly: the write lasts long enough to be killed in the middle
        recorder.add_frame(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), i / 10, time.time())
    recorder.trigger(39.9, "e")
    recorder.add_frame(np.zeros((240, 320, 3), np.uint8), 41.0, time.time())
    time.sleep(60)
""")


@pytest.mark.integration
def test_a_kill_during_a_write_leaves_only_a_part_file_removed_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(folder)], cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 60
        while not any(folder.glob("*.part")) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.005)
        time.sleep(0.05)
        assert any(folder.glob("*.part")), "the child never started writing"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert [p.suffixes for p in folder.iterdir()] == [[".mp4", ".part"]]  # nothing complete, nothing torn
    store = ClipStore(folder, max_bytes=1 << 30, retention_s=3600)
    assert list(folder.iterdir()) == [] and store.removed_incomplete == 1


def result(image: np.ndarray, capture_ts: float, events: tuple[AnalyticsEvent, ...] = ()) -> Result:
    analytics = AnalyticsFrame(events, {}, {}, Geometry({}, {})) if events else None
    return Result(Detections.empty(), 0, "cam-raw", capture_ts, time.time(), {}, image=image,
                  analytics=analytics)


def test_raw_frames_are_encoded_into_a_playable_clip(tmp_path: Path) -> None:
    cfg = config(tmp_path / "clips", pre_s=1.0, post_s=1.0, raw_max_width=320, raw_fps=10)
    sink = create_clip_sink(cfg, "cam-raw", source=None)
    assert isinstance(sink, ClipSink) and sink.needs_image
    rng = np.random.default_rng(1)
    event = AnalyticsEvent("line_crossed", "L1", 3, 0, "person", 101.0, direction="in")
    for i in range(50):  # 25 fps for 2 s starting at t = 100.0: the sink keeps 10 per second
        image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        t = 100.0 + i / 25
        sink.offer(result(image, t, (event,) if i == 25 else ()))
        time.sleep(0.004)
    sink.offer(result(np.zeros((480, 640, 3), np.uint8), 103.5))  # past the end: the clip is finished
    sink.close()
    [clip] = sink.recorder.store.list()
    path = sink.recorder.store.path(clip["id"])
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (320, 240)
    assert clip["reencoded"] is True and clip["codec"] in ("h264", "mpeg4")
    assert decoded_frames(path) == clip["frames"] >= 15
    assert clip["event_ids"] == [f"cam-raw:line_crossed:3:L1:{101.0:.6f}"]


def test_event_kinds_that_do_not_trigger_start_no_clip(tmp_path: Path) -> None:
    cfg = config(tmp_path / "clips", trigger_kinds=["zone_enter"])
    sink = create_clip_sink(cfg, "cam-raw")
    try:
        event = AnalyticsEvent("appeared", "", 1, 0, "person", 5.0, confidence=0.9)
        assert sink.clip_ref(event, "x") is None
        assert sink.clip_ref(AnalyticsEvent("zone_enter", "z", 1, 0, "person", 5.0), "y") is not None
    finally:
        sink.close()


def test_the_pyav_source_delivers_every_frame_and_is_picked_for_files_and_streams(video: Path) -> None:
    source = clip_source(SourceConfig(uri=str(video)))
    assert isinstance(source, PyAvVideoSource) and not source.live and source.finite
    source.open()
    frames = []
    while (image := source.read()) is not None:
        frames.append(image)
    source.close()
    assert len(frames) == SECONDS * FPS and frames[0].shape == (120, 160, 3)
    assert isinstance(clip_source(SourceConfig(uri="rtsp://cam.example/stream")), PyAvVideoSource)
    for uri in ("synthetic://shapes", "/dev/video0", "csi://0", "frames.npy", "picture.jpg"):
        assert clip_source(SourceConfig(uri=uri)) is None


def test_event_messages_reference_the_clip_that_lists_their_ids(tmp_path: Path) -> None:
    key = analytics_event_key("dev-1")
    sink = create_clip_sink(config(tmp_path / "clips", pre_s=0.5, post_s=0.5), "cam-raw", event_key=key)
    refs = ClipRefs()
    refs.add("cam-raw", sink)
    event = AnalyticsEvent("zone_enter", "door", 7, 0, "person", 100.4)
    with_event = result(np.zeros((48, 64, 3), np.uint8), 100.4, (event,))
    for i in range(20):
        if i == 4:  # the frames before the event are buffered (the offset counts from the first one, at 100.0)
            deadline = time.monotonic() + 10
            while sink.recorder.stats()["ring_entries"] < 4 and time.monotonic() < deadline:
                time.sleep(0.001)
        sink.offer(with_event if i == 4 else result(np.zeros((48, 64, 3), np.uint8), 100.0 + i / 10))
    [message] = analytics_events(with_event, "dev-1", 1, refs)  # the event sink, after the clip sink saw it
    sink.close()
    [clip] = sink.recorder.store.list()
    assert message.analytics is not None and message.analytics.snapshot == f"clip:{clip['id']}@0.400"
    assert clip["event_ids"] == [message.id]
    assert analytics_events(with_event, "dev-1", 1)[0].analytics.snapshot is None  # no clips: null, as before


def test_a_looping_file_read_by_the_frame_reader_cuts_clips_by_the_frames_capture_times(video: Path,
                                                                                        tmp_path: Path) -> None:
    cfg = config(tmp_path / "clips", pre_s=0.5, post_s=0.5)
    source = clip_source(SourceConfig(uri=str(video), loop=True))
    assert source is not None
    sink = create_clip_sink(cfg, "cam-1", source)
    assert not sink.needs_image  # the source feeds its own packets
    reader = FrameReader(source, SourceConfig(uri=str(video), loop=True))
    event = None
    for frame in reader:
        if frame.seq == SECONDS * FPS + 30:  # the second pass, at 1.2 s of the file
            event = AnalyticsEvent("appeared", "", 1, 0, "person", frame.capture_ts, confidence=0.9)
            sink.offer(result(frame.data, frame.capture_ts, (event,)))
        if frame.seq == SECONDS * FPS + 80:
            reader.close()
    sink.close()
    assert reader.opens == 2
    [clip] = sink.recorder.store.list()
    got = packets_of(sink.recorder.store.path(clip["id"]))
    assert [bytes(p) for p in got] == [bytes(p) for p in packets_of(video)[0:43]]  # keyframe 0 (before 0.7 s) to 1.7 s


class TsServer(LoopbackServer):
    """Serves one MPEG-TS file over HTTP, as a camera's HTTP stream would (Annex B H.264, parameters in band)."""

    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        super().__init__()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        req.send_response(200)
        req.send_header("Content-Type", "video/mp2t")
        req.send_header("Content-Length", str(len(self.data)))
        req.end_headers()
        req.wfile.write(self.data)


def decoded_images(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def test_a_network_stream_clip_keeps_its_coded_frames(tmp_path: Path) -> None:
    ts = tmp_path / "camera.ts"
    with av.open(str(make_video(tmp_path / "source.mp4"))) as src, av.open(str(ts), "w", format="mpegts") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.size:
                packet.stream = stream
                out.mux(packet)  # the same coded frames, in the stream's own (Annex B) framing
    server = TsServer(ts)
    try:
        source = clip_source(SourceConfig(uri=server.url("live.ts")))
        assert isinstance(source, PyAvVideoSource) and source.live
        recorder = recorder_for(config(tmp_path / "clips"))
        source.attach_clips(recorder)
        source.open()
        frames = 0
        while source.read() is not None:
            frames += 1
            if frames == 138:
                recorder.trigger(time.monotonic(), "e")
        source.close()
        recorder.close()
    finally:
        server.close()
    [clip] = recorder.store.list()
    assert (frames, clip["codec"], clip["reencoded"], clip["frames"]) == (250, "h264", False, 138)
    got, expected = decoded_images(recorder.store.path(clip["id"])), decoded_images(ts)[75:213]
    assert len(got) == 138 and all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
