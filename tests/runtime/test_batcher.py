"""Cross-stream batching: several pipelines on one ModelRunner, with real onnxruntime and real ONNX models."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lepton_edge.config.pipeline import InputsConfig
from lepton_edge.core.errors import LeptonError, PipelineError
from lepton_edge.core.results import Frame, Result, now
from lepton_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from lepton_edge.runtime.batcher import ModelRunner
from lepton_edge.runtime.pipeline import Pipeline
from lepton_edge.runtime.sinks.base import Sink
from tests.support.onnx_models import slow_model

SIZE = 8


def mean_model(path, batch: int | str = "N"):
    """logits[n, c] = mean of input[n, c]: every frame's answer is its own fill value, whatever else is in the
    batch. ``batch``: a fixed batch size or a dynamic axis name."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["logits"], axes=[2, 3], keepdims=0)], "mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class RecordingBackend(OnnxRuntimeBackend):
    """The real onnxruntime backend, noting the batch of every call; ``fail_after`` calls it raises."""

    def __init__(self, path, fail_after: int | None = None, max_batch: int | None = None) -> None:
        super().__init__(path, in_pipeline=True)
        self.batches: list[int] = []
        self.fail_after = fail_after
        self.max_batch = max_batch

    def _infer(self, feeds):
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise RuntimeError("device lost")
        if self.max_batch is not None and next(iter(feeds.values())).shape[0] > self.max_batch:
            raise RuntimeError("out of memory")  # an engine whose profile stops at max_batch
        self.batches.append(next(iter(feeds.values())).shape[0])
        return super()._infer(feeds)


class Reader:
    """Frames of one stream: frame i of stream k is filled with ``k * 1000 + i``. ``fps`` paces it (a live
    source); ``block_after`` frames it blocks until ``release`` is set (a stalled camera)."""

    def __init__(self, k: int, frames: int, fps: float | None = None, block_after: int | None = None,
                 shape: tuple[int, ...] = (3, SIZE, SIZE)) -> None:
        self.k, self.frames, self.fps, self.block_after, self.shape = k, frames, fps, block_after, shape
        self.source_id = f"cam{k}"
        self.captured: dict[int, float] = {}
        self.release = threading.Event()
        self.stop = threading.Event()

    def __iter__(self):
        next_t = now()
        for i in range(self.frames):
            if self.stop.is_set():
                return
            if self.block_after is not None and i >= self.block_after:
                self.release.wait()
                return
            if self.fps:
                next_t += 1.0 / self.fps
                time.sleep(max(0.0, next_t - now()))
            frame = Frame(np.full(self.shape, self.k * 1000 + i, np.float32), i, self.source_id)
            self.captured[i] = frame.capture_ts
            yield frame

    def close(self) -> None:
        self.stop.set()


class ListSink(Sink):
    name = "list"

    def __init__(self) -> None:
        super().__init__(4096)
        self.results: list[Result] = []

    def write(self, result: Result) -> None:
        self.results.append(result)


def first_logit(outputs, transform):
    assert outputs[0].shape[0] == 1  # the batch axis of 1 the decoders expect
    return [float(outputs[0][0, 0])]


def stream(runner, reader, live=False, **kw):
    sink = ListSink()
    pipeline = Pipeline(reader, runner=runner, postprocessor=first_logit, sinks=[sink], preprocessor=None,
                        live=live, name=reader.source_id, **kw)
    return pipeline, sink


def lepton_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("lepton-")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    return {"dynamic": mean_model(d / "dyn.onnx"), "fixed4": mean_model(d / "fixed4.onnx", 4),
            "batch1": mean_model(d / "b1.onnx", 1), "slow": slow_model(d / "slow.onnx", size=SIZE, work=2)}


