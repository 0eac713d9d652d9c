"""Our preprocess + onnxruntime + oriented-box decoder against Ultralytics' own ``predict`` (8.4.190, conf 0.25,
iou 0.7) on the committed frames, for both committed -obb exports.

A reference box (its ``xyxyxyxy`` corners) is matched one-to-one by one of ours of the same class whose corners
overlap it with rotated IoU > 0.9 (exact polygon intersection); at least 99 % must match, at most 1 % may be
extra. Matched angles agree to 1e-3 radians: like Ultralytics 8.4, the angle is reported as the model gives it.
"""

from __future__ import annotations

import numpy as np
import pytest

from lepton_edge.config.pipeline import ObbConfig
from lepton_edge.runtime.postprocess.obb import rotated_iou
from tests.runtime.postprocess.ultralytics_refs import MODELS, Score, match_pairs, predict_args, run_frames, same_class

ANGLE_TOLERANCE = 1e-3


@pytest.mark.parametrize("path", [
    pytest.param("obb/yolo11t-obb.onnx", id="yolo11-obb"),
    pytest.param("obb/yolo26t-obb_e2e.onnx", id="yolo26-obb-end2end"),
])
def test_matches_ultralytics_predict(path: str) -> None:
    conf, iou = predict_args(MODELS / path)
    config = ObbConfig(type="obb", conf_threshold=conf, iou_threshold=iou, max_detections=300)
    score, angle_errors = Score(0, 0, 0), []
    for frame in run_frames(MODELS / path, config):
        found = frame.result
        assert found.rotated is not None
        ref_corners = np.asarray(frame.ref["xyxyxyxy"], np.float32).reshape(-1, 4, 2)
        ref_xywhr = np.asarray(frame.ref["xywhr"], np.float32).reshape(-1, 5)
        overlap = rotated_iou(ref_corners, found.rotated.corners()) if len(found) else np.zeros((len(ref_corners), 0))
        pairs = match_pairs(same_class(overlap, frame.ref_classes, found.class_ids))
        score += Score(len(ref_corners), len(pairs), len(found))
        angle_errors += [abs(float(found.rotated.xywhr[o, 4] - ref_xywhr[r, 4])) for r, o in pairs]
    assert score.passes, str(score)
    assert max(angle_errors) <= ANGLE_TOLERANCE, f"angles off by up to {max(angle_errors):.4f} rad"


def test_axis_aligned_boxes_enclose_the_rotated_ones() -> None:
    frame = next(run_frames(MODELS / "obb/yolo11t-obb.onnx", None))
    found = frame.result
    assert found.rotated is not None and len(found) > 0
    corners = found.rotated.corners()
    h, w = frame.image.shape[:2]
    expected = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).clip(0, [w, h, w, h])
    np.testing.assert_allclose(found.boxes, expected, atol=1e-3)
    item = found.to_dict()["detections"][0]
    assert set(item["rotated_box"]) == {"cx", "cy", "w", "h", "angle"} and len(item["corners"]) == 4
