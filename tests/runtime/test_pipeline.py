import threading
import time

import cv2
import numpy as np
import pytest

from lepton_edge.config.device import parse_config
from lepton_edge.core.errors import PipelineError, SourceError
from lepton_edge.core.results import Classification, Result
from lepton_edge.device.controller import open_pipeline
from lepton_edge.runtime.assembly import build_pipeline
from lepton_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from lepton_edge.runtime.pipeline import BUFFER_POOL_SIZE
from lepton_edge.runtime.sinks.base import Sink
from tests.support.onnx_models import mean_color_classifier, slow_model

COLORS = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}  # BGR


class ListSink(Sink):
    """A real sink that keeps results in memory, optionally slow."""

    name = "list"

    def __init__(self, delay: float = 0.0, queue_size: int = 1024) -> None:
        super().__init__(queue_size)
        self.delay = delay
        self.results: list[Result] = []

    def write(self, result: Result) -> None:
        if self.delay:
            threading.Event().wait(self.delay)
        self.results.append(result)


def config(model, uri, **extra):
    data = {"model": {"path": str(model)}, "source": {"uri": uri}}
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(data, "test")


@pytest.fixture(scope="module")
def color_model(tmp_path_factory):
    return mean_color_classifier(tmp_path_factory.mktemp("m") / "mean_color.onnx")


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    return slow_model(tmp_path_factory.mktemp("m") / "slow.onnx")


def no_stage_threads_left():
    return not [t for t in threading.enumerate() if t.name.startswith("lepton-")]


def test_offline_folder_is_lossless_ordered_and_correct(tmp_path, color_model):
    names = ["red", "green", "blue"] * 10
    for i, name in enumerate(names):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((48, 64, 3), COLORS[name], np.uint8))
    sink = ListSink()
    pipeline = open_pipeline(config(color_model, str(tmp_path)), extra_sinks=[sink])
    assert pipeline.live is False
    stats = pipeline.run()
    assert stats["results"] == len(names) and stats["drops"] == {}
    assert [r.seq for r in sink.results] == list(range(len(names)))
    for r, want in zip(sink.results, names, strict=True):
        assert isinstance(r.output, Classification)
        assert r.output.labels[r.output.class_ids[0]] == want
        assert set(r.stage_ms) == {"decode", "queue", "preprocess", "infer", "batch", "postprocess"}
        assert r.stage_ms["batch"] == 1
        assert min(r.stage_ms.values()) >= 0, r.stage_ms  # file sources stamp capture time after decoding
        assert r.latency_ms >= r.stage_ms["infer"]
    assert no_stage_threads_left()


def test_live_source_drops_superseded_frames_instead_of_queueing(slow):
    sink = ListSink()
    cfg = config(slow, "synthetic://shapes?fps=1000&width=320&height=240", source={"max_frame_age_ms": 10_000})
    pipeline = open_pipeline(cfg, max_frames=150, extra_sinks=[sink])
    assert pipeline.live is True
    stats = pipeline.run()
    drops = stats["drops"]
    assert drops.get("superseded", 0) > 0, stats
    seqs = [r.seq for r in sink.results]
    assert seqs == sorted(set(seqs))  # in order, no duplicates
    assert stats["frames_in"] == 150
    # every frame was either delivered or dropped, never lost silently (in-flight frames are drained)
    assert stats["results"] + sum(drops.values()) == stats["frames_in"]


def test_frames_older_than_max_age_are_dropped(slow):
    sink = ListSink()
    cfg = config(slow, "synthetic://shapes?fps=1000&width=320&height=240", source={"max_frame_age_ms": 2})
    stats = open_pipeline(cfg, max_frames=100, extra_sinks=[sink]).run()
    # Stale frames go: too old at a stage, or replaced by a newer one while waiting for the model.
    assert stats["drops"].get("too_old", 0) + stats["drops"].get("superseded", 0) > 0
    assert sink.results, "some fresh frames must get through"
    for r in sink.results:
        assert r.age_ms <= 2.0  # the check happens just before inference starts


def test_slow_sink_drops_and_counts_without_slowing_the_pipeline(color_model):
    slow_sink = ListSink(delay=0.05, queue_size=2)
    fast_sink = ListSink()
    cfg = config(color_model, "synthetic://shapes?fps=0&width=64&height=48&frames=60")
    stats = open_pipeline(cfg, extra_sinks=[slow_sink, fast_sink]).run()
    assert stats["results"] == 60 and len(fast_sink.results) == 60
    assert slow_sink.dropped > 0 and stats["drops"]["sink_full"] == slow_sink.dropped
    assert slow_sink.written + slow_sink.dropped == 60


class ExplodingBackend(OnnxRuntimeBackend):
    """A real backend that fails on its fifth inference (error propagation)."""

    calls = 0

    def _infer(self, feeds):
        self.calls += 1
        if self.calls == 5:
            raise RuntimeError("device lost")
        return super()._infer(feeds)


def test_a_failing_stage_stops_everything_and_reaches_the_caller(color_model):
    cfg = config(color_model, "synthetic://shapes?fps=0&width=64&height=48")
    backend = ExplodingBackend(color_model, in_pipeline=True).load()
    pipeline = build_pipeline(cfg, backend)
    with pytest.raises(PipelineError, match="RuntimeError: device lost") as e:
        pipeline.run()
    assert isinstance(e.value.__cause__, RuntimeError)
    assert no_stage_threads_left()


