"""The :class:`WorkloadController`: owns the pipeline of one workload and applies its new configs live.

A workload's config is a single-form :class:`DeviceConfig` (see :meth:`DeviceConfig.workload_views`); the
device's :class:`~lepton_edge.device.controller.RuntimeController` holds one controller per workload. A new
config is compared with the running one and only what changed is rebuilt, at a frame boundary:

- postprocess (thresholds, top-k, labels, task) -> a new postprocessor for the loaded model;
- sinks -> new sinks (the old ones are flushed and closed);
- tracking or analytics -> a new tracking step (tracks and counters start again; the source keeps running);
- source -> a new reader (offline files are opened once first, so a bad file is rejected up front);
- model, backend or preprocess -> the new model is loaded first (a failure rejects the config and
  changes nothing), swapped in, and watched on live frames for ``agent.health_check.window_s``: it must
  produce ``min_frames`` results without an error, or the previous model (kept loaded) is swapped back.

Everything that can fail is prepared before anything is swapped, so a rejected config leaves the
pipeline exactly as it was. One change is applied at a time.

An idle config (``idle: true``) runs no pipeline. Applying one stops the running pipeline (frames in
flight finish, sinks are flushed and closed, the backend is closed); applying a workload config to an
idle runtime builds a new pipeline (a load failure rejects the config and the runtime stays idle), starts
it and health-checks it like a swapped model (a failure stops it again: rolled back to idle). Counters
(:attr:`WorkloadController.stats`) continue across pipelines, so rates and the watchdog see one series.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from lepton_edge.config.device import DeviceConfig
from lepton_edge.core.errors import ConfigError, LeptonError, error_text
from lepton_edge.core.metrics import LatencyWindow
from lepton_edge.device.model_registry import RELOAD_MODEL_FIELDS, ModelRegistry
from lepton_edge.device.probation import Probation, health_check
from lepton_edge.device.updates import ArtifactStore
from lepton_edge.engines.engine_cache import load_backend
from lepton_edge.fleet.protocol import model_id
from lepton_edge.runtime.assembly import (
    build_pipeline,
    make_cascade,
    make_postprocessor,
    make_preprocessor,
    make_tracking,
)
from lepton_edge.runtime.cascade import CascadeStage
from lepton_edge.runtime.clips.sink import ClipRefs, EventKey, local_event_key
from lepton_edge.runtime.pipeline import STAGES, ModelBundle, Pipeline, PipelineStats
from lepton_edge.runtime.sinks import create_sinks
from lepton_edge.runtime.sources import FrameReader, create_source

log = logging.getLogger(__name__)


Outcome = Literal["applied", "rejected", "rolled_back"]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What applying a config did (to one workload, or to the device)."""

    outcome: Outcome
    errors: list[str] = field(default_factory=list)
    changes: frozenset[str] = frozenset()
    """Parts that changed: model, postprocess, source, frame_age, sinks, results, tracking, latency_window, settings;
    ``idle`` when the pipeline was stopped, ``pipeline`` when an idle runtime got one."""
    workloads: dict[str, ApplyResult] = field(default_factory=dict)
    """Per workload the device changed (added, changed or removed), what happened to it."""


def open_pipeline(config: DeviceConfig, *, max_frames: int | None = None, extra_sinks: list[Any] | None = None,
                  stats: PipelineStats | None = None) -> Pipeline:
    """The unstarted pipeline of ``config``, its model loaded through the engine cache."""
    return build_pipeline(config, load_backend(config), max_frames=max_frames, extra_sinks=extra_sinks, stats=stats)


def plan_changes(old: DeviceConfig, new: DeviceConfig) -> frozenset[str]:
    """The parts of the runtime that must change to go from ``old`` to ``new``."""
    if old.idle or new.idle:
        if old.idle and new.idle:
            return frozenset() if old == new else frozenset({"settings"})
        return frozenset({"idle" if new.idle else "pipeline"})
    assert old.model is not None and new.model is not None
    assert old.source is not None and new.source is not None
    changes: set[str] = set()
    if (
        any(getattr(old.model, f) != getattr(new.model, f) for f in RELOAD_MODEL_FIELDS)
        or old.backend != new.backend
        or old.preprocess != new.preprocess
    ):
        changes.add("model")
    elif old.model != new.model or old.postprocess != new.postprocess:
        changes.add("postprocess")
    if old.source.model_copy(update={"max_frame_age_ms": 0}) != new.source.model_copy(
        update={"max_frame_age_ms": 0}
    ):
        changes.add("source")
    if old.source.max_frame_age_ms != new.source.max_frame_age_ms:
        changes.add("frame_age")
    if old.sinks != new.sinks:
        changes.add("sinks")
    if old.tracking != new.tracking or old.analytics != new.analytics:
        changes.add("tracking")
    if old.cascade != new.cascade:
        changes.add("cascade")
    old_results = old.agent.results if old.agent else None
    new_results = new.agent.results if new.agent else None
    if old_results != new_results:
        changes.add("results")
    if old.pipeline.latency_window != new.pipeline.latency_window:
        changes.add("latency_window")
    if not changes and old != new:
        changes.add("settings")  # read where used (telemetry interval, health check, stats interval)
    return frozenset(changes)