def check_stream(reader, sink, frames):
    assert [r.seq for r in sink.results] == list(range(frames)), reader.source_id
    for r in sink.results:
        assert r.source_id == reader.source_id
        assert r.capture_ts == reader.captured[r.seq]
        assert r.output == [reader.k * 1000 + r.seq], (reader.source_id, r.seq, r.output)


@pytest.mark.parametrize(("kind", "mode"), [("dynamic", "dynamic"), ("fixed4", "fixed")])
def test_frames_of_several_streams_run_in_one_batch_and_return_to_their_own_stream(models, kind, mode):
    backend = RecordingBackend(models[kind]).load()
    runner = ModelRunner(backend, source="tensor", name=kind)
    assert runner.mode == mode
    readers = [Reader(k, 40) for k in range(3)]
    pipes = [stream(runner, r) for r in readers]
    for p, _ in pipes:
        p.start()
    for p, _ in pipes:
        assert p.wait(20)
    for reader, (p, sink) in zip(readers, pipes, strict=True):
        check_stream(reader, sink, 40)
        assert p.stats.snapshot()["drops"] == {}
    batches = [r.stage_ms["batch"] for _, sink in pipes for r in sink.results]
    assert max(batches) == 3 and max(backend.batches) == (4 if mode == "fixed" else 3)
    assert sum(1 for b in batches if b > 1) > len(batches) / 2, batches  # most frames were batched
    if mode == "fixed":
        assert set(backend.batches) == {4}  # padded to the fixed batch
    assert runner.join(5) and not lepton_threads()
    runner.close()


def test_batch_of_one_serves_streams_round_robin(models):
    backend = RecordingBackend(models["slow"]).load()  # a fixed batch of 1, slower than the sources
    runner = ModelRunner(backend, source="tensor", name="slow")
    assert runner.mode == "single" and runner.max_batch == 1
    readers = [Reader(k, 100_000, fps=400) for k in range(4)]
    pipes = [stream(runner, r, live=True, max_frame_age_ms=10_000) for r in readers]
    for p, _ in pipes:
        p.start()
    time.sleep(2.0)
    for p, _ in pipes:
        p.stop()
    for p, _ in pipes:
        assert p.wait(10)
    counts = [len(sink.results) for _, sink in pipes]
    assert min(counts) >= 0.8 * (sum(counts) / len(counts)), counts
    assert max(backend.batches) == 1
    assert sum(p.stats.drops.snapshot().get("superseded", 0) for p, _ in pipes) > 0  # the model was the bottleneck
    for _, sink in pipes:
        seqs = [r.seq for r in sink.results]
        assert seqs == sorted(set(seqs))  # in order, each once
    runner.close()


def test_a_live_streams_newer_frame_replaces_the_one_waiting_for_the_model(tmp_path):
    """Latest frame wins at the model too: while four live streams wait their turn at a slow model, each stream's
    newest preprocessed frame replaces the one waiting, so a frame is not inferred a whole round after it was
    taken (its age at inference stays well under the round of four inferences it would otherwise wait)."""
    path = slow_model(tmp_path / "slower.onnx", size=16, work=6)  # a few ms per frame: slower than the sources
    backend = RecordingBackend(path).load()
    runner = ModelRunner(backend, source="tensor", name="slower")
    pipes = [stream(runner, Reader(k, 100_000, fps=400, shape=(3, 16, 16)), live=True, max_frame_age_ms=10_000)
             for k in range(4)]
    for p, _ in pipes:
        p.start()
    time.sleep(2.0)
    for p, _ in pipes:
        p.stop()
    for p, _ in pipes:
        assert p.wait(10)
    done = [r for _, sink in pipes for r in sink.results[5:]]
    age = float(np.median([r.age_ms - r.stage_ms["queue"] - r.stage_ms["preprocess"] for r in done]))
    infer = float(np.median([r.stage_ms["infer"] for r in done]))
    assert age < 2.0 * infer, (age, infer)  # waiting for a whole round would be about 3 inferences
    runner.close()


