"""Pose estimation: Ultralytics -pose heads, YOLOv8/11 ``[1, 4+C+K*D, A]`` and YOLO26 end-to-end ``[1, N, 6+K*D]``:
per detection K keypoints of D values, x, y in model-input pixels and (D = 3) a visibility already sigmoided.

Keypoints are mapped to source pixels and clipped to the frame, as Ultralytics' ``scale_coords`` does. K and D
come from the config, else Ultralytics ``kpt_shape`` metadata, else the output shape (D = 3).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import numpy as np

from lepton_edge.config.pipeline import PoseConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.results import COCO_SKELETON, Detections, Keypoints
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.postprocess.detect import cxcywh_to_xyxy, describe_outputs, keep_boxes, static_dim
from lepton_edge.runtime.postprocess.heads import HeadLayout, check_head, head_candidates, head_layout
from lepton_edge.runtime.preprocess import Transform

SKELETON_KEY = "lepton.skeleton"
"""Model metadata key with the skeleton as JSON pairs of keypoint indices, e.g. ``[[0, 1], [1, 2]]``."""
_KPT_SHAPE = re.compile(r"^\s*[\[(]\s*(\d+)\s*,\s*([23])\s*[\])]\s*$")
"""Ultralytics ``kpt_shape`` metadata, e.g. ``[17, 3]``: matched, never evaluated."""
COCO_KEYPOINTS = 17


def keypoint_shape(config: PoseConfig, output: TensorSpec, layout: HeadLayout, metadata: dict[str, str],
                   classes: int) -> tuple[int, int]:
    """(K, D) from the config, else ``kpt_shape`` metadata, else the output's static shape (D = 3)."""
    from_metadata = _KPT_SHAPE.match(metadata.get("kpt_shape", ""))
    k = config.keypoints if config.keypoints is not None else (int(from_metadata[1]) if from_metadata else None)
    d = config.keypoint_dims or (int(from_metadata[2]) if from_metadata else 3)
    if k is not None:
        return k, d
    _, d1, d2 = (static_dim(dim) for dim in output.shape)
    values = (d2 - 6 if d2 is not None else None) if layout == "end2end" else (d1 - 4 - classes if d1 else None)
    if layout == "yolov8" and classes < 1:
        values = None
    if values is None or values < d or values % d:
        raise ModelError(
            f"cannot tell the keypoints of pose output {output.name} {output.shape_str} ({layout}): the model has "
            "no kpt_shape metadata; set postprocess.keypoints (and keypoint_dims), and model.labels for a "
            "one-to-many head"
        )
    return values // d, d


def skeleton_for(config: PoseConfig, metadata: dict[str, str], keypoints: int) -> tuple[tuple[int, int], ...]:
    """The lines to draw: the config's, else ``lepton.skeleton`` metadata, else COCO's for 17 keypoints."""
    pairs: list | None = [list(p) for p in config.skeleton] if config.skeleton is not None else None
    if pairs is None and SKELETON_KEY in metadata:
        try:
            pairs = json.loads(metadata[SKELETON_KEY])
        except ValueError:
            raise ModelError(f"model metadata {SKELETON_KEY} is not JSON: {metadata[SKELETON_KEY][:100]!r}") from None
    if pairs is None:
        return COCO_SKELETON if keypoints == COCO_KEYPOINTS else ()
    try:
        skeleton = tuple((int(a), int(b)) for a, b in pairs)
    except (TypeError, ValueError):
        raise ModelError(f"skeleton must be pairs of keypoint indices, got {pairs!r:.100}") from None
    if any(not (0 <= a < keypoints and 0 <= b < keypoints) for a, b in skeleton):
        raise ModelError(f"skeleton {skeleton!r:.100} names keypoints outside 0..{keypoints - 1}")
    return skeleton


def keypoints_to_source(points: np.ndarray, transform: Transform) -> np.ndarray:
    """``(N, K, D)`` keypoints from model-input to source pixels, x and y clipped to the frame."""
    out = points.astype(np.float32, copy=True)
    out[..., 0] = np.clip((out[..., 0] - transform.pad_x) / transform.scale_x, 0, transform.source_width)
    out[..., 1] = np.clip((out[..., 1] - transform.pad_y) / transform.scale_y, 0, transform.source_height)
    return out


class PosePostprocessor:
    """Turns a pose model's outputs into :class:`Detections` with :class:`Keypoints`, in source pixels."""

    def __init__(
        self,
        config: PoseConfig,
        outputs: Sequence[TensorSpec],
        metadata: dict[str, str] | None = None,
        labels: tuple[str, ...] = (),
    ) -> None:
        metadata = metadata or {}
        self.config = config
        self.labels = labels
        if len(outputs) != 1:
            raise ModelError(f"pose decoder expects one output [1, 4+C+K*D, A] or [1, N, 6+K*D], got "
                             f"{describe_outputs(outputs)}")
        self.layout = head_layout(config, outputs[0], metadata, "pose")
        self.keypoints, self.dims = keypoint_shape(config, outputs[0], self.layout, metadata, len(labels))
        check_head(self.layout, outputs[0], self.keypoints * self.dims, "pose", "keypoint values")
        self.skeleton = skeleton_for(config, metadata, self.keypoints)

    def __call__(self, outputs: list[np.ndarray], transform: Transform) -> Detections:
        extra = self.keypoints * self.dims
        found = head_candidates(self.layout, outputs[0], self.config.conf_threshold, extra, "pose")
        boxes = cxcywh_to_xyxy(found.boxes) if self.layout == "yolov8" else found.boxes
        keep = keep_boxes(boxes, found.scores, found.class_ids, self.config, suppress=self.layout == "yolov8")
        points = found.extras[keep].reshape(-1, self.keypoints, self.dims)
        return Detections(
            transform.to_source(boxes[keep]), found.scores[keep], found.class_ids[keep], self.labels,
            keypoints=Keypoints(keypoints_to_source(points, transform), self.skeleton),
        )
