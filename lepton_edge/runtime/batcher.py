"""Cross-stream batching: one :class:`ModelRunner` per loaded model runs the inference of every stream that uses it.

Each attached stream (a pipeline) has a :class:`Feed`: a one-deep slot its preprocess thread fills with the next
preprocessed frame. The runner's one thread (``lepton-infer-<name>``) loops:

1. wait until some feed has a frame (and room in its pipeline's output channel: a stream whose postprocessing is
   behind is not served, so its back-pressure never blocks the runner);
2. if fewer than ``min(max_batch, active feeds)`` are ready, wait up to ``batch_timeout_ms`` after the first
   arrival for the others (DeepStream's muxer timeout). A feed that has had no frame for
   ``max(4 * batch_timeout, 3 * its recent frame interval)`` is *stalled* (a dead or reconnecting camera) and is
   not waited for, so a stalled stream never delays the others;
3. take up to ``max_batch`` frames round-robin, starting after the feed served last, so no feed starves when
   there are more feeds than the batch holds;
4. drop frames older than their stream's ``max_frame_age_ms`` (live streams, reason ``too_old``), stack the rest
   into a preallocated batch tensor, run one ``backend.infer`` and split every output along axis 0 into one
   output list per frame with a batch axis of 1 (the decoders run unchanged), then hand each frame back to its
   own pipeline. ``stage_ms["infer"]`` is the batch's time and ``stage_ms["batch"]`` its size.

How a model batches (:attr:`ModelRunner.mode`):

- ``dynamic``: the batch axis is dynamic; a batch runs exactly the frames taken (``max_batch`` from the
  constructor, else the number of attached feeds, at most 16);
- ``fixed``: the batch axis is a fixed B > 1; batches are padded to B and the padded rows ignored;
- ``single``: batch 1, state fed back between frames, constants, several per-frame inputs, or outputs without a
  batch axis: frames run one by one, in round-robin order. State is kept per feed (each stream its own sequence).

Errors: an exception from ``backend.infer`` means the model is broken for every stream that uses it (a runtime
or device fault; a frame whose shape does not fit is already rejected by its own preprocessing): every attached
pipeline is aborted with the error, the runner closes and :attr:`ModelRunner.error` keeps it; the owner reloads
the model. An error in one feed's own state (a state output that cannot be fed back) fails that feed only.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from lepton_edge.config.pipeline import InputsConfig
from lepton_edge.core.errors import ModelError, PipelineError
from lepton_edge.core.results import Frame, now
from lepton_edge.runtime.backends.base import Backend
from lepton_edge.runtime.channel import ChannelClosed
from lepton_edge.runtime.inputs import InputPlan, InputState, plan_inputs

log = logging.getLogger(__name__)

_RUNNERS: weakref.WeakSet[ModelRunner] = weakref.WeakSet()
"""Every runner not yet garbage: closed at interpreter exit (see :func:`_close_runners_at_exit`)."""


@atexit.register
def _close_runners_at_exit() -> None:
    """Stop every inference thread before the interpreter tears the inference libraries down: a daemon thread
    still inside an onnxruntime session at exit aborts the process ("terminate called without an active
    exception"), whatever stopped or did not stop the pipelines before."""
    for runner in list(_RUNNERS):
        with contextlib.suppress(Exception):
            runner.close(timeout=5.0, quiet=True)


MAX_DYNAMIC_BATCH = 16
"""The default batch of a dynamic-batch model: the number of attached feeds, at most this."""

DEFAULT_BATCH_TIMEOUT_MS = 10.0
"""How long a batch waits for the other active feeds after its first frame arrived."""

BatchMode = Literal["dynamic", "fixed", "single"]
Shapes = dict[str, tuple[int, ...]]


@dataclass(slots=True)
class Work:
    """One frame on its way through a pipeline: the frame, its input buffers and what each stage added."""

    frame: Frame
    stage_ms: dict[str, float] = field(default_factory=dict)
    model: Any = None
    """The pipeline's model bundle the frame was preprocessed for (released once the frame is done)."""
    buffer: dict[str, np.ndarray] | None = None
    """The frame's own inputs (the image, or recorded arrays) with a batch axis of 1, from ``pool``."""
    pool: Any = None
    """Where ``buffer`` goes back once inference has read it (a ``Channel``)."""
    transform: Any = None
    outputs: list[np.ndarray] | None = None
    age_ms: float = 0.0
    epoch: tuple[int, int] = (0, 0)
    """(reader generation, source opens): a change means the source opened again, which resets state."""
    decoded_ts: float = 0.0
    """When the source handed the frame over (monotonic), the start of its queue time."""
    arrived_ts: float = 0.0
    """When the frame reached its feed slot (monotonic)."""

    def return_buffer(self) -> None:
        """Give the input buffer back to its pool (once)."""
        buffer, self.buffer = self.buffer, None
        if buffer is not None and self.pool is not None:
            with contextlib.suppress(ChannelClosed):  # an aborted pipeline: nobody needs the buffer any more
                self.pool.put(buffer)


class FeedOwner(Protocol):
    """What the runner needs from the pipeline behind a feed. Called on the runner's thread, without its lock."""

    def stale_after_s(self) -> float | None:
        """Frames older than this are dropped before inference; None: never drop (offline or stateful)."""

    def has_room(self) -> bool:
        """True when a result can be delivered now without blocking."""

    def deliver(self, work: Work) -> None:
        """Take an inferred frame (``work.outputs`` set); must not block."""

    def drop(self, work: Work, reason: str) -> None:
        """Count and release a frame that will not be inferred."""

    def fail(self, error: BaseException) -> None:
        """Inference failed for this stream: stop it with ``error``."""

    def drained(self, feed: Feed) -> None:
        """The feed was closed and its last frame delivered."""


class Feed:
    """One stream's slot at a :class:`ModelRunner`: holds at most one preprocessed frame waiting for inference."""

    def __init__(self, runner: ModelRunner, owner: FeedOwner, name: str, shapes: Shapes) -> None:
        self.runner = runner
        self.owner = owner
        self.name = name
        self.shapes = shapes
        self.item: Work | None = None
        self.closed = False
        self.aborted = False
        self.in_flight = 0
        self.last_put = now()
        self.interval_s: float | None = None
        """Recent time between frames (moving average): how long a silence means the stream stalled."""
        self.served = 0
        self.state = InputState(runner.plan)
        self.state_epoch: tuple[int, int] | None = None
        self.done = threading.Event()
        """Set once the feed is detached (drained, aborted or failed)."""
        self.released = False
        """Detached without being drained (a private runner closed while its pipeline still held the feed open):
        closing it later tells the owner it is drained."""

    def put(self, work: Work) -> None:
        """Hand a preprocessed frame over, waiting while the previous one is still in the slot.

        Raises ChannelClosed when the feed was closed or aborted, or the runner closed."""
        self.runner._put(self, work)

    def close(self) -> None:
        """No more frames: the runner delivers what it holds, then calls ``owner.drained``."""
        self.runner._close_feed(self)

    def abort(self) -> list[Work]:
        """Detach at once; returns the frame still in the slot (not inferred). Frames in flight are discarded by
        the owner (its output channel is aborted)."""
        return self.runner._abort_feed(self)

    def wait_done(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def __repr__(self) -> str:
        return f"Feed({self.name!r} at {self.runner.name!r})"


def batch_mode(plan: InputPlan, backend: Backend) -> tuple[BatchMode, int, str]:
    """How ``backend`` can batch frames fed by ``plan``: (mode, fixed batch or 0, why single)."""
    if plan.state or plan.constants:
        return "single", 1, "the model has constant or state inputs"
    if len(plan.framed) != 1:
        return "single", 1, f"the model has {len(plan.framed)} per-frame inputs"
    spec = plan.specs[plan.framed[0]]
    if not spec.shape:
        return "single", 1, f"input {spec.name!r} has no batch axis"
    dim = spec.shape[0]
    fixed = dim if isinstance(dim, int) and dim > 0 else 0
    if fixed == 1:
        return "single", 1, f"input {spec.name!r} has a fixed batch of 1"
    for out in backend.outputs:
        head = out.shape[0] if out.shape else None
        if head is None or (isinstance(head, int) and head > 0 and head != (fixed or -1)):
            return "single", 1, f"output {out.name!r} {list(out.shape)} has no batch axis that follows the input's"
    return ("fixed", fixed, "") if fixed else ("dynamic", 0, "")


def _signature(buffer: dict[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    return tuple((name, array.shape, array.dtype.str) for name, array in buffer.items())


class ModelRunner:
    """One loaded model shared by every stream that uses it: one inference thread, one feed per stream.

    ``backend`` must be loaded; the runner closes it in :meth:`close`. ``inputs``/``source`` (or a ready ``plan``)
    say how its inputs are fed (:func:`~lepton_edge.runtime.inputs.plan_inputs`). ``max_batch`` applies to a
    dynamic batch axis (default: the number of attached feeds, at most 16); a fixed batch axis sets it, and
    ``single`` models run batch 1 whatever is asked. The thread runs while feeds are attached and starts again
    when one is attached after the last left.
    """

    def __init__(self, backend: Backend, *, inputs: InputsConfig | None = None, source: str = "image",
                 plan: InputPlan | None = None, max_batch: int | None = None,
                 batch_timeout_ms: float = DEFAULT_BATCH_TIMEOUT_MS, name: str | None = None) -> None:
        if max_batch is not None and not 1 <= max_batch <= 1024:
            raise ValueError(f"max_batch must be between 1 and 1024, got {max_batch}")
        if not 0.0 <= batch_timeout_ms <= 10_000.0:
            raise ValueError(f"batch_timeout_ms must be between 0 and 10000, got {batch_timeout_ms}")
        self.backend = backend
        _RUNNERS.add(self)
        self.name = name or backend.name
        self.plan = plan or plan_inputs(backend.inputs, backend.outputs, inputs, source=source, where=self.name)
        self.mode, self._fixed, why = batch_mode(self.plan, backend)
        if self.plan.stateful:
            self.mode, why = "single", "the model feeds state back between frames"
        if self.mode == "single" and max_batch not in (None, 1):
            log.warning("model %s cannot batch (%s): batch.max_batch %d is not used, its streams run one frame at a "
                        "time (lepton-edge inspect says why; lepton-edge build --batch dynamic sets a batch axis where "
                        "the graph allows it)", self.name, why, max_batch)
        self._max_batch = max_batch
        self.batch_timeout_s = batch_timeout_ms / 1000.0
        self.error: BaseException | None = None
        self.batches = 0
        """Backend calls made for frames (warm-up not counted)."""
        self.frames = 0
        """Frames inferred (padding rows not counted)."""
        self.busy_s = 0.0
        """Seconds spent inside the backend for those calls: ``frames / busy_s`` is the model's batched throughput
        here, whatever the streams ask of it (the scheduler learns capacity from it)."""
        self._feeds: list[Feed] = []
        self._next = 0
        self._cond = threading.Condition(threading.RLock())
        self._thread: threading.Thread | None = None
        """The running inference thread; None once it decided to end."""
        self._worker: threading.Thread | None = None
        self._closed = False
        self._batch_buffers: dict[tuple[Any, int], dict[str, np.ndarray]] = {}
        self._warmed: set[tuple[Any, int]] = set()

    # -- sizes ---------------------------------------------------------------------------------

    @property
    def max_batch(self) -> int:
        """Frames one inference takes at most now."""
        if self.mode == "single":
            return 1
        if self.mode == "fixed":
            return self._fixed
        if self._max_batch is not None:
            return self._max_batch
        with self._cond:
            return max(1, min(MAX_DYNAMIC_BATCH, len(self._feeds)))

    @property
    def feeds(self) -> list[Feed]:
        with self._cond:
            return list(self._feeds)

    def _count(self, frames: int, seconds: float) -> None:
        self.batches += 1
        self.frames += frames
        self.busy_s += seconds

    def _stall_s(self, feed: Feed) -> float:
        return max(4.0 * self.batch_timeout_s, 3.0 * (feed.interval_s or 0.0))

    # -- attach / detach -----------------------------------------------------------------------

    def attach(self, owner: FeedOwner, name: str, shapes: Shapes) -> Feed:
        """A new feed for ``owner`` (a pipeline) whose frames have inputs of ``shapes`` (batch axis 1); starts the
        inference thread if it is not running. Raises PipelineError when the runner is closed or failed."""
        with self._cond:
            if self.error is not None:
                raise PipelineError(f"model {self.name!r} failed and cannot take stream {name!r}: {self.error}")
            if self._closed:
                raise PipelineError(f"model {self.name!r} is closed and cannot take stream {name!r}")
            feed = Feed(self, owner, name, shapes)
            self._feeds.append(feed)
            if self._thread is None:
                self._thread = self._worker = threading.Thread(target=self._run, name=f"lepton-infer-{self.name}",
                                                               daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return feed

    def _put(self, feed: Feed, work: Work) -> None:
        superseded = None
        with self._cond:
            if feed.item is not None and getattr(feed.owner, "drops_frames", False):
                # Latest frame wins here too: a live stream's newer frame replaces the one still waiting, so a
                # frame is not inferred a whole batch cycle after it was preprocessed.
                superseded, feed.item = feed.item, None
            while feed.item is not None and not (feed.closed or feed.aborted or self._closed):
                self._cond.wait()
            if feed.closed or feed.aborted or self._closed:
                if superseded is not None:
                    feed.owner.drop(superseded, "superseded")
                raise ChannelClosed
            t = now()
            gap = t - feed.last_put
            feed.interval_s = gap if feed.interval_s is None else 0.8 * feed.interval_s + 0.2 * gap
            feed.last_put = work.arrived_ts = t
            feed.item = work
            self._cond.notify_all()
        if superseded is not None:
            feed.owner.drop(superseded, "superseded")

    def _close_feed(self, feed: Feed) -> None:
        with self._cond:
            feed.closed = True
            released = feed.released
            self._cond.notify_all()
        if released and not feed.aborted:
            feed.owner.drained(feed)  # let go of when this runner closed: nothing is left for it to deliver

    def _abort_feed(self, feed: Feed) -> list[Work]:
        with self._cond:
            feed.aborted = True
            left = [feed.item] if feed.item is not None else []
            feed.item = None
            if feed in self._feeds:
                self._feeds.remove(feed)
            feed.done.set()
            self._cond.notify_all()
        for work in left:
            work.return_buffer()
        return left

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the inference thread to end (it ends when no feed is attached); True if it did."""
        thread = self._worker  # the last one started, which may be ending
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def close(self, timeout: float | None = 10.0, *, quiet: bool = False) -> None:
        """Stop the inference thread and close the backend. Feeds still attached: a closed feed is drained as it
        is (its frames in the slot are dropped), an open one fails with an error naming the model, unless
        ``quiet`` (a private runner whose pipeline moved to another model): then it is only detached."""
        with self._cond:
            self._closed = True
            feeds, self._feeds = self._feeds, []
            self._cond.notify_all()
        self.join(timeout)
        for feed in feeds:
            if quiet and not feed.closed:
                self._detach(feed, None, notify=False)
            else:
                self._detach(feed, None if feed.closed else PipelineError(f"model {self.name!r} was closed"))
        self.backend.close()

    def _detach(self, feed: Feed, error: BaseException | None, *, notify: bool = True) -> None:
        with self._cond:
            if feed in self._feeds:
                self._feeds.remove(feed)
            feed.released = not notify and not feed.closed
            left, feed.item = feed.item, None
            self._cond.notify_all()
        if left is not None:
            feed.owner.drop(left, "model_closed" if error is None else "error")
        try:
            if not notify:
                pass
            elif error is not None:
                feed.owner.fail(error)
            elif not feed.aborted:
                feed.owner.drained(feed)
        finally:
            feed.done.set()

    # -- the inference thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (batch := self._collect()) is not None:
                self._infer(batch)
        except BaseException as e:  # a broken model: every stream that uses it stops with the error
            log.error("model %s failed: %s: %s", self.name, type(e).__name__, e)
            with self._cond:
                self.error = e
                self._closed = True
                feeds, self._feeds = self._feeds, []
                self._thread = None
                self._cond.notify_all()
            for feed in feeds:
                self._detach(feed, e)

    def _ready(self, feed: Feed) -> bool:
        return feed.item is not None and feed.owner.has_room()

    def _collect(self) -> list[tuple[Feed, Work]] | None:
        """The next batch, or None when the thread should end (closed, or no feed left)."""
        while True:
            self._warm()  # a feed attached: the batch size it brings (cheap once warm)
            drained: list[Feed] = []
            with self._cond:
                if self._closed:
                    self._thread = None
                    return None
                for feed in self._feeds:
                    if feed.closed and feed.item is None and feed.in_flight == 0:
                        drained.append(feed)
                if not drained:
                    if not self._feeds:
                        self._thread = None  # attach() starts a new thread
                        return None
                    batch = self._take()
                    if batch:
                        return batch
            for feed in drained:
                self._detach(feed, None)
            if drained:
                continue
            with self._cond:
                if not self._closed and not any(self._ready(f) for f in self._feeds):
                    # Poll while a frame waits for room in its pipeline (nothing notifies when a result is taken).
                    waiting = any(f.item is not None for f in self._feeds)
                    self._cond.wait(0.005 if waiting else 0.5)

    def _take(self) -> list[tuple[Feed, Work]]:
        """Called with the lock held: wait for the batch to fill (up to the timeout), then take it round-robin."""
        ready = [f for f in self._feeds if self._ready(f)]
        if not ready:
            return []
        limit = self.max_batch
        if self.batch_timeout_s > 0 and limit > 1:
            deadline = min(f.item.arrived_ts for f in ready if f.item is not None) + self.batch_timeout_s
            while True:
                t = now()
                waiting = [f for f in self._feeds if not self._ready(f) and not f.closed and f.item is None
                           and f.owner.has_room() and t - f.last_put < self._stall_s(f)]
                if len(ready) >= min(limit, len(ready) + len(waiting)) or t >= deadline or self._closed:
                    break
                self._cond.wait(deadline - t)
                ready = [f for f in self._feeds if self._ready(f)]
            if not ready:  # the waiting frames' feeds were aborted meanwhile
                return []
        count = len(self._feeds)
        start = self._next % count
        order = [self._feeds[(start + k) % count] for k in range(count)]
        chosen = [f for f in order if self._ready(f)][:limit]
        self._next = (self._feeds.index(chosen[-1]) + 1) % count
        batch = []
        for feed in chosen:
            work, feed.item = feed.item, None
            assert work is not None
            feed.in_flight += 1
            feed.served += 1
            batch.append((feed, work))
        self._cond.notify_all()
        return batch

    def _warm(self) -> None:
        """Warm up (and check) every input size attached feeds use at ``max_batch`` (batch 1 is warmed up by each
        pipeline's model bundle, or by load)."""
        if self.mode == "single":
            return
        rows = self.max_batch
        if rows == 1:
            return
        for feed in self.feeds:
            key = (tuple(sorted(feed.shapes.items())), rows)
            if key in self._warmed:
                continue
            self._warmed.add(key)
            feeds = {name: np.zeros((rows, *shape[1:]), self.plan.specs[name].dtype)
                     for name, shape in feed.shapes.items()}
            try:
                for _ in range(max(1, self.backend.warmup_runs)):
                    outputs = self.backend.infer(feeds)
            except Exception as e:  # a "dynamic" batch axis the graph does not honour (a reshape to batch 1)
                log.warning("model %s cannot run a batch of %d (%s: %s); frames run one by one", self.name, rows,
                            type(e).__name__, str(e)[:300])
                self.mode = "single"
                return
            bad = [i for i, o in enumerate(outputs) if np.ndim(o) == 0 or np.shape(o)[0] != rows]
            if bad:
                log.warning("model %s: output(s) %s do not follow the batch axis at batch %d; frames run one "
                            "by one", self.name, [self.backend.outputs[i].name for i in bad], rows)
                self.mode = "single"
                return

    def _infer(self, batch: list[tuple[Feed, Work]]) -> None:
        t = now()
        live: list[tuple[Feed, Work]] = []
        for feed, work in batch:
            limit = feed.owner.stale_after_s()
            if limit is not None and t - work.frame.capture_ts > limit:
                self._finish(feed, work, None, "too_old")
            else:
                work.age_ms = (t - work.frame.capture_ts) * 1000.0
                live.append((feed, work))
        if self.mode == "single":
            for feed, work in live:
                self._infer_one(feed, work)
            return
        groups: dict[Any, list[tuple[Feed, Work]]] = {}
        for feed, work in live:
            assert work.buffer is not None
            groups.setdefault(_signature(work.buffer), []).append((feed, work))
        for signature, items in groups.items():
            if len(items) == 1 and self.mode == "dynamic":
                self._infer_one(*items[0])  # no copy
            else:
                self._infer_stacked(signature, items)

    def _infer_one(self, feed: Feed, work: Work) -> None:
        """One frame alone: its own state, no copy of its inputs."""
        t = now()
        assert work.buffer is not None
        try:
            if feed.state_epoch != work.epoch:
                if feed.state_epoch is not None and self.plan.reset == "on_reopen":
                    feed.state.reset()
                feed.state_epoch = work.epoch
            feeds = feed.state.feeds(work.buffer)
        except Exception as e:
            self._finish(feed, work, e, "error")
            return
        t = now()
        try:
            outputs = self.backend.infer(feeds)
        except BaseException:
            self._lost([(feed, work)])
            raise
        self._count(1, now() - t)
        work.return_buffer()
        try:
            feed.state.update(outputs)
        except Exception as e:
            self._finish(feed, work, e, "error")
            return
        work.outputs = outputs
        work.stage_ms["infer"] = (now() - t) * 1000.0
        work.stage_ms["batch"] = 1
        self._finish(feed, work, None, None)

    def _infer_stacked(self, signature: Any, items: list[tuple[Feed, Work]]) -> None:
        t = now()
        n = len(items)
        rows = self._fixed if self.mode == "fixed" else max(n, self.max_batch)
        key = (signature, rows)
        stacked = self._batch_buffers.get(key)
        if stacked is None:
            stacked = {name: np.zeros((rows, *shape[1:]), np.dtype(dtype)) for name, shape, dtype in signature}
            self._batch_buffers[key] = stacked
        for i, (_, work) in enumerate(items):
            assert work.buffer is not None
            for name, array in work.buffer.items():
                stacked[name][i] = array[0]
            work.return_buffer()
        run = rows if self.mode == "fixed" else n
        t = now()
        try:
            outputs = self.backend.infer({name: array[:run] for name, array in stacked.items()})
            if outputs:  # an empty list: an inference a model on probation failed (see device/probation.py)
                bad = [i for i, o in enumerate(outputs) if np.ndim(o) == 0 or np.shape(o)[0] != run]
                if bad:
                    raise ModelError(f"model {self.name!r}: outputs {[self.backend.outputs[i].name for i in bad]} "
                                     f"do not have the batch of {run} along axis 0; it cannot batch")
        except BaseException:
            self._lost(items)
            raise
        self._count(n, now() - t)
        ms = (now() - t) * 1000.0
        for i, (feed, work) in enumerate(items):
            work.outputs = [o[i:i + 1] for o in outputs] if outputs else outputs
            work.stage_ms["infer"] = ms
            work.stage_ms["batch"] = n
            self._finish(feed, work, None, None)

    def _lost(self, items: list[tuple[Feed, Work]]) -> None:
        """Release the frames of an inference that raised (their pipelines are stopped with the error)."""
        for feed, work in items:
            work.return_buffer()
            try:
                feed.owner.drop(work, "error")
            finally:
                self._release(feed)

    def _release(self, feed: Feed) -> None:
        with self._cond:
            feed.in_flight -= 1
            self._cond.notify_all()

    def _finish(self, feed: Feed, work: Work, error: BaseException | None, drop: str | None) -> None:
        """Hand a frame back to its pipeline (delivered, dropped, or its feed failed)."""
        work.return_buffer()
        try:
            if error is not None:
                feed.owner.drop(work, drop or "error")
                log.error("stream %s at model %s failed: %s", feed.name, self.name, error)
                self._detach(feed, error)
            elif drop is not None:
                feed.owner.drop(work, drop)
            elif not feed.aborted:
                feed.owner.deliver(work)
            else:
                feed.owner.drop(work, "aborted")
        finally:
            self._release(feed)