def test_a_stalled_stream_does_not_delay_the_others(models):
    backend = RecordingBackend(models["dynamic"]).load()
    runner = ModelRunner(backend, source="tensor", batch_timeout_ms=100.0, name="dyn")
    stalled = Reader(9, 100_000, fps=100, block_after=3)
    healthy = [Reader(k, 100_000, fps=100) for k in range(2)]
    pipes = [stream(runner, r, live=True) for r in [stalled, *healthy]]
    for p, _ in pipes:
        p.start()
    time.sleep(1.5)
    for p, _ in pipes:
        p.stop()
    stalled.release.set()
    for p, _ in pipes:
        assert p.wait(10)
    assert len(pipes[0][1].results) == 3
    for reader, (_, sink) in zip(healthy, pipes[1:], strict=True):
        late = [r.latency_ms for r in sink.results if r.capture_ts - reader.captured[0] > 0.6]
        assert len(late) > 40, len(late)
        # Waiting for the stalled stream would cost the whole 100 ms batch timeout on every batch.
        assert np.percentile(late, 90) < 50.0, sorted(late)[-10:]
    runner.close()


def test_streams_attach_and_detach_while_the_others_run(models):
    backend = RecordingBackend(models["dynamic"]).load()
    runner = ModelRunner(backend, source="tensor", name="dyn")
    a, b = Reader(0, 100_000, fps=100), Reader(1, 100_000, fps=100)
    (pa, sa), (pb, sb) = stream(runner, a, live=True), stream(runner, b, live=True)
    pa.start()
    time.sleep(0.4)
    assert len(runner.feeds) == 1 and runner.max_batch == 1
    pb.start()
    time.sleep(0.6)
    assert len(runner.feeds) == 2 and runner.max_batch == 2
    pb.stop()
    assert pb.wait(5)
    n = len(sa.results)
    time.sleep(0.4)
    assert len(runner.feeds) == 1 and len(sa.results) > n + 20  # a kept running while b came and went
    assert len(sb.results) > 20 and max(r.stage_ms["batch"] for r in sa.results) == 2
    pa.stop()
    assert pa.wait(5)
    for reader, sink in ((a, sa), (b, sb)):
        seqs = [r.seq for r in sink.results]
        assert seqs == sorted(set(seqs))
        assert all(r.output == [reader.k * 1000 + r.seq] for r in sink.results)
    assert runner.join(5) and not lepton_threads()
    runner.close()


def test_an_inference_error_stops_every_stream_of_the_model(models):
    backend = RecordingBackend(models["dynamic"], fail_after=5).load()
    runner = ModelRunner(backend, source="tensor", name="dyn")
    pipes = [stream(runner, Reader(k, 1000)) for k in range(2)]
    for p, _ in pipes:
        p.start()
    for p, _ in pipes:
        with pytest.raises(LeptonError, match="device lost"):
            p.wait(10)
    assert isinstance(runner.error, RuntimeError)
    with pytest.raises(PipelineError, match="'dyn' failed"):
        stream(runner, Reader(5, 10))[0].start().wait(5)
    assert not lepton_threads()
    runner.close()


