"""Our preprocess + onnxruntime + pose decoder against Ultralytics' own ``predict`` (8.4.190, conf 0.25, iou 0.7)
on the committed frames, for both committed -pose exports (kpt_shape [5, 3]).

Boxes: at least 99 % of the reference boxes matched one-to-one (same class, IoU > 0.9), at most 1 % extra.
Keypoints of matched pairs: x and y within 0.05 source pixels of Ultralytics' (measured: at most 0.003 px; its JSON
rounds to 4 decimals, and onnxruntime builds may differ in the last float bits), the visibility within 0.001.
"""

from __future__ import annotations

import numpy as np
import pytest

from lepton_edge.config.pipeline import PoseConfig
from lepton_edge.runtime.postprocess.nms import box_iou
from tests.runtime.postprocess.ultralytics_refs import MODELS, Score, match_pairs, predict_args, run_frames, same_class

XY_TOLERANCE_PX = 0.05
VISIBILITY_TOLERANCE = 1e-3


@pytest.mark.parametrize("path", [
    pytest.param("pose/yolo11t-pose.onnx", id="yolo11-pose"),
    pytest.param("pose/yolo26t-pose_e2e.onnx", id="yolo26-pose-end2end"),
])
def test_matches_ultralytics_predict(path: str) -> None:
    conf, iou = predict_args(MODELS / path)
    config = PoseConfig(type="pose", conf_threshold=conf, iou_threshold=iou, max_detections=300)
    score, xy_errors, vis_errors = Score(0, 0, 0), [], []
    for frame in run_frames(MODELS / path, config):
        found = frame.result
        assert found.keypoints is not None and found.keypoints.data.shape[1:] == (5, 3)
        pairs = match_pairs(same_class(box_iou(frame.ref_boxes, found.boxes), frame.ref_classes, found.class_ids))
        score += Score(len(frame.ref_boxes), len(pairs), len(found))
        ref_points = np.asarray(frame.ref["keypoints"], np.float32).reshape(-1, 5, 3)
        for r, o in pairs:
            diff = np.abs(found.keypoints.data[o] - ref_points[r])
            xy_errors.append(float(diff[:, :2].max()))
            vis_errors.append(float(diff[:, 2].max()))
    assert score.passes, str(score)
    assert max(xy_errors) <= XY_TOLERANCE_PX, f"keypoint x/y off by up to {max(xy_errors):.3f} px"
    assert max(vis_errors) <= VISIBILITY_TOLERANCE, f"visibility off by up to {max(vis_errors):.4f}"


def test_keypoints_stay_inside_the_frame_and_the_json_has_them() -> None:
    for frame in run_frames(MODELS / "pose/yolo11t-pose.onnx", None):
        points = frame.result.keypoints
        assert points is not None
        h, w = frame.image.shape[:2]
        assert (points.data[..., 0] >= 0).all() and (points.data[..., 0] <= w).all()
        assert (points.data[..., 1] >= 0).all() and (points.data[..., 1] <= h).all()
        assert points.skeleton == ()  # 5 keypoints: no skeleton to draw unless configured
        items = frame.result.to_dict()["detections"]
        assert all(len(item["keypoints"]) == 5 and len(item["keypoints"][0]) == 3 for item in items)
