"""The pipeline of one stream (one workload): ``source -> preprocess -> model runner -> postprocess (-> tracking,
analytics) -> sinks``. The pipeline has a source, a preprocess and a postprocess thread; inference runs on the
model's :class:`~lepton_edge.runtime.batcher.ModelRunner`, its own (batch 1) or one shared with the other streams
of the same model, which batches their frames (docs/streams.md).

- Live sources feed a one-slot *latest-frame-wins* channel: when inference is slower than the
  camera, the older frame is dropped (``superseded``), never queued. Frames older than
  ``max_frame_age_ms`` when a stage picks them up are dropped (``too_old``).
- Offline sources (files, folders, unpaced generators) block instead and drop nothing.
- Input tensors come from a small pool of preallocated buffers; nothing is allocated per frame on the
  preprocess/infer path once the frame size is stable.
- Every result carries its capture time and the milliseconds spent in each stage.
- Cascades (classifiers on crops of the detections; ``stage_ms["cascade"]``), tracking and analytics (a few
  hundred microseconds a frame; ``stage_ms["track"]``), when configured, run in the postprocess thread right after
  decoding, so every sink sees classified, tracked results; without them nothing runs.
- Models with several inputs are fed through an :class:`~lepton_edge.runtime.inputs.InputPlan`: the image or the
  recorded arrays per frame, constants, and state fed back from the previous frame's outputs. A stateful model
  runs every frame in order: its pipeline drops nothing, even from a live source (logged), and its state goes
  back to zeros when the source opens again (``model.inputs.state_reset``).
- ``stop()`` drains in-flight frames and closes the sinks; a stage that raises aborts every other
  stage at once and the error reaches the caller of ``wait()``/``run()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lepton_edge.config.pipeline import InputsConfig
from lepton_edge.core.errors import LeptonError, ModelError, PipelineError
from lepton_edge.core.metrics import DropCounter, LatencyWindow
from lepton_edge.core.results import Result, now
from lepton_edge.runtime.backends.base import Backend
from lepton_edge.runtime.batcher import Feed, ModelRunner, Work
from lepton_edge.runtime.cascade import CascadeStage
from lepton_edge.runtime.channel import CLOSED, Channel, ChannelClosed
from lepton_edge.runtime.input_size import feed_shape
from lepton_edge.runtime.inputs import InputPlan, fill_recorded, plan_inputs
from lepton_edge.runtime.preprocess import Preprocessor, Transform
from lepton_edge.runtime.tracking import TrackingStage

log = logging.getLogger(__name__)

STAGES = ("decode", "queue", "preprocess", "infer", "postprocess", "e2e", "frame_age")
"""Latency series kept per pipeline: per-stage times plus end-to-end latency and frame age at inference."""

BUFFER_POOL_SIZE = 3
"""Input tensors in flight: one being filled, one waiting for the backend, one inside it."""


class PipelineStats:
    """Counters and latency windows, written by the stage threads and read by anyone."""

    def __init__(self, window: int = 4096) -> None:
        self.latency = {name: LatencyWindow(window) for name in STAGES}
        self.drops = DropCounter()
        self.frames_in = 0
        self.results = 0
        self.detections = 0
        self.started_at = now()
        self.last_result_at: float | None = None
        self.source_state = "idle"

    def snapshot(self) -> dict[str, Any]:
        t = now()
        return {
            "time": t,
            "uptime_s": t - self.started_at,
            "frames_in": self.frames_in,
            "results": self.results,
            "detections": self.detections,
            "drops": self.drops.snapshot(),
            "latency_ms": {name: w.summary() for name, w in self.latency.items()},
            "source_state": self.source_state,
        }




def _fixed_or_one(dim: object) -> int:
    return dim if isinstance(dim, int) and dim > 0 else 1


def tensor_into(data: np.ndarray, out: np.ndarray) -> None:
    """Copy a recorded sensor tensor into an input buffer, adding the batch axis if it is missing."""
    if data.shape == out.shape[1:]:
        data = data[None]
    if data.shape != out.shape:
        raise ModelError(f"recorded tensor of shape {data.shape} does not fit model input {out.shape}")
    np.copyto(out, data, casting="unsafe")


def _frame_size(data: Any) -> tuple[int, int]:
    """(width, height) of an image frame; (1, 1) for other data."""
    if isinstance(data, np.ndarray) and data.ndim >= 2:
        return int(data.shape[1]), int(data.shape[0])
    return 1, 1


def _is_image(data: Any) -> bool:
    return isinstance(data, np.ndarray) and data.ndim == 3 and data.dtype == np.uint8 and data.shape[2] in (1, 3)


class ModelBundle:
    """One pipeline's model: the :class:`ModelRunner` that runs its inference (its own, or one shared with other
    streams), the pipeline's pre/postprocessing, and its own pool of input buffers (batch axis 1).

    ``ModelBundle(backend, preprocessor, postprocessor, inputs)`` makes a private runner of batch 1 around a
    loaded ``backend``; ``ModelBundle.on(runner, preprocessor, postprocessor)`` uses a shared one. The buffers
    have the shape the preprocessor resolved (:mod:`lepton_edge.runtime.input_size`), and the backend is warmed up
    at that shape if load did not already. Recorded inputs with dynamic dims (audio samples) take the size of the
    first frame; those are warmed up by it.

    The pipeline swaps bundles as one unit at a frame boundary; a retired bundle is closed once the last frame
    that used it has left the pipeline: its pool, and its runner with the backend if the runner is its own (a
    shared runner is its owner's to close).
    """

    def __init__(self, backend: Backend | None, preprocessor: Preprocessor | None,
                 postprocessor: Callable[[list[np.ndarray], Transform], Any],
                 inputs: InputsConfig | None = None, plan: InputPlan | None = None, *,
                 runner: ModelRunner | None = None) -> None:
        if runner is None:
            if backend is None:
                raise ValueError("a model bundle needs a backend or a runner")
            plan = plan or plan_inputs(backend.inputs, backend.outputs, inputs,
                                       source="image" if preprocessor else "tensor", where=backend.name)
            runner = ModelRunner(backend, plan=plan, max_batch=1, name=backend.name)
            self.owns_runner = True
        else:
            self.owns_runner = False
        self.runner = runner
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        plan = self.plan
        if preprocessor is not None and plan.image is None:
            raise ModelError(f"model {runner.name!r} is fed recorded tensors (its runner was planned for a tensor "
                             "source); an image stream cannot share it")
        self.input_name = plan.framed[0]
        backend = self.backend
        if len(backend.inputs) > 1:
            log.info("model inputs: %s", "; ".join(f"{name}: {role}" for name, role in plan.describe().items()))
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, np.dtype] = {}
        sized = True
        for name in plan.framed:
            spec = plan.specs[name]
            if preprocessor is not None and plan.image is not None and name == plan.image.name:
                # Image inputs: the size the preprocessor resolved.
                shapes[name], dtypes[name] = tuple(preprocessor.shape), preprocessor.dtype
                continue
            # Recorded tensors: the model's (metadata) size; other dynamic dims wait for the first frame.
            shapes[name] = tuple(feed_shape(spec, backend.metadata) or (_fixed_or_one(d) for d in spec.shape))
            dtypes[name] = spec.dtype
            sized = sized and (len(spec.shape) == 4 or all(isinstance(d, int) and d > 0 for d in spec.shape[1:]))
            if runner.mode == "fixed":
                shapes[name] = (1, *shapes[name][1:])  # one frame; the runner stacks a batch of the fixed size
        self.shapes = shapes
        if sized and runner.mode != "fixed":  # a fixed batch is warmed up by the runner at its size
            warm = {**shapes, **{n: v.shape for n, v in plan.constants.items()},
                    **{link.input.name: link.shape for link in plan.state}}
            backend.warm_for(warm, dict(plan.constants))
        self.pool: Channel[dict[str, np.ndarray]] = Channel(BUFFER_POOL_SIZE, "block")
        for _ in range(BUFFER_POOL_SIZE):
            self.pool.put({name: np.zeros(shapes[name], dtypes[name]) for name in plan.framed})
        self._lock = threading.Lock()
        self._in_flight = 0
        self._retired = False

    @classmethod
    def on(cls, runner: ModelRunner, preprocessor: Preprocessor | None,
           postprocessor: Callable[[list[np.ndarray], Transform], Any]) -> ModelBundle:
        """A pipeline's model on a shared ``runner`` (its backend and input plan), with the pipeline's own
        pre/postprocessing."""
        return cls(None, preprocessor, postprocessor, runner=runner)

    @property
    def backend(self) -> Backend:
        return self.runner.backend

    @backend.setter
    def backend(self, backend: Backend) -> None:
        """Replace the backend the runner calls (a guarded one while the model is on probation)."""
        self.runner.backend = backend

    @property
    def plan(self) -> InputPlan:
        return self.runner.plan

    def acquire(self) -> None:
        with self._lock:
            self._in_flight += 1

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            close = self._retired and self._in_flight == 0
        if close:
            self.close()

    def retire(self) -> None:
        """Close now if idle, else when the last in-flight frame is done."""
        with self._lock:
            self._retired = True
            close = self._in_flight == 0
        if close:
            self.close()

    def close(self) -> None:
        self.pool.abort()
        if self.owns_runner:
            self.runner.close(quiet=True)


class Pipeline:
    """Runs frames from ``reader`` through the model into ``sinks``.

    ``reader`` is an iterable of :class:`Frame` with a ``close()`` (a ``FrameReader``); ``live``
    selects the drop policy. Build one from a config with :func:`lepton_edge.runtime.assembly.build_pipeline`.

    Inference runs on a :class:`~lepton_edge.runtime.batcher.ModelRunner`: with ``backend`` a private one of
    batch 1; with ``runner`` (and no backend) a runner shared with other pipelines, which batches their frames.
    The pipeline's own threads are the source, preprocess and postprocess; its frames wait in a feed of the
    runner between preprocessing and inference.
    """

    def __init__(
        self,
        reader: Any,
        backend: Backend | None = None,
        postprocessor: Callable[[list[np.ndarray], Transform], Any] | None = None,
        sinks: Sequence[Any] = (),
        *,
        preprocessor: Preprocessor | None,
        live: bool,
        max_frame_age_ms: float = 500.0,
        max_frames: int | None = None,
        latency_window: int = 4096,
        stats: PipelineStats | None = None,
        stop_event: threading.Event | None = None,
        inputs: InputsConfig | None = None,
        tracking: TrackingStage | None = None,
        cascade: CascadeStage | None = None,
        runner: ModelRunner | None = None,
        name: str | None = None,
    ) -> None:
        if postprocessor is None:
            raise ValueError("a pipeline needs a postprocessor")
        if (backend is None) == (runner is None):
            raise ValueError("give a pipeline either a backend (its own model) or a runner (a shared one)")
        if runner is not None:
            if inputs is not None:
                raise ValueError("a shared runner plans the model's inputs; give them to the runner")
            self.model = ModelBundle.on(runner, preprocessor, postprocessor)
        else:
            self.model = ModelBundle(backend, preprocessor, postprocessor, inputs)
        self.name = name or str(getattr(reader, "source_id", None) or "stream")
        self.tracking = tracking
        self.cascade = cascade
        self.reader = reader
        self.sinks = list(sinks)
        self.live = live
        self.max_age_s = max_frame_age_ms / 1000.0
        self.max_frames = max_frames
        self.stats = stats or PipelineStats(latency_window)
        self._stop = stop_event or threading.Event()
        self._frames: Channel[Work] = Channel(1, "latest") if live else Channel(2, "block")
        self._apply_drop_policy()
        self._feed: Feed | None = None
        self._fed_model: ModelBundle | None = None
        self._abort_event = threading.Event()
        self._outputs: Channel[Work] = Channel(2, "block")
        self._sinks_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()

    @property
    def backend(self) -> Backend:
        return self.model.backend

    @property
    def preprocessor(self) -> Preprocessor | None:
        return self.model.preprocessor

    @property
    def postprocessor(self) -> Callable[[list[np.ndarray], Transform], Any]:
        return self.model.postprocessor

    @property
    def keep_image(self) -> bool:
        return any(getattr(s, "needs_image", False) for s in self.sinks)

    # -- live changes, applied at frame boundaries ----------------------------------------------

    def swap_model(self, bundle: ModelBundle, retire_old: bool = True) -> ModelBundle:
        """Run the next frames on ``bundle`` and return the previous bundle.

        The old model is closed once its frames are done, unless ``retire_old`` is False: then the caller
        keeps it alive (to swap it back after a failed health check) and must ``retire()`` it later.
        """
        old, self.model = self.model, bundle
        self._apply_drop_policy()
        if retire_old:
            old.retire()
        return old

    def swap_postprocessor(self, postprocessor: Callable[[list[np.ndarray], Transform], Any]) -> None:
        """New thresholds or decoder for the current model, from the next frame on."""
        self.model.postprocessor = postprocessor

    def swap_tracking(self, tracking: TrackingStage | None) -> None:
        """Track (and count) with ``tracking`` from the next frame on; None turns tracking off. Tracks start
        again."""
        self.tracking = tracking

    def swap_cascade(self, cascade: CascadeStage | None) -> None:
        """Classify crops with ``cascade`` from the next frame on; None turns cascades off."""
        self.cascade = cascade

    def swap_sinks(self, sinks: Sequence[Any]) -> None:
        """Deliver to ``sinks`` from the next result on; the old sinks are flushed and closed."""
        with self._sinks_lock:
            old, self.sinks = self.sinks, list(sinks)
        for sink in old:
            if sink not in self.sinks:
                sink.close()

    def swap_source(self, reader: Any, live: bool) -> None:
        """Read from ``reader`` from now on; the old reader is closed (its frames in flight finish)."""
        old, self.reader = self.reader, reader
        self.live = live
        self._apply_drop_policy()
        old.close()

    @property
    def drops_frames(self) -> bool:
        """True when stale frames are dropped: a live source and a model without state (state needs every
        frame, in order)."""
        return self.live and not self.model.plan.stateful

    def _apply_drop_policy(self) -> None:
        self._frames.policy = "latest" if self.drops_frames else "block"
        if self.live and self.model.plan.stateful:
            log.warning(
                "the model feeds state back between frames (%s): frames from this live source are not dropped "
                "(no latest-frame-wins, no max_frame_age_ms); when inference is slower than the source, frames "
                "wait and latency grows. Set model.inputs.state_reset: every_frame to drop frames again",
                ", ".join(f"{link.output} -> {link.input.name}" for link in self.model.plan.state),
            )

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def stop_event(self) -> threading.Event:
        """Set to stop the source; the rest of the pipeline drains and ends."""
        return self._stop

    def start(self) -> Pipeline:
        if self._threads:
            raise RuntimeError("pipeline already started")
        self.stats.started_at = now()
        for name, target in (
            ("source", self._source_loop),
            ("preprocess", self._preprocess_loop),
            ("postprocess", self._postprocess_loop),
        ):
            t = threading.Thread(target=self._guard, args=(name, target), name=f"lepton-{name}-{self.name}",
                                 daemon=True)
            self._threads.append(t)
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Graceful stop: no new frames; frames in flight finish and sinks are flushed."""
        self._stop.set()

    def abort(self, error: BaseException | None = None) -> None:
        """Immediate stop: in-flight frames are discarded."""
        if error is not None:
            with self._error_lock:
                if self._error is None:
                    self._error = error
        self._abort_event.set()
        self._stop.set()
        for ch in (self._frames, self._outputs):
            ch.abort()
        feed = self._feed
        if feed is not None:
            feed.abort()
        self.model.pool.abort()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every stage to end. Returns False on timeout; raises the first stage error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                return False
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if self._threads and self.model.owns_runner and not self.model.runner.join(left):
            return False  # its private inference thread ends with the last frame
        if self._error is not None:
            err = self._error
            if isinstance(err, LeptonError):
                raise err
            raise PipelineError(f"pipeline stage failed: {type(err).__name__}: {err}") from err
        return True

    def run(self, duration_s: float | None = None, *, tick: Callable[[], None] | None = None,
            tick_interval_s: float = 5.0) -> dict[str, Any]:
        """Start, run until the source ends, ``duration_s`` passes or ``stop()``; return the stats.

        ``tick`` is called every ``tick_interval_s`` on the calling thread (periodic logging).
        """
        self.start()
        deadline = None if duration_s is None else now() + duration_s
        next_tick = now() + tick_interval_s
        try:
            while not self.wait(0.1):
                t = now()
                if deadline is not None and t >= deadline:
                    self.stop()
                    deadline = None
                if tick is not None and t >= next_tick:
                    next_tick = t + tick_interval_s
                    tick()
        except BaseException:
            self.abort()
            self.wait(5.0)
            raise
        return self.stats.snapshot()

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.wait(10.0)

    # -- stages ------------------------------------------------------------------------------

    def _guard(self, name: str, target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as e:  # every failure must reach the caller, never hang the others
            log.error("stage %s failed: %s: %s", name, type(e).__name__, e)
            self.abort(e)

    def _note_source_state(self) -> None:
        state = getattr(self.reader, "state", None)
        self.stats.source_state = getattr(state, "value", str(state)) if state is not None else "streaming"

    def _source_loop(self) -> None:
        try:
            generation = 0
            while not self._stop.is_set():
                reader = self.reader
                generation += 1
                for work in self._timed(reader, generation):
                    self.stats.frames_in += 1
                    self._note_source_state()
                    try:
                        if self._frames.put(work) is not None:
                            self.stats.drops.add("superseded")
                    except ChannelClosed:
                        return
                    if self.max_frames is not None and self.stats.frames_in >= self.max_frames:
                        self._stop.set()
                    if self._stop.is_set() or self.reader is not reader:
                        break
                if self.reader is reader:  # the source ended (not swapped)
                    break
        finally:
            self.reader.close()
            self._note_source_state()
            self._frames.close()

    def _timed(self, reader: Any, generation: int = 0):
        """Frames from ``reader`` wrapped in work items that record the decode time and the source's epoch."""
        frames = iter(reader)
        while True:
            t0 = now()
            frame = next(frames, None)
            if frame is None:
                return
            work = Work(frame, epoch=(generation, getattr(reader, "opens", 0)), decoded_ts=now())
            work.stage_ms["decode"] = (work.decoded_ts - t0) * 1000.0
            self.stats.latency["decode"].add(work.stage_ms["decode"])
            yield work

    def _drop(self, work: Work, reason: str) -> None:
        self.stats.drops.add(reason)
        work.return_buffer()
        if work.model is not None:
            work.model.release()
            work.model = None

    # -- the feed's owner (called by the model runner's thread) --------------------------------

    def stale_after_s(self) -> float | None:
        return self.max_age_s if self.drops_frames else None

    def has_room(self) -> bool:
        return len(self._outputs) < self._outputs.capacity

    def deliver(self, work: Work) -> None:
        self.stats.latency["frame_age"].add(work.age_ms)
        self.stats.latency["infer"].add(work.stage_ms["infer"])
        try:
            self._outputs.put(work)
        except ChannelClosed:  # aborted
            self._drop(work, "aborted")

    def drop(self, work: Work, reason: str) -> None:
        self._drop(work, reason)

    def fail(self, error: BaseException) -> None:
        log.error("pipeline %s: inference failed: %s: %s", self.name, type(error).__name__, error)
        self.abort(error)

    def drained(self, feed: Feed) -> None:
        if feed is self._feed:
            self._outputs.close()

    def _feed_for(self, model: ModelBundle) -> Feed | None:
        """The feed of ``model``'s runner: after a model swap the old feed is drained first (frames stay in order),
        then a feed on the new runner is attached. None when the pipeline was aborted meanwhile."""
        feed = self._feed
        if feed is not None and self._fed_model is model:
            return feed
        if feed is not None:
            self._feed = None  # its drained() does not end the pipeline
            feed.close()
            while not feed.wait_done(0.1):
                if self._aborted():
                    return None
        if self._aborted():
            return None
        self._feed, self._fed_model = model.runner.attach(self, self.name, model.shapes), model
        return self._feed

    def _aborted(self) -> bool:
        return self._abort_event.is_set()

    def _preprocess_loop(self) -> None:
        try:
            while (work := self._frames.get()) is not CLOSED:
                t = now()
                if self.drops_frames and t - work.frame.capture_ts > self.max_age_s:
                    self._drop(work, "too_old")
                    continue
                # Time waiting between the end of decode and the start of preprocessing. Not capture_ts + decode:
                # file sources stamp capture_ts after decoding, live ones before.
                work.stage_ms["queue"] = (t - work.decoded_ts) * 1000.0
                model = self.model
                buffer = model.pool.get()
                if buffer is CLOSED:  # the pipeline was aborted
                    return
                model.acquire()
                work.model, work.buffer, work.pool = model, buffer, model.pool
                data = work.frame.data
                pre, plan = model.preprocessor, model.plan
                if pre is not None and plan.image is not None and _is_image(data):
                    work.transform = pre(data, buffer[plan.image.name])
                elif plan.image is not None and not isinstance(data, dict):
                    tensor_into(data, buffer[plan.image.name])  # a recorded tensor at an image model's input
                else:
                    fill_recorded(plan, data, buffer)
                work.stage_ms["preprocess"] = (now() - t) * 1000.0
                self.stats.latency["queue"].add(work.stage_ms["queue"])
                self.stats.latency["preprocess"].add(work.stage_ms["preprocess"])
                feed = self._feed_for(model)
                if feed is None:
                    self._drop(work, "aborted")
                    return
                try:
                    feed.put(work)
                except ChannelClosed:
                    self._drop(work, "aborted")
                    return
        finally:
            if self._feed is not None:
                self._feed.close()
            else:
                self._outputs.close()

    def _postprocess_loop(self) -> None:
        stats = self.stats
        try:
            while (work := self._outputs.get()) is not CLOSED:
                t = now()
                frame, model = work.frame, work.model
                assert model is not None and work.outputs is not None
                transform = work.transform
                if transform is None:
                    data = frame.data
                    h, w = data.shape[:2] if isinstance(data, np.ndarray) and data.ndim >= 2 else (1, 1)
                    transform = Transform.identity(w, h)
                try:
                    output = model.postprocessor(work.outputs, transform)
                finally:
                    model.release()
                done = now()
                work.stage_ms["postprocess"] = (done - t) * 1000.0
                if (cascade := self.cascade) is not None:
                    output = cascade(output, frame.data)
                    t, done = done, now()
                    work.stage_ms["cascade"] = (done - t) * 1000.0
                analytics = None
                if (tracking := self.tracking) is not None:
                    output, analytics = tracking(output, frame.capture_ts, frame.source_id, _frame_size(frame.data))
                    t, done = done, now()
                    work.stage_ms["track"] = (done - t) * 1000.0
                with self._sinks_lock:
                    sinks = self.sinks
                    result = Result(
                        output=output,
                        seq=frame.seq,
                        source_id=frame.source_id,
                        capture_ts=frame.capture_ts,
                        wall_time=frame.wall_time,
                        stage_ms=work.stage_ms,
                        done_ts=done,
                        age_ms=work.age_ms,
                        image=frame.data if self.keep_image else None,
                        analytics=analytics,
                    )
                    stats.latency["postprocess"].add(work.stage_ms["postprocess"])
                    stats.latency["e2e"].add(result.latency_ms)
                    stats.results += 1
                    stats.detections += len(output)
                    stats.last_result_at = done
                    for sink in sinks:
                        if not sink.offer(result):
                            stats.drops.add("sink_full")
        finally:
            with self._sinks_lock:
                sinks = self.sinks
            for sink in sinks:
                try:
                    sink.close()
                except Exception as e:  # one sink failing to flush must not stop the others
                    log.error("sink %s failed to close: %s", getattr(sink, "name", sink), e)