def batch_one_inside_model(path):
    """Declares a dynamic batch axis but reshapes to batch 1 inside, as some exports do: it cannot batch."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
         helper.make_node("Reshape", ["m", "one"], ["logits"])], "reshape1",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor("one", TensorProto.INT64, [2], [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_model_that_cannot_batch_runs_frames_one_by_one(tmp_path):
    backend = RecordingBackend(batch_one_inside_model(tmp_path / "r1.onnx")).load()
    runner = ModelRunner(backend, source="tensor", name="r1")
    assert runner.mode == "single"  # onnxruntime infers the output's batch of 1
    readers = [Reader(k, 20) for k in range(2)]
    pipes = [stream(runner, r) for r in readers]
    for p, _ in pipes:
        p.start()
    for p, _ in pipes:
        assert p.wait(10)
    assert set(backend.batches) == {1}
    for reader, (_, sink) in zip(readers, pipes, strict=True):
        check_stream(reader, sink, 20)
    runner.close()


def test_a_model_that_fails_at_its_batch_size_falls_back_to_one_by_one(models, caplog):
    backend = RecordingBackend(models["dynamic"], max_batch=1).load()
    runner = ModelRunner(backend, source="tensor", name="dyn")
    assert runner.mode == "dynamic"  # as declared; the warm-up at the batch size finds out
    readers = [Reader(k, 20) for k in range(3)]
    pipes = [stream(runner, r) for r in readers]
    for p, _ in pipes:
        p.start()
    for p, _ in pipes:
        assert p.wait(10)
    assert runner.mode == "single" and "cannot run a batch of" in caplog.text
    for reader, (_, sink) in zip(readers, pipes, strict=True):
        check_stream(reader, sink, 20)
    runner.close()


def accumulator_model(path):
    """total = state + x, fed back as the next state: a running sum per sequence."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["state", "x"], ["total"]), helper.make_node("Identity", ["total"], ["stateN"])],
        "accumulate",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [1, 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [1, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_shared_stateful_model_keeps_each_streams_own_state(tmp_path):
    backend = RecordingBackend(accumulator_model(tmp_path / "acc.onnx")).load()
    inputs = InputsConfig.model_validate({"state": [{"output": "stateN", "input": "state"}]})
    runner = ModelRunner(backend, inputs=inputs, source="tensor", max_batch=8, name="acc")
    assert runner.mode == "single" and runner.max_batch == 1
    readers = [Reader(k, 30, shape=(1,)) for k in (1, 2)]
    pipes = [stream(runner, r) for r in readers]
    for p, _ in pipes:
        p.start()
    for p, _ in pipes:
        assert p.wait(10)
    for reader, (_, sink) in zip(readers, pipes, strict=True):
        # frame i holds k * 1000 + i: the running sum of this stream's frames only
        want = np.cumsum([reader.k * 1000 + i for i in range(30)])
        assert [r.seq for r in sink.results] == list(range(30))
        assert [r.output[0] for r in sink.results] == want.tolist()
    runner.close()


def test_the_private_runner_of_a_backend_pipeline_batches_nothing(models):
    backend = RecordingBackend(models["dynamic"]).load()
    reader, sink = Reader(0, 20), ListSink()
    pipeline = Pipeline(reader, backend, first_logit, [sink], preprocessor=None, live=False)
    assert pipeline.model.runner.max_batch == 1 and pipeline.backend is backend
    pipeline.run()
    check_stream(reader, sink, 20)
    assert set(backend.batches) == {1}
    assert not lepton_threads()


EXIT_SCRIPT = """
import sys, time
from pathlib import Path
from lepton_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from lepton_edge.runtime.batcher import ModelRunner
from lepton_edge.runtime.pipeline import Pipeline
from tests.runtime.test_batcher import ListSink, Reader
runner = ModelRunner(OnnxRuntimeBackend(Path(sys.argv[1]), in_pipeline=True).load(), source="tensor", name="slow")
sink = ListSink()
Pipeline(Reader(0, 100_000, fps=200, shape=(3, 32, 32)), runner=runner, postprocessor=lambda o, t: o, sinks=[sink],
         preprocessor=None, live=True).start()
while len(sink.results) < 20:
    time.sleep(0.05)
"""


def test_the_process_exits_cleanly_while_a_model_is_inferring(tmp_path):
    """A process that exits with a pipeline still running (no stop) must not abort: an inference thread inside
    onnxruntime while the interpreter tears it down ends in "terminate called without an active exception"."""
    model = slow_model(tmp_path / "slow32.onnx", size=32, work=16)
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(script), str(model)], cwd=root, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0 and "terminate called" not in done.stderr, done.stderr[-2000:]
