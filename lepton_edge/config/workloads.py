"""The multi-stream sections of a device config: named streams, named models and the workloads binding them.

A **stream** is a source (camera, RTSP, file, recorded tensors) with its own rate, frame age and reconnect policy;
a **model** is loaded once and shared by every workload that names it (its batcher gathers their frames); a
**workload** binds one stream to one model with its own pre/postprocessing, tracking, analytics and sinks, and
optional **cascades**: a classifier run on crops of the workload's detections, its answer attached to each one.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from lepton_edge.config.base import Strict
from lepton_edge.config.pipeline import (
    AnalyticsConfig,
    BackendConfig,
    ModelConfig,
    OnnxRuntimeBackendConfig,
    PostprocessConfig,
    PreprocessConfig,
    SinkConfig,
    TrackingConfig,
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
"""Names of streams, models and workloads (the scheduler's workload ids fit)."""

Name = Annotated[str, Field(pattern=NAME_PATTERN)]

MAX_STREAMS = 32
MAX_MODELS = 16
MAX_WORKLOADS = 32
MAX_CASCADES = 4
MAX_CASCADE_CROPS = 256

SINGLE_WORKLOAD = "main"
"""The name of the one workload of a config in the single form (top-level model and source)."""


class NamedModelConfig(ModelConfig):
    """A model of the ``models`` section: the ``model`` fields plus the backend that runs it."""

    backend: BackendConfig = Field(default_factory=OnnxRuntimeBackendConfig, description="Inference backend.")


class CascadeSelection(Strict):
    """Which detections a cascade classifies."""

    classes: list[str | int] | None = Field(
        None, max_length=256,
        description="Detections of these classes (labels or class ids) are classified; None: every class.",
    )
    min_size: int = Field(16, ge=1, le=4096, description="Smallest box side, in source pixels, worth a crop.")
    min_confidence: float = Field(0.25, ge=0, le=1, description="Lowest detection score worth a crop.")
    max_crops: int = Field(
        16, ge=1, le=MAX_CASCADE_CROPS,
        description="Most crops per frame, highest scores first; the rest keep no cascade result.",
    )
    padding: float = Field(0.0, ge=0, le=1, description="Grow each crop by this fraction of its box on every side.")


class CascadeConfig(CascadeSelection):
    """A classifier (a model of the ``models`` section) run on crops of the workload's detections; its top class
    is attached to each detection under the model's name."""

    model: Name = Field(description="A model of the `models` section; it must be a classifier.")


class InlineCascadeConfig(CascadeSelection):
    """A cascade of the single form: the classifier's model given in place, its answers attached under ``name``."""

    name: Name = Field(description="Under which name each detection carries the classifier's answer.")
    model: NamedModelConfig = Field(description="The classifier (the `model` fields plus `backend`).")


class WorkloadConfig(Strict):
    """One stream through one model, with what happens to its results."""

    stream: Name = Field(description="The stream (a name in `streams`) the workload reads.")
    model: Name = Field(description="The model (a name in `models`) the workload runs.")
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig, description="Frame to tensor.")
    postprocess: PostprocessConfig | None = Field(
        None, description="Tensor to result; defaults from the model task (detect, classify or raw)."
    )
    tracking: TrackingConfig | None = Field(
        None, description="Track detections across frames in capture-time seconds; null: no tracking.")
    analytics: AnalyticsConfig | None = Field(
        None, description="Zones, counting lines and loitering on the tracks; needs tracking.")
    cascade: list[CascadeConfig] = Field(
        default_factory=list, max_length=MAX_CASCADES,
        description="Classifiers run on crops of this workload's detections (detector -> classifier).",
    )
    sinks: list[SinkConfig] = Field(default_factory=list, max_length=16, description="Where results go.")