@dataclass(slots=True)
class _Prepared:
    bundle: ModelBundle | None = None
    postprocessor: Any = None
    reader: Any = None
    live: bool = False
    sinks: list[Any] | None = None
    extra: list[Any] | None = None
    tracking: Any = None
    cascade: CascadeStage | None = None
    artifact_id: str | None = None

    def discard(self, release: Callable[[ModelBundle], None], release_cascade: Callable[[Any], None]) -> None:
        """Release what was prepared but never used (``release`` lets go of a bundle's model, ``release_cascade`` of
        a cascade's classifiers)."""
        if self.bundle is not None:
            release(self.bundle)
        release_cascade(self.cascade)
        if self.reader is not None:
            self.reader.close()
        _close_sinks((self.sinks or []) + (self.extra or []))


def check_offline_source(config: DeviceConfig) -> None:
    """Open and close ``config``'s source if it is offline (a file), so that a bad one is rejected before
    anything changes. Live sources are not opened: they reconnect by their own policy."""

    assert config.source is not None
    source = create_source(config.source)
    if not source.live:
        source.open()
        source.close()


def _close_sinks(sinks: list[Any]) -> None:
    for sink in sinks:
        try:
            sink.close()
        except Exception as e:
            log.warning("closing unused sink %s failed: %s", getattr(sink, "name", sink), e)


def artifact_id_of(config: DeviceConfig) -> str | None:
    """Id of the model a config runs: ``sha256:<hex>`` of its artifact, else the model file name; None when
    idle."""
    if config.model is None:
        return None
    ref = config.model.artifact
    return model_id(str(config.model.path), ref.sha256 if ref is not None else None)


def with_artifact(artifacts: ArtifactStore | None, config: DeviceConfig) -> tuple[DeviceConfig, bool]:
    """``config`` with ``model.path`` at its artifact, staged (downloaded, verified) and activated.

    Returns the config and whether the active artifact changed (then a failure rolls it back). An
    artifact already in a slot is not downloaded again. Configs without an artifact pass unchanged.
    """
    ref = config.model.artifact if config.model is not None else None
    if ref is None or config.model is None:
        return config, False
    if artifacts is None:
        raise ConfigError(
            "model.artifact is set but this runtime has no artifact store; run it under the device agent "
            "(agent section in the config)"
        )
    before = artifacts.current()
    path = artifacts.activate(artifacts.stage(ref))
    resolved = config.model_copy(update={"model": config.model.model_copy(update={"path": path})})
    return resolved, path != before


def rollback_artifact(artifacts: ArtifactStore) -> None:
    """Undo the activation of a failed artifact: back to the previous slot, or to no artifact at all
    when it was the first one (the local model file keeps running)."""
    try:
        if artifacts.previous() is None:
            artifacts.deactivate()
        else:
            artifacts.rollback()
    except Exception as e:
        log.error("artifact rollback failed: %s", error_text(e))