def test_source_error_reaches_the_caller(tmp_path, color_model):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(SourceError, match=r"broken\.mp4"):
        open_pipeline(config(color_model, str(bad))).run()
    assert no_stage_threads_left()


def test_stop_drains_in_flight_frames_and_flushes_sinks(tmp_path, color_model):
    out = tmp_path / "r.jsonl"
    cfg = config(color_model, "synthetic://shapes?fps=100&width=64&height=48",
                 sinks=[{"type": "jsonl", "path": str(out)}])
    pipeline = open_pipeline(cfg).start()
    while pipeline.stats.results < 10:
        threading.Event().wait(0.01)
    pipeline.stop()
    assert pipeline.wait(5.0)
    lines = out.read_text().splitlines()
    assert len(lines) == pipeline.stats.results >= 10
    assert no_stage_threads_left()


def test_recorded_tensors_skip_image_preprocessing(tmp_path, color_model):
    frames = np.zeros((4, 1, 3, 32, 32), np.float32)
    frames[np.arange(4), 0, [0, 1, 2, 0]] = 1.0
    path = tmp_path / "rec.npy"
    np.save(path, frames)
    sink = ListSink()
    stats = open_pipeline(config(color_model, str(path)), extra_sinks=[sink]).run()
    assert stats["results"] == 4
    assert [r.output.labels[r.output.class_ids[0]] for r in sink.results] == ["red", "green", "blue", "red"]


def test_live_changes_apply_at_frame_boundaries(tmp_path, color_model):
    from lepton_edge.config.pipeline import ClassifyConfig
    from lepton_edge.runtime.pipeline import ModelBundle
    from lepton_edge.runtime.postprocess import create_postprocessor
    from lepton_edge.runtime.sources import FrameReader, create_source

    first, second = ListSink(), ListSink()
    cfg = config(color_model, "synthetic://shapes?fps=200&width=64&height=48")
    pipeline = open_pipeline(cfg, extra_sinks=[first]).start()

    def wait_for(sink, n):
        deadline = time.monotonic() + 10
        while len(sink.results) < n and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        assert len(sink.results) >= n

    wait_for(first, 5)
    pipeline.swap_sinks([second])
    closed_at = len(first.results)  # swap_sinks flushed and closed the old sink
    wait_for(second, 5)
    assert len(first.results) == closed_at and not first._thread.is_alive()

    # thresholds / decoder: top_k=1 from the next frame on
    old_backend = pipeline.backend
    pipeline.swap_postprocessor(create_postprocessor(ClassifyConfig(type="classify", top_k=1),
                                                     old_backend.outputs, old_backend.metadata, ()))
    n = len(second.results)
    wait_for(second, n + 5)
    assert all(len(r.output) == 1 for r in second.results[n + 2:])

    # model swap: a second backend takes over; the old one is closed once its frames are done
    new_backend = OnnxRuntimeBackend(color_model, in_pipeline=True).load()
    bundle = ModelBundle(new_backend, pipeline.preprocessor, pipeline.postprocessor)
    pipeline.swap_model(bundle)
    n = len(second.results)
    wait_for(second, n + 5)
    assert old_backend.session is None and new_backend.session is not None

    # source swap: an image folder, red only
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((48, 64, 3), COLORS["red"], np.uint8))
    src_cfg = parse_config({"model": {"path": "x"}, "source": {"uri": str(tmp_path), "loop": True}}, "t").source
    pipeline.swap_source(FrameReader(create_source(src_cfg), src_cfg, pipeline.stop_event), live=False)
    n = len(second.results)
    wait_for(second, n + 10)
    assert second.results[-1].output.labels[second.results[-1].output.class_ids[0]] == "red"
    assert second.results[-1].source_id != first.results[0].source_id
    pipeline.stop()
    assert pipeline.wait(5)
    new_backend.close()
    assert no_stage_threads_left()


class BufferRecordingBackend(OnnxRuntimeBackend):
    """Keeps every input tensor it is given (alive, so that a freed buffer cannot come back at the same id)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fed: list[np.ndarray] = []

    def _infer(self, feeds):
        self.fed.extend(feeds.values())
        return super()._infer(feeds)


@pytest.mark.parametrize("uri", ["synthetic://shapes?fps=0&width=64&height=48", "npy"])
def test_input_tensors_come_from_the_preallocated_pool(tmp_path, color_model, uri):
    if uri == "npy":  # recorded tensors take the tensor_into path instead of the preprocessor
        np.save(tmp_path / "x.npy", np.random.default_rng(0).random((120, 3, 32, 32), dtype=np.float32))
        uri = str(tmp_path / "x.npy")
    backend = BufferRecordingBackend(color_model, in_pipeline=True).load()
    backend.fed.clear()  # the warm-up's own tensors
    stats = build_pipeline(config(color_model, uri), backend, max_frames=120).run()
    assert stats["results"] == 120 and len(backend.fed) == 120
    assert len({id(tensor) for tensor in backend.fed}) <= BUFFER_POOL_SIZE  # a new buffer per frame gives 120
