"""The :class:`RuntimeController`: runs every workload of the device config and changes them live, one at a time.

Each workload (:meth:`DeviceConfig.workload_views`; the single form is one workload named ``main``) has its own
:class:`~lepton_edge.device.workload.WorkloadController`. A new config is compared workload by workload:

- a workload that is gone is stopped (its frames in flight finish, its sinks are flushed and closed);
- a new workload is built, started and health-checked; if it fails it is not kept;
- a changed workload rebuilds only what changed, as a single-workload device did before;
- the others are not touched: their streams, models and sinks keep running.

The outcome is ``applied`` when every changed workload applied; otherwise the worst outcome (``rolled_back``,
then ``rejected``), with each workload's own outcome in :attr:`ApplyResult.workloads`. Workloads that applied
stay applied: one bad camera or model does not hold back the others. :attr:`RuntimeController.config` and
:attr:`version` stay at the last config that applied in full, which is what the agent persists and reports as
active.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from lepton_edge.config.device import DeviceConfig
from lepton_edge.core.errors import LeptonError, error_text
from lepton_edge.device.device_stats import DeviceStats
from lepton_edge.device.model_registry import ModelRegistry
from lepton_edge.device.telemetry import ModelReport, WorkloadReport
from lepton_edge.device.workload import ApplyResult, WorkloadController, open_pipeline, plan_changes
from lepton_edge.runtime.clips.sink import ClipRefs, EventKey, local_event_key
from lepton_edge.runtime.pipeline import Pipeline, PipelineStats

log = logging.getLogger(__name__)

__all__ = ["ApplyResult", "RuntimeController", "open_pipeline", "plan_changes"]

_SEVERITY = {"applied": 0, "rejected": 1, "rolled_back": 2}


class RuntimeController:
    """Builds the workloads of ``config`` (version ``version``; 0 is the local file) and changes them live.

    ``extra_sinks(config)`` returns sinks added to a workload's configured ones (the MQTT results and events
    sinks), called with the workload's own config. ``artifacts`` is the
    :class:`~lepton_edge.device.updates.ArtifactStore` for the model that names ``artifact``. A failure to build
    any workload of the starting config raises (the service cannot run the config it was given).
    """

    def __init__(
        self,
        config: DeviceConfig,
        version: int = 0,
        *,
        max_frames: int | None = None,
        extra_sinks: Callable[[DeviceConfig], list[Any]] | None = None,
        artifacts: Any = None,
        clip_refs: ClipRefs | None = None,
        event_key: EventKey = local_event_key,
    ) -> None:
        self.artifacts = artifacts
        self._clip_refs = clip_refs
        self._event_key = event_key
        self._extra_factory = extra_sinks
        self._max_frames = max_frames
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._pending_lock = threading.Lock()
        self._pending: WorkloadController | None = None
        self._started = False
        self.models = ModelRegistry()
        """The loaded models, each shared by the workloads that run it."""
        self.workloads: dict[str, WorkloadController] = {}
        """The running workloads by name."""
        self.failed: dict[str, WorkloadReport] = {}
        """Workloads stopped by a failure while running, with the error, until a config names them again."""
        self._stats = DeviceStats(lambda: {name: w.stats for name, w in list(self.workloads.items()) if not w.idle})
        name = None
        try:
            for name, view in config.workload_views().items():
                self.workloads[name] = self._workload(view, version)
        except BaseException as e:
            for workload in self.workloads.values():
                workload.stop(1.0)
            if config.multi and isinstance(e, LeptonError):
                raise type(e)(f"workload {name}: {e}") from e  # which camera or model of the device config
            raise
        self.config = config
        """The last config applied in full, as requested (artifact paths unresolved)."""
        self.version = version

    def _workload(self, view: DeviceConfig, version: int) -> WorkloadController:
        return WorkloadController(view, version, max_frames=self._max_frames, extra_sinks=self._extra_factory,
                                  artifacts=self.artifacts, models=self.models, clip_refs=self._clip_refs,
                                  event_key=self._event_key)

    # -- views (RuntimeView for telemetry) -----------------------------------------------------------

    @property
    def idle(self) -> bool:
        """True while no workload runs."""
        return all(w.idle for w in self.workloads.values())

    @property
    def stats(self) -> DeviceStats:
        """Counters of every workload this controller ran, summed (they only grow)."""
        return self._stats

    def workload_stats(self) -> dict[str, PipelineStats]:
        """Each running workload's own counters."""
        return {name: w.stats for name, w in list(self.workloads.items()) if not w.idle}

    @property
    def config_version(self) -> int:
        return self.version

    @property
    def pipelines(self) -> dict[str, Pipeline]:
        """The running pipelines by workload name."""
        return {name: w.pipeline for name, w in list(self.workloads.items()) if w.pipeline is not None}

    @property
    def pipeline(self) -> Pipeline | None:
        """The first running pipeline (the only one of a single-form config); None while idle."""
        return next(iter(self.pipelines.values()), None)

    @property
    def artifact_id(self) -> str | None:
        """Id of the model running: the first workload's (the only one of a single-form config)."""
        return next((w.artifact_id for w in self.workloads.values() if w.artifact_id is not None), None)

    @property
    def extra_sinks(self) -> list[Any]:
        return [sink for w in self.workloads.values() for sink in w.extra_sinks]

    @property
    def source_id(self) -> str | None:
        return next((w.source_id for w in self.workloads.values() if w.source_id is not None), None)

    def source_states(self) -> dict[str, str]:
        """Source id -> reader state of every running workload; empty while idle."""
        states: dict[str, str] = {}
        for workload in list(self.workloads.values()):
            states.update(workload.source_states())
        return states

    def workload_reports(self) -> dict[str, WorkloadReport]:
        """Each running workload's figures and state, for telemetry."""
        reports = {}
        for name, workload in list(self.workloads.items()):
            if workload.idle:
                continue
            states = workload.source_states()
            reports[name] = WorkloadReport(
                stats=workload.stats, stream=workload.source_id or name, model=workload.artifact_id or "unknown",
                source_state=next(iter(states.values()), "starting"))
        return {**reports, **self.failed}

    def model_reports(self) -> dict[str, ModelReport]:
        """Each loaded model's inference totals by model id (what telemetry's ``models`` is keyed by)."""
        runners: dict[str, Any] = {}
        for workload in list(self.workloads.values()):
            pipeline = workload.pipeline
            if pipeline is not None and workload.artifact_id is not None:
                runners.setdefault(workload.artifact_id, pipeline.model.runner)
        return {name: ModelReport(r.frames, r.batches, r.busy_s, len(r.feeds)) for name, r in runners.items()}

    @property
    def source_kind(self) -> str:
        return next((w.source_kind for w in self.workloads.values() if not w.idle), "image")

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> RuntimeController:
        """Start every workload (an idle runtime starts the workloads it gets later on apply)."""
        with self._lock:
            if not self._started:
                self._started = True
                for workload in self.workloads.values():
                    workload.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop every stream, let frames in flight finish and flush the sinks; True if all ended in time.

        Raises the first stage error, like :meth:`Pipeline.wait`."""
        self._stopping.set()
        with self._pending_lock:
            pending = self._pending
        if pending is not None:
            pending.stop(timeout)  # a workload being added: its health check ends now and it is not kept
        for pipeline in self.pipelines.values():
            pipeline.stop()  # all sources stop first, so the workloads drain side by side
        ended, error = True, None
        for workload in list(self.workloads.values()):
            try:
                ended = workload.stop(timeout) and ended
            except LeptonError as e:
                error = error or e
        if self._lock.acquire(timeout=10.0 if timeout is None else timeout):  # an apply in progress has ended
            self._lock.release()
        if error is not None:
            raise error
        return ended

    def abort(self) -> None:
        """Stop at once, discarding frames in flight (a second SIGTERM)."""
        for workload in list(self.workloads.values()):
            workload.abort()

    def wait_finished(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every running workload to end by itself (its source ended or
        ``max_frames`` was reached); True if all did. While idle this just waits.

        A workload whose pipeline fails (a stage raised) is isolated in the multi-stream form: it is stopped and
        reported as failed (telemetry, logs) while the others keep running; the scheduler moves it, and a config
        that names it again starts it again. The single form raises the error (the service exits and systemd
        restarts it), as does a device without an agent whose every workload failed."""
        workloads = [(n, w) for n, w in list(self.workloads.items()) if not w.idle]
        if not workloads:
            self._stopping.wait(timeout)
            return False
        share, finished = timeout / len(workloads), True
        for name, workload in workloads:
            try:
                finished = workload.wait_finished(share) and finished
            except LeptonError as e:
                if not self.config.multi:
                    raise
                self._isolate(name, e)
                if not self.workloads and self.config.agent is None:
                    raise
        return finished and bool(self.workloads)

    def _isolate(self, name: str, error: LeptonError) -> None:
        with self._lock:
            workload = self.workloads.pop(name, None)
        if workload is None:
            return
        log.error("workload %s failed and is stopped; the other workloads keep running: %s", name,
                  error_text(error))
        self.failed[name] = WorkloadReport(
            stats=workload.stats, stream=workload.source_id or name, model=workload.artifact_id or "unknown",
            source_state="failed", state="failed", error=error_text(error))
        with contextlib.suppress(LeptonError):  # the error it stopped with, logged above
            workload.stop(5.0)
        self._stats.retire(workload.stats)

    # -- live changes --------------------------------------------------------------------------------

    def apply(self, new: DeviceConfig, version: int) -> ApplyResult:
        """Change the running workloads to those of ``new``; see the module docstring."""
        with self._lock:
            if self._stopping.is_set():
                return ApplyResult("rejected", ["the runtime is shutting down; send the config again later"])
            views = new.workload_views()
            self.failed.clear()  # a failed workload named again starts again; one left out is gone
            results: dict[str, ApplyResult] = {}
            for name in [n for n in self.workloads if n not in views]:  # first: frees cores, files and cameras
                results[name] = self._remove(name, version)
            for name, view in views.items():
                workload = self.workloads.get(name)
                if workload is None:
                    results[name] = self._add(name, view, version)
                elif _records_clips(workload.config, view):  # its source and clip sink go together: start again
                    removed = self._remove(name, version)
                    added = self._add(name, view, version)
                    results[name] = added if added.outcome != "applied" else ApplyResult(
                        "applied", [], removed.changes | added.changes)
                elif plan_changes(workload.config, view):
                    results[name] = workload.apply(view, version)
            return self._settle(new, version, results)

    def _add(self, name: str, view: DeviceConfig, version: int) -> ApplyResult:
        placeholder = DeviceConfig.model_validate({"device_id": view.device_id, "idle": True})
        workload = self._workload(placeholder, version)
        with self._pending_lock:  # either stop() sees this workload, or this sees the stop
            if self._stopping.is_set():
                return ApplyResult("rejected", ["the runtime is shutting down; send the config again later"])
            self._pending = workload
        try:
            if self._started:
                workload.start()
            result = workload.apply(view, version)
        finally:
            with self._pending_lock:
                self._pending = None
        if result.outcome == "applied" and self._stopping.is_set():
            workload.stop(10.0)
            return ApplyResult("rejected", ["the runtime is shutting down; send the config again later"])
        if result.outcome == "applied":
            self.workloads[name] = workload
        return result

    def _remove(self, name: str, version: int) -> ApplyResult:
        workload = self.workloads.pop(name)
        result = workload.apply(DeviceConfig.model_validate({"device_id": workload.config.device_id, "idle": True}),
                                version)
        self._stats.retire(workload.stats)
        return result

    def _settle(self, new: DeviceConfig, version: int, results: dict[str, ApplyResult]) -> ApplyResult:
        changes = frozenset(f"{name}:{change}" for name, r in results.items() for change in r.changes) \
            if new.multi or self.config.multi else frozenset(c for r in results.values() for c in r.changes)
        failed = {name: r for name, r in results.items() if r.outcome != "applied"}
        if not failed:
            if not results and new != self.config:
                changes = frozenset({"settings"})  # read where used (telemetry interval, health check, ...)
            self.config, self.version = new, version
            if new.multi or len(results) > 1:
                log.info("config version %d applied to %d workload(s): %s", version, len(results),
                         ", ".join(f"{n} ({', '.join(sorted(r.changes)) or 'no change'})"
                                   for n, r in sorted(results.items())) or "no change")
            return ApplyResult("applied", [], changes, results)
        outcome = max((r.outcome for r in failed.values()), key=_SEVERITY.__getitem__)
        errors = [f"workload {name}: {e}" if new.multi or self.config.multi else e
                  for name, r in failed.items() for e in r.errors]
        if len(results) > len(failed):
            log.warning("config version %d %s for %s; applied to %s", version, outcome, ", ".join(sorted(failed)),
                        ", ".join(sorted(set(results) - set(failed))))
        return ApplyResult(outcome, errors, changes, results)  # type: ignore[arg-type]


def _records_clips(old: DeviceConfig, new: DeviceConfig) -> bool:
    """True when a workload's stream changes and it records clips before or after (the clip sink takes the source's
    packets, so both are built again)."""
    if old.source is None or new.source is None or old.source == new.source:
        return False
    return any(s.clips is not None and s.clips.enabled for s in (old.source, new.source))
