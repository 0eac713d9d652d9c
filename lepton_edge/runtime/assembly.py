"""The one pipeline assembly path: from a :class:`DeviceConfig` and a loaded backend to a ready :class:`Pipeline`.

Loading the backend (engine cache, artifacts) is the build layer's job: see ``lepton_edge.engines.engine_cache``."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from lepton_edge.config.device import DeviceConfig
from lepton_edge.config.pipeline import PostprocessConfig, PreprocessConfig, RawConfig
from lepton_edge.core.errors import ConfigError, LeptonError
from lepton_edge.runtime.backends.base import Backend
from lepton_edge.runtime.input_size import ARTIFACT_PREPROCESS_KEY
from lepton_edge.runtime.inputs import plan_inputs
from lepton_edge.runtime.labels import labels_from_metadata, load_labels
from lepton_edge.runtime.pipeline import Pipeline, PipelineStats
from lepton_edge.runtime.postprocess import DEFAULT_CONFIGS, create_postprocessor, infer_task
from lepton_edge.runtime.preprocess import Preprocessor
from lepton_edge.runtime.sinks import create_sinks
from lepton_edge.runtime.sources import FrameReader, create_source
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


def make_tracking(config: DeviceConfig) -> TrackingStage | None:
    """The tracking (and analytics) step ``config`` asks for; None when it has no tracking section."""
    return TrackingStage(config.tracking, config.analytics) if config.tracking is not None else None


def build_pipeline(config: DeviceConfig, backend: Backend, *, max_frames: int | None = None,
                   extra_sinks: list[Any] | None = None, stats: PipelineStats | None = None) -> Pipeline:
    """Open the source and the sinks described by ``config`` around the loaded ``backend``; returns an unstarted
    pipeline. The backend is closed when anything fails.

    ``stats`` (optional) is reused instead of new counters, so figures continue across pipelines; its
    latency windows must already have ``config.pipeline.latency_window`` samples.
    Raises ConfigError/ModelError/SourceError with a clear message when any part is wrong, and ConfigError
    for an idle config (nothing to build).
    """
    try:
        require_workload(config)
        assert config.model is not None and config.source is not None
        postprocessor = make_postprocessor(config, backend)
        source = create_source(config.source)
        live = config.source.live if config.source.live is not None else source.live
        preprocessor = make_preprocessor(config, backend, getattr(source, "kind", "image"))
        stats = stats if stats is not None else PipelineStats(config.pipeline.latency_window)
        stop = threading.Event()
        reader = FrameReader(source, config.source, stop)
        sinks = create_sinks(config.sinks, stats, title=config.device_id) + list(extra_sinks or [])
        return Pipeline(
            reader, backend, postprocessor, sinks,
            preprocessor=preprocessor, live=live, max_frame_age_ms=config.source.max_frame_age_ms,
            max_frames=max_frames, stats=stats, stop_event=stop, inputs=config.model.inputs,
            tracking=make_tracking(config),
        )
    except BaseException:
        backend.close()
        raise
