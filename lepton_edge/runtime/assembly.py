"""The one pipeline assembly path: from a :class:`DeviceConfig` and a loaded backend to a ready :class:`Pipeline`.

Loading the backend (engine cache, artifacts) is the build layer's job: see ``lepton_edge.engines.engine_cache``."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from lepton_edge.config.device import DeviceConfig
from lepton_edge.config.pipeline import ClassifyConfig, PostprocessConfig, PreprocessConfig, RawConfig
from lepton_edge.config.workloads import InlineCascadeConfig
from lepton_edge.core.errors import ConfigError, LeptonError
from lepton_edge.runtime.backends.base import Backend
from lepton_edge.runtime.batcher import ModelRunner
from lepton_edge.runtime.cascade import CascadeClassifier, CascadeStage, CascadeStep
from lepton_edge.runtime.clips.sink import ClipRefs, EventKey, create_clip_sink, local_event_key
from lepton_edge.runtime.input_size import ARTIFACT_PREPROCESS_KEY
from lepton_edge.runtime.inputs import plan_inputs
from lepton_edge.runtime.labels import labels_from_metadata, load_labels
from lepton_edge.runtime.pipeline import Pipeline, PipelineStats
from lepton_edge.runtime.postprocess import DEFAULT_CONFIGS, create_postprocessor, infer_task
from lepton_edge.runtime.preprocess import Preprocessor
from lepton_edge.runtime.sinks import create_sinks
from lepton_edge.runtime.sources import FrameReader, create_source
from lepton_edge.runtime.sources.pyav_video import clip_source
from lepton_edge.runtime.tracking import TrackingStage

log = logging.getLogger(__name__)


def preprocess_from_metadata(config: PreprocessConfig, metadata: dict[str, str]) -> PreprocessConfig:
    """Fill the preprocessing fields the user did not set: first from what a built artifact records
    (``lepton.artifact.preprocess``: the preprocessing and size it was calibrated and built for), then from the
    model's ``lepton.preprocess`` metadata. Explicit fields always win (a size other than the artifact's is
    logged)."""
    recorded = _hints(metadata, ARTIFACT_PREPROCESS_KEY)
    if recorded and config.size is not None and recorded.get("size") not in (None, list(config.size)):
        log.warning("preprocess.size %dx%d differs from the size the artifact was built for (%s); a TensorRT engine "
                    "accepts only sizes within its optimisation profile", *config.size,
                    "x".join(map(str, recorded["size"])))
    for key in (ARTIFACT_PREPROCESS_KEY, "lepton.preprocess"):
        config = _fill(config, key, metadata)
    return config


def _hints(metadata: dict[str, str], key: str) -> dict[str, Any] | None:
    raw = metadata.get(key)
    if not raw:
        return None
    try:
        hints = json.loads(raw)
    except ValueError:
        return None
    return hints if isinstance(hints, dict) else None


def _fill(config: PreprocessConfig, key: str, metadata: dict[str, str]) -> PreprocessConfig:
    raw = metadata.get(key)
    if not raw:
        return config
    try:
        hints = json.loads(raw)
        if not isinstance(hints, dict):
            raise ValueError("not a JSON object")
        merged = {**{k: v for k, v in hints.items() if k not in config.model_fields_set},
                  **config.model_dump(exclude_unset=True)}
        return PreprocessConfig.model_validate(merged)
    except (ValueError, LeptonError) as e:
        log.warning("ignoring the %s metadata (%s): %s", key, raw[:200], e)
        return config


def default_postprocess(task: str) -> PostprocessConfig:
    """The postprocessing a task gets when the config names none (raw for a task not decoded)."""
    return DEFAULT_CONFIGS.get(task, RawConfig(type="raw"))


def require_workload(config: DeviceConfig) -> None:
    """Raise ConfigError when ``config`` has no pipeline to run (``idle: true``)."""
    if config.idle or config.model is None or config.source is None:
        raise ConfigError(
            f"device {config.device_id!r} is idle (idle: true): there is no model and source to run; "
            "give it a workload config (model and source) first"
        )


def make_postprocessor(config: DeviceConfig, backend: Backend) -> Any:
    """The postprocessor ``config`` asks for, for a loaded ``backend`` (labels from the config, else the model)."""
    assert config.model is not None
    labels = load_labels(config.model.labels) or labels_from_metadata(backend.metadata)
    post_cfg = config.postprocess
    if post_cfg is None:
        task = config.model.task if config.model.task != "auto" else infer_task(backend.outputs, backend.metadata)
        post_cfg = default_postprocess(task)
    return create_postprocessor(post_cfg, backend.outputs, backend.metadata, labels)


def make_preprocessor(config: DeviceConfig, backend: Backend, source_kind: str) -> Preprocessor | None:
    """The preprocessor for image sources (None for recorded tensors, fed as they are)."""
    if source_kind != "image":
        return None
    assert config.model is not None
    plan = plan_inputs(backend.inputs, backend.outputs, config.model.inputs, source="image",
                       where=str(config.model.path))
    assert plan.image is not None
    return Preprocessor(plan.image, preprocess_from_metadata(config.preprocess, backend.metadata),
                        metadata=backend.metadata)


def make_cascade_classifier(cascade: InlineCascadeConfig, backend: Backend) -> CascadeClassifier:
    """The classifier of ``cascade`` around its loaded ``backend``: preprocessing from the model's metadata, its
    top class decoded with the labels of the config, else of the model."""
    model = cascade.model
    labels = load_labels(model.labels) or labels_from_metadata(backend.metadata)
    post = create_postprocessor(ClassifyConfig(type="classify", top_k=1), backend.outputs, backend.metadata, labels)
    plan = plan_inputs(backend.inputs, backend.outputs, model.inputs, source="image", where=str(model.path))
    if plan.image is None:
        raise ConfigError(f"cascade {cascade.name!r}: {model.path} has no image input to take the crops")
    pre = Preprocessor(plan.image, preprocess_from_metadata(PreprocessConfig(), backend.metadata),
                       metadata=backend.metadata)
    return CascadeClassifier(cascade.name, backend, pre, post)


def make_cascade(config: DeviceConfig, classifiers: dict[str, CascadeClassifier]) -> CascadeStage | None:
    """The cascade step of ``config`` (one workload) on its loaded ``classifiers`` (by cascade name); None without
    cascades."""
    if not config.cascade:
        return None
    missing = [c.name for c in config.cascade if c.name not in classifiers]
    if missing:
        raise ConfigError(f"cascade {', '.join(missing)}: its classifier is not loaded (cascades run under the device "
                          "runtime, which loads them)")
    return CascadeStage([CascadeStep(c.name, c, classifiers[c.name]) for c in config.cascade])


def make_tracking(config: DeviceConfig) -> TrackingStage | None:
    """The tracking (and analytics) step ``config`` asks for; None when it has no tracking section."""
    return TrackingStage(config.tracking, config.analytics) if config.tracking is not None else None


def build_pipeline(config: DeviceConfig, backend: Backend | None = None, *, runner: ModelRunner | None = None,
                   max_frames: int | None = None, extra_sinks: list[Any] | None = None,
                   stats: PipelineStats | None = None,
                   classifiers: dict[str, CascadeClassifier] | None = None, clip_refs: ClipRefs | None = None,
                   event_key: EventKey = local_event_key) -> Pipeline:
    """Open the source and the sinks described by ``config`` (one workload) around its model: a loaded ``backend``
    (the pipeline's own, closed when anything fails) or a ``runner`` shared with other workloads (left open).
    Returns an unstarted pipeline.

    ``stats`` (optional) is reused instead of new counters, so figures continue across pipelines; its
    latency windows must already have ``config.pipeline.latency_window`` samples. ``classifiers`` are the loaded
    cascade classifiers by cascade name (required when the config has cascades). A source with clips gets a clip
    sink, registered in ``clip_refs`` under its stream id so that its events carry their clip; ``event_key`` names
    events as the event messages do.
    Raises ConfigError/ModelError/SourceError with a clear message when any part is wrong, and ConfigError
    for an idle config (nothing to build).
    """
    if (backend is None) == (runner is None):
        raise ValueError("build_pipeline needs a backend or a runner")
    try:
        require_workload(config)
        assert config.model is not None and config.source is not None
        model_backend = backend if backend is not None else runner.backend  # type: ignore[union-attr]
        postprocessor = make_postprocessor(config, model_backend)
        clips = config.source.clips if config.source.clips is not None and config.source.clips.enabled else None
        source = (clip_source(config.source) if clips is not None else None) or create_source(config.source)
        live = config.source.live if config.source.live is not None else source.live
        preprocessor = make_preprocessor(config, model_backend, getattr(source, "kind", "image"))
        stats = stats if stats is not None else PipelineStats(config.pipeline.latency_window)
        stop = threading.Event()
        reader = FrameReader(source, config.source, stop)
        sinks = create_sinks(config.sinks, stats, title=config.device_id) + list(extra_sinks or [])
        if clips is not None:
            clip_sink = create_clip_sink(clips, reader.source_id, source, event_key=event_key)
            sinks.append(clip_sink)
            if clip_refs is not None:
                clip_refs.add(reader.source_id, clip_sink)
        return Pipeline(
            reader, backend, postprocessor, sinks, runner=runner,
            preprocessor=preprocessor, live=live, max_frame_age_ms=config.source.max_frame_age_ms,
            max_frames=max_frames, stats=stats, stop_event=stop,
            inputs=config.model.inputs if runner is None else None, tracking=make_tracking(config),
            cascade=make_cascade(config, classifiers or {}), name=config.source.id,
        )
    except BaseException:
        if backend is not None:
            backend.close()
        raise
