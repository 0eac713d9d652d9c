"""The segment, pose and obb postprocess schemas refuse what is out of range, of the wrong type or unknown."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from lepton_edge.config.pipeline import (
    BoxDecodeConfig,
    DetectConfig,
    ObbConfig,
    PoseConfig,
    PostprocessConfig,
    SegmentConfig,
)

POSTPROCESS = TypeAdapter(PostprocessConfig)


@pytest.mark.parametrize(("kind", "cls"), [("segment", SegmentConfig), ("pose", PoseConfig), ("obb", ObbConfig)])
def test_the_union_picks_each_task_with_the_shared_detection_fields(kind, cls):
    config = POSTPROCESS.validate_python({"type": kind, "conf_threshold": 0.3, "iou_threshold": 0.6,
                                          "max_detections": 50, "class_agnostic": True, "layout": "end2end"})
    assert isinstance(config, cls) and isinstance(config, BoxDecodeConfig)
    assert (config.conf_threshold, config.iou_threshold, config.max_detections, config.class_agnostic) == (
        0.3, 0.6, 50, True)
    assert config.layout == "end2end"


def test_the_detection_fields_are_declared_once():
    shared = set(BoxDecodeConfig.model_fields)
    for cls in (DetectConfig, SegmentConfig, PoseConfig, ObbConfig):
        assert shared <= set(cls.model_fields)
        assert all(cls.model_fields[f] is BoxDecodeConfig.model_fields[f] or
                   cls.model_fields[f].description == BoxDecodeConfig.model_fields[f].description for f in shared)


ABUSE = [
    ({"type": "segment", "mask_threshold": 0}, "mask_threshold"),
    ({"type": "segment", "mask_threshold": 1}, "mask_threshold"),
    ({"type": "segment", "mask_threshold": -0.5}, "mask_threshold"),
    ({"type": "segment", "mask_threshold": "half"}, "mask_threshold"),
    ({"type": "segment", "mask_threshold": float("nan")}, "mask_threshold"),
    ({"type": "segment", "mask_format": "bitmap"}, "mask_format"),
    ({"type": "segment", "mask_format": 1}, "mask_format"),
    ({"type": "segment", "layout": "yolov5"}, "layout"),
    ({"type": "segment", "masks": "rle"}, "masks"),
    ({"type": "pose", "keypoints": 0}, "keypoints"),
    ({"type": "pose", "keypoints": 1001}, "keypoints"),
    ({"type": "pose", "keypoints": 2.5}, "keypoints"),
    ({"type": "pose", "keypoint_dims": 4}, "keypoint_dims"),
    ({"type": "pose", "skeleton": [[0, 1, 2]]}, "skeleton"),
    ({"type": "pose", "skeleton": [[0, -1]]}, "skeleton"),
    ({"type": "pose", "skeleton": [[0, 1000]]}, "skeleton"),
    ({"type": "pose", "skeleton": [[0, 1]] * 1001}, "skeleton"),
    ({"type": "pose", "skeleton": "0-1"}, "skeleton"),
    ({"type": "pose", "kpt_shape": [17, 3]}, "kpt_shape"),
    ({"type": "obb", "conf_threshold": 1.5}, "conf_threshold"),
    ({"type": "obb", "iou_threshold": -0.1}, "iou_threshold"),
    ({"type": "obb", "max_detections": 0}, "max_detections"),
    ({"type": "obb", "max_detections": 10**9}, "max_detections"),
    ({"type": "obb", "class_agnostic": "maybe"}, "class_agnostic"),
    ({"type": "obb", "angle": "degrees"}, "angle"),
    ({"type": "obb", "layout": "nms"}, "layout"),
    ({"type": "detect", "max_detections": 10**9}, "max_detections"),
    ({"type": "keypoints"}, "type"),
]


@pytest.mark.parametrize(("data", "field"), ABUSE, ids=[f"{d['type']}-{f}-{i}" for i, (d, f) in enumerate(ABUSE)])
def test_abuse_is_refused_naming_the_field(data, field):
    with pytest.raises(ValidationError) as e:
        POSTPROCESS.validate_python(data)
    assert field in str(e.value)


def test_configs_are_frozen():
    config = SegmentConfig(type="segment")
    with pytest.raises(ValidationError):
        config.mask_threshold = 0.9  # type: ignore[misc]
