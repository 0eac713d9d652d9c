"""Wiring: from a :class:`DeviceConfig` to a ready :class:`Pipeline` (source, model, sinks)."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from lepton_edge.backends.base import Backend
from lepton_edge.config import (
    ClassifyConfig,
    DetectConfig,
    DeviceConfig,
    PostprocessConfig,
    PreprocessConfig,
    RawConfig,
)
from lepton_edge.errors import ConfigError, LeptonError
from lepton_edge.pipeline import Pipeline, PipelineStats
from lepton_edge.preprocess import Preprocessor

log = logging.getLogger(__name__)


def preprocess_from_metadata(config: PreprocessConfig, metadata: dict[str, str]) -> PreprocessConfig:
    """Fill the preprocessing fields the user did not set from the model's ``lepton.preprocess`` metadata."""
    raw = metadata.get("lepton.preprocess")
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
        log.warning("ignoring the model's lepton.preprocess metadata (%s): %s", raw[:200], e)
        return config


def default_postprocess(task: str) -> PostprocessConfig:
    if task == "detect":
        return DetectConfig(type="detect")
    if task == "classify":
        return ClassifyConfig(type="classify")
    return RawConfig(type="raw")


def require_workload(config: DeviceConfig) -> None:
    """Raise ConfigError when ``config`` has no pipeline to run (``idle: true``)."""
    if config.idle or config.model is None or config.source is None:
        raise ConfigError(
            f"device {config.device_id!r} is idle (idle: true): there is no model and source to run; "
            "give it a workload config (model and source) first"
        )


def load_backend(config: DeviceConfig, *, in_pipeline: bool = True) -> Backend:
    """The loaded backend for the config's model: the file as given (``precision: as-is``, or an artifact
    directory, verified against this machine), or the engine built for the precision from the engine cache."""
    require_workload(config)
    assert config.model is not None
    from lepton_edge.engine_cache import open_model

    return open_model(config.model, config.backend, in_pipeline=in_pipeline)


def build_pipeline(config: DeviceConfig, *, max_frames: int | None = None,
                   backend: Backend | None = None, extra_sinks: list[Any] | None = None,
                   stats: PipelineStats | None = None) -> Pipeline:
    """Open the model, the source and the sinks described by ``config``; returns an unstarted pipeline.

    ``stats`` (optional) is reused instead of new counters, so figures continue across pipelines; its
    latency windows must already have ``config.pipeline.latency_window`` samples.
    Raises ConfigError/ModelError/SourceError with a clear message when any part is wrong, and ConfigError
    for an idle config (nothing to build).
    """
    from lepton_edge.labels import labels_from_metadata, load_labels
    from lepton_edge.postprocess import create_postprocessor, infer_task
    from lepton_edge.sinks import create_sinks
    from lepton_edge.sources import FrameReader, create_source

    require_workload(config)
    assert config.model is not None and config.source is not None
    backend = backend or load_backend(config)
    try:
        labels = load_labels(config.model.labels) or labels_from_metadata(backend.metadata)
        post_cfg = config.postprocess
        if post_cfg is None:
            task = config.model.task if config.model.task != "auto" else infer_task(backend.outputs, backend.metadata)
            post_cfg = default_postprocess(task)
        postprocessor = create_postprocessor(post_cfg, backend.outputs, backend.metadata, labels)
        source = create_source(config.source)
        live = config.source.live if config.source.live is not None else source.live
        preprocessor = None
        if getattr(source, "kind", "image") == "image":
            if len(backend.inputs) != 1:
                raise ConfigError(
                    f"{config.model.path}: image sources feed one input, the model has "
                    f"{[s.name for s in backend.inputs]}"
                )
            pre_cfg = preprocess_from_metadata(config.preprocess, backend.metadata)
            preprocessor = Preprocessor(backend.inputs[0], pre_cfg)
        stats = stats if stats is not None else PipelineStats(config.pipeline.latency_window)
        stop = threading.Event()
        reader = FrameReader(source, config.source, stop)
        sinks = create_sinks(config.sinks, stats, title=config.device_id) + list(extra_sinks or [])
        pipeline = Pipeline(
            reader, backend, postprocessor, sinks,
            preprocessor=preprocessor, live=live, max_frame_age_ms=config.source.max_frame_age_ms,
            max_frames=max_frames, stats=stats, stop_event=stop,
        )
        return pipeline
    except BaseException:
        backend.close()
        raise
