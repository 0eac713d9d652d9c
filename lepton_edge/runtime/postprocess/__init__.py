"""Postprocessing: raw model outputs to typed results (detections with masks, keypoints or rotated boxes,
classifications, raw tensors).

:func:`create_postprocessor` picks the postprocessor from the config, or, without one, from the
model's metadata and output shapes (:func:`infer_task`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np

from lepton_edge.config.pipeline import (
    ClassifyConfig,
    DetectConfig,
    ObbConfig,
    PoseConfig,
    PostprocessConfig,
    RawConfig,
    SegmentConfig,
)
from lepton_edge.core.errors import ModelError
from lepton_edge.core.results import Output
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.labels import labels_from_metadata
from lepton_edge.runtime.postprocess.classify import ClassificationPostprocessor
from lepton_edge.runtime.postprocess.detect import DetectionPostprocessor, looks_like_detection
from lepton_edge.runtime.postprocess.obb import ObbPostprocessor
from lepton_edge.runtime.postprocess.pose import PosePostprocessor
from lepton_edge.runtime.postprocess.raw import RawPostprocessor
from lepton_edge.runtime.postprocess.segment import SegmentationPostprocessor
from lepton_edge.runtime.preprocess import Transform

log = logging.getLogger(__name__)

Task = Literal["detect", "segment", "pose", "obb", "classify", "raw"]
TASKS: tuple[Task, ...] = ("detect", "segment", "pose", "obb", "classify", "raw")
DEFAULT_CONFIGS: dict[str, PostprocessConfig] = {
    "detect": DetectConfig(type="detect"),
    "segment": SegmentConfig(type="segment"),
    "pose": PoseConfig(type="pose"),
    "obb": ObbConfig(type="obb"),
    "classify": ClassifyConfig(type="classify"),
    "raw": RawConfig(type="raw"),
}
"""The postprocessing each task gets when the config names none."""
TASK_KEY = "lepton.task"
"""Model metadata key naming the task; Ultralytics models carry ``task`` instead."""


class Postprocessor(Protocol):
    """Turns one inference's outputs (in the model's output order) into a typed result."""

    def __call__(self, outputs: list[np.ndarray], transform: Transform) -> Output: ...


def _is_class_vector(spec: TensorSpec) -> bool:
    """[C], [1, C], [1, C, 1, 1]: exactly one axis after the batch axis is not 1."""
    axes = spec.shape[1:] if len(spec.shape) > 1 else spec.shape
    return sum(not (isinstance(d, int) and d == 1) for d in axes) == 1


def infer_task(outputs: Sequence[TensorSpec], metadata: dict[str, str]) -> Task:
    """What a model does: metadata ``lepton.task`` or Ultralytics ``task`` first, else the output shapes.

    Ultralytics ``kpt_shape`` metadata means pose; a rank-3 output beside a rank-4 one (prototypes) is a
    segmenter; one output with a single class axis is a classifier; a known detection layout is a detector;
    anything else is passed through raw.
    """
    named = metadata.get(TASK_KEY)
    if named is not None:
        if named not in TASKS:
            raise ModelError(
                f"model metadata {TASK_KEY}={named!r} is not a known task; use one of {', '.join(TASKS)}, "
                "or set model.task / postprocess.type in the config"
            )
        return named  # type: ignore[return-value]
    ultralytics = metadata.get("task")
    if ultralytics in TASKS:
        return ultralytics  # type: ignore[return-value]
    if ultralytics is not None:
        log.warning(
            "model metadata task=%r: not a task decoded here (%s); outputs pass through raw",
            ultralytics, ", ".join(TASKS[:-1]),
        )
        return "raw"
    if "kpt_shape" in metadata and len(outputs) == 1:
        return "pose"
    if sorted(len(spec.shape) for spec in outputs) == [3, 4]:
        return "segment"
    if len(outputs) == 1 and _is_class_vector(outputs[0]):
        return "classify"
    if looks_like_detection(outputs, metadata):
        return "detect"
    return "raw"


def create_postprocessor(
    config: PostprocessConfig | None,
    outputs: Sequence[TensorSpec],
    metadata: dict[str, str],
    labels: tuple[str, ...],
) -> Postprocessor:
    """The postprocessor for a model. Without a config it follows :func:`infer_task` with defaults.

    Empty ``labels`` fall back to the labels in the model metadata. Raises ModelError when the
    outputs do not fit the configured (or inferred) task.
    """
    labels = labels or labels_from_metadata(metadata)
    if config is None:
        task = infer_task(outputs, metadata)
        config = DEFAULT_CONFIGS[task]
    if isinstance(config, DetectConfig):
        return DetectionPostprocessor(config, outputs, metadata, labels)
    if isinstance(config, SegmentConfig):
        return SegmentationPostprocessor(config, outputs, metadata, labels)
    if isinstance(config, PoseConfig):
        return PosePostprocessor(config, outputs, metadata, labels)
    if isinstance(config, ObbConfig):
        return ObbPostprocessor(config, outputs, metadata, labels)
    if isinstance(config, ClassifyConfig):
        return ClassificationPostprocessor(config, outputs, labels)
    return RawPostprocessor(outputs, config if isinstance(config, RawConfig) else None)


__all__ = [
    "DEFAULT_CONFIGS",
    "ClassificationPostprocessor",
    "DetectionPostprocessor",
    "ObbPostprocessor",
    "PosePostprocessor",
    "Postprocessor",
    "RawPostprocessor",
    "SegmentationPostprocessor",
    "create_postprocessor",
    "infer_task",
]