class WorkloadController:
    """Builds the pipeline for ``config`` (version ``version``; 0 is the local file) and changes it live.

    ``extra_sinks(config)`` returns sinks added to the configured ones (the MQTT results sink); it is
    called again when ``agent.results`` changes and for every pipeline built after an idle period.
    ``artifacts`` is the :class:`~lepton_edge.device.updates.ArtifactStore` used when the config names
    ``model.artifact``: the artifact is staged and activated before the model is loaded, and rolled back
    to the previous slot when the load or the health check fails. An idle ``config`` builds nothing.
    """

    def __init__(
        self,
        config: DeviceConfig,
        version: int = 0,
        *,
        max_frames: int | None = None,
        extra_sinks: Callable[[DeviceConfig], list[Any]] | None = None,
        artifacts: Any = None,
        models: ModelRegistry | None = None,
        clip_refs: ClipRefs | None = None,
        event_key: EventKey = local_event_key,
    ) -> None:
        self.artifacts = artifacts
        self._clip_refs = clip_refs
        self._event_key = event_key
        self._models = models if models is not None else ModelRegistry()
        self._extra_factory = extra_sinks
        self._max_frames = max_frames
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._started = False
        self._stats = PipelineStats(config.pipeline.latency_window)
        self._stats.source_state = "idle"
        self._extra: list[Any] = []
        self.pipeline: Pipeline | None = None
        """The running pipeline; None while idle."""
        if not config.idle:
            resolved, _ = with_artifact(self.artifacts, config)
            self._extra = extra_sinks(config) if extra_sinks else []
            self.pipeline = self._build(resolved, self._extra)
        self.config = config
        """The config running, as requested (``model.path`` unresolved when it names an artifact)."""
        self.version = version
        self._artifact_id = artifact_id_of(config)

    # -- views (RuntimeView for telemetry) -----------------------------------------------------------

    @property
    def idle(self) -> bool:
        """True while no pipeline runs (an idle config, or a workload still being loaded after one)."""
        return self.pipeline is None

    @property
    def stats(self) -> PipelineStats:
        """Counters of every pipeline this controller ran (they continue across idle periods)."""
        return self._stats

    @property
    def config_version(self) -> int:
        return self.version

    @property
    def artifact_id(self) -> str | None:
        return None if self.pipeline is None else self._artifact_id

    @property
    def extra_sinks(self) -> list[Any]:
        """The sinks added to the configured ones (see ``extra_sinks`` in the constructor)."""
        return list(self._extra)

    @property
    def source_id(self) -> str | None:
        pipeline = self.pipeline
        if pipeline is None:
            return None
        configured = self.config.source.id if self.config.source is not None else None
        return str(getattr(pipeline.reader, "source_id", None) or configured or "source")

    def source_states(self) -> dict[str, str]:
        """Source id -> reader state; empty while idle (no source is attached)."""
        pipeline, source_id = self.pipeline, self.source_id
        if pipeline is None or source_id is None:
            return {}
        state = getattr(pipeline.reader, "state", None)
        value = getattr(state, "value", None) or pipeline.stats.source_state
        return {source_id: str(value)}

    @property
    def source_kind(self) -> str:
        reader = self.pipeline.reader if self.pipeline is not None else None
        return str(getattr(getattr(reader, "source", None), "kind", "image"))

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> WorkloadController:
        """Start the pipeline (an idle runtime starts the pipelines it gets later on apply)."""
        with self._lock:
            if not self._started:
                self._started = True
                if self.pipeline is not None:
                    self.pipeline.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop the source, let frames in flight finish and flush the sinks; True if it ended in time
        (``timeout`` None: wait as long as that takes).

        Raises the first stage error, like :meth:`Pipeline.wait`.
        """
        self._stopping.set()
        pipeline = self.pipeline
        try:
            if pipeline is None:
                return True
            pipeline.stop()
            return pipeline.wait(timeout)
        finally:
            with self._lock:  # an apply in progress ends quickly once _stopping is set
                if self.pipeline is not None:
                    self._release_model(self.pipeline.model)
                    self._release_cascade(self.pipeline.cascade)

    def abort(self) -> None:
        """Stop at once, discarding frames in flight (a second SIGTERM)."""
        pipeline = self.pipeline
        if pipeline is not None:
            pipeline.abort()

    def wait_finished(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the running pipeline to end by itself (its source ended or
        ``max_frames`` was reached); True if it did. A pipeline stopped because the runtime went idle does
        not count; while idle this just waits. Raises the running pipeline's stage error."""
        pipeline = self.pipeline
        if pipeline is None:
            self._stopping.wait(timeout)
            return False
        try:
            ended = pipeline.wait(timeout)
        except LeptonError:
            if self.pipeline is not pipeline:  # stopped for an idle config; apply() logged its error
                return False
            raise
        # apply() detaches a pipeline before stopping it, so one still attached ended by itself
        return ended and self.pipeline is pipeline

    # -- live changes --------------------------------------------------------------------------------

    def apply(self, new: DeviceConfig, version: int) -> ApplyResult:
        """Change the running pipeline to ``new``; see the module docstring for what restarts."""
        with self._lock:
            if self._stopping.is_set():
                return ApplyResult("rejected", ["the runtime is shutting down; send the config again later"])
            changes = set(plan_changes(self.config, new))
            if new.idle:
                if self.pipeline is not None:
                    self._go_idle()
                return self._applied(new, version, changes)
            if self.pipeline is None:
                return self._leave_idle(new, version, changes)
            activated = False
            try:
                resolved = new
                if "model" in changes:
                    resolved, activated = with_artifact(self.artifacts, new)
                prepared = self._prepare(resolved, changes)
            except Exception as e:
                if activated:
                    rollback_artifact(self.artifacts)
                return self._rejected(version, e, changes)
            if prepared.bundle is not None:
                errors = self._swap_model_checked(prepared.bundle, new)
                prepared.bundle = None  # owned by the pipeline now (or closed by the swap back)
                if errors:
                    prepared.discard(self._release_model, self._release_cascade)
                    if activated:
                        rollback_artifact(self.artifacts)
                    return self._rolled_back(version, errors, changes)
                self._artifact_id = prepared.artifact_id
            self._commit(prepared, new, changes)
            return self._applied(new, version, changes)

    def _applied(self, new: DeviceConfig, version: int, changes: set[str]) -> ApplyResult:
        self.config = new
        self.version = version
        log.info("config version %d applied (%s)", version, ", ".join(sorted(changes)) or "no change")
        return ApplyResult("applied", [], frozenset(changes))

    @staticmethod
    def _rejected(version: int, error: BaseException, changes: set[str]) -> ApplyResult:
        log.warning("config version %d rejected: %s", version, error_text(error))
        return ApplyResult("rejected", [error_text(error)], frozenset(changes))

    @staticmethod
    def _rolled_back(version: int, errors: list[str], changes: set[str]) -> ApplyResult:
        log.warning("config version %d rolled back: %s", version, "; ".join(errors))
        return ApplyResult("rolled_back", errors, frozenset(changes))

    def _build(self, resolved: DeviceConfig, extra: list[Any]) -> Pipeline:
        """The pipeline of ``resolved`` on its model's shared runner."""
        assert resolved.source is not None
        runner = self._models.acquire(resolved, create_source(resolved.source).kind)
        classifiers: dict[str, Any] = {}
        try:
            classifiers = self._models.acquire_classifiers(resolved)
            return build_pipeline(resolved, runner=runner, max_frames=self._max_frames, extra_sinks=extra,
                                  stats=self._stats, classifiers=classifiers, clip_refs=self._clip_refs,
                                  event_key=self._event_key)
        except BaseException:
            self._models.release_classifiers(classifiers)
            self._models.release(runner)
            raise

    def _release_cascade(self, cascade: CascadeStage | None) -> None:
        """Let go of ``cascade``'s classifiers (closed when no other cascade runs them)."""
        if cascade is not None:
            self._models.release_classifiers({step.name: step.classifier for step in cascade.steps})

    def _release_model(self, bundle: ModelBundle) -> None:
        """Let go of ``bundle`` and its model (closed when no other workload runs it)."""
        bundle.retire()
        if not bundle.owns_runner:
            self._models.release(bundle.runner)

    def _go_idle(self, timeout: float = 10.0) -> None:
        """Stop the pipeline: frames in flight finish, sinks are flushed and closed, the backend is closed."""
        pipeline = self.pipeline
        assert pipeline is not None
        self.pipeline = None  # detached first: wait_finished() must not take this stop for the source's end
        if self._clip_refs is not None:
            self._clip_refs.remove(str(getattr(pipeline.reader, "source_id", "")))
        self._retire(pipeline, timeout)
        if not self._started:  # its stages never ran, so nothing closed its sinks
            _close_sinks(pipeline.sinks)
        self._extra = []
        self._stats.latency = {name: LatencyWindow(self.config.pipeline.latency_window) for name in STAGES}
        self._stats.source_state = "idle"

    def _retire(self, pipeline: Pipeline, timeout: float) -> None:
        pipeline.stop()
        try:
            if not pipeline.wait(timeout):
                log.warning("the pipeline did not drain within %.0f s; aborting it", timeout)
                pipeline.abort()
                pipeline.wait(timeout)
        except LeptonError as e:
            log.warning("the stopped pipeline ended with an error: %s", error_text(e))
        finally:
            self._release_model(pipeline.model)
            self._release_cascade(pipeline.cascade)

    def _leave_idle(self, new: DeviceConfig, version: int, changes: set[str]) -> ApplyResult:
        """Build, start and health-check a pipeline for ``new``; on any failure stay idle."""
        assert new.source is not None
        activated = False
        extra: list[Any] = []
        try:
            check_offline_source(new)
            resolved, activated = with_artifact(self.artifacts, new)
            extra = self._extra_factory(new) if self._extra_factory else []
            pipeline = self._build(resolved, extra)
        except Exception as e:
            _close_sinks(extra)
            if activated:
                rollback_artifact(self.artifacts)
            return self._rejected(version, e, changes)
        self._stats.latency = {name: LatencyWindow(new.pipeline.latency_window) for name in STAGES}
        if self._started:
            probation = Probation(pipeline.model)
            pipeline.start()
            errors = health_check(probation, pipeline, new, self._stopping)
            if errors:
                self._retire(pipeline, 10.0)
                self._stats.source_state = "idle"
                if activated:
                    rollback_artifact(self.artifacts)
                return self._rolled_back(version, errors, changes)
            probation.end()
        self.pipeline = pipeline
        self._extra = extra
        self._artifact_id = artifact_id_of(new)
        return self._applied(new, version, changes)

    def _prepare(self, new: DeviceConfig, changes: set[str]) -> _Prepared:
        pipeline = self.pipeline
        assert pipeline is not None and new.source is not None
        prepared = _Prepared()
        try:
            source = None
            kind = self.source_kind
            if "source" in changes:
                source = create_source(new.source)
                prepared.live = new.source.live if new.source.live is not None else source.live
                if not prepared.live:  # a file: open it now so that a bad one is rejected up front
                    source.open()
                    source.close()
                if source.kind != kind:
                    kind = source.kind
                    changes.add("model")  # tensors skip preprocessing: the model bundle changes
            if "model" in changes:
                runner = self._models.acquire(new, kind)
                try:
                    prepared.bundle = ModelBundle.on(runner, make_preprocessor(new, runner.backend, kind),
                                                     make_postprocessor(new, runner.backend))
                except BaseException:
                    self._models.release(runner)
                    raise
                prepared.artifact_id = artifact_id_of(new)
            elif "postprocess" in changes:
                prepared.postprocessor = make_postprocessor(new, pipeline.backend)
            if source is not None:
                prepared.reader = FrameReader(source, new.source, pipeline.stop_event)
            if "sinks" in changes:
                prepared.sinks = create_sinks(new.sinks, pipeline.stats, title=new.device_id)
            if "results" in changes and self._extra_factory is not None:
                prepared.extra = self._extra_factory(new)
            if "tracking" in changes:
                prepared.tracking = make_tracking(new)
            if "cascade" in changes:
                prepared.cascade = make_cascade(new, self._models.acquire_classifiers(new))
        except BaseException:
            prepared.discard(self._release_model, self._release_cascade)
            raise
        return prepared

    def _swap_model_checked(self, bundle: ModelBundle, config: DeviceConfig) -> list[str]:
        """Swap ``bundle`` in and watch it; on failure swap the previous model back. Returns the errors."""
        pipeline = self.pipeline
        assert pipeline is not None
        probation = Probation(bundle)
        old = pipeline.swap_model(bundle, retire_old=False)
        errors = health_check(probation, pipeline, config, self._stopping)
        if errors:
            pipeline.swap_model(old, retire_old=False)
            self._release_model(bundle)  # closed once its frames are done
            return errors
        probation.end()
        self._release_model(old)
        return []

    def _commit(self, prepared: _Prepared, new: DeviceConfig, changes: set[str]) -> None:
        pipeline = self.pipeline
        assert pipeline is not None and new.source is not None
        if prepared.postprocessor is not None:
            pipeline.swap_postprocessor(prepared.postprocessor)
        if prepared.sinks is not None or prepared.extra is not None:
            configured = [s for s in pipeline.sinks if not any(s is e for e in self._extra)]
            if prepared.extra is not None:
                self._extra = prepared.extra
            pipeline.swap_sinks((prepared.sinks if prepared.sinks is not None else configured) + self._extra)
        if "tracking" in changes:
            pipeline.swap_tracking(prepared.tracking)
        if "cascade" in changes:
            old_cascade = pipeline.cascade
            pipeline.swap_cascade(prepared.cascade)
            self._release_cascade(old_cascade)
        if prepared.reader is not None:
            pipeline.swap_source(prepared.reader, prepared.live)
        if "frame_age" in changes:
            pipeline.max_age_s = new.source.max_frame_age_ms / 1000.0
        if "latency_window" in changes:
            size = new.pipeline.latency_window
            pipeline.stats.latency = {name: LatencyWindow(size) for name in pipeline.stats.latency}
