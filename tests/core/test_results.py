"""The typed detection parts: compact masks and their COCO RLE, keypoints, rotated boxes, and their validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from lepton_edge.core.results import Detections, Keypoints, Masks, RotatedBoxes


def test_rle_equals_pycocotools_on_the_full_frame_mask():
    rng = np.random.default_rng(0)
    for _ in range(500):
        height, width = (int(v) for v in rng.integers(1, 30, 2))
        h, w = int(rng.integers(0, height + 1)), int(rng.integers(0, width + 1))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        crop = rng.random((h, w)) < rng.choice([0.0, 0.3, 0.9, 1.0])
        masks = Masks((crop,), [[x, y]], height, width)
        expected = coco_mask.encode(np.asfortranarray(masks.dense(0).astype(np.uint8)))["counts"].decode()
        assert masks.rle(0) == {"size": [height, width], "counts": expected}


def test_masks_are_validated():
    with pytest.raises(ValueError, match="outside"):
        Masks((np.ones((5, 5), bool),), [[8, 0]], 10, 10)
    with pytest.raises(ValueError, match="origins"):
        Masks((np.ones((5, 5), bool),), np.zeros((0, 2)), 10, 10)
    with pytest.raises(ValueError, match="polygon"):
        Masks((np.ones((5, 5), bool),), [[0, 0]], 10, 10, "polygon")
    empty = Masks.empty(4, 6)
    assert len(empty) == 0 and empty.areas().tolist() == []


def test_detections_check_every_part_and_select_keeps_them_together():
    masks = Masks((np.ones((2, 2), bool), np.zeros((1, 1), bool)), [[0, 0], [3, 3]], 5, 5)
    points = Keypoints(np.arange(12, dtype=np.float32).reshape(2, 2, 3))
    rotated = RotatedBoxes([[1, 1, 2, 2, 0], [4, 4, 1, 1, 0.5]])
    found = Detections([[0, 0, 2, 2], [3, 3, 4, 4]], [0.9, 0.5], [0, 1], masks=masks, keypoints=points,
                       rotated=rotated)
    second = found.select(np.array([False, True]))
    assert second.scores.tolist() == [0.5] and second.masks.origins.tolist() == [[3, 3]]
    assert second.keypoints.data[0, 0].tolist() == [6, 7, 8] and second.rotated.xywhr[0, 4] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="keypoints 1"):
        Detections([[0, 0, 2, 2], [3, 3, 4, 4]], [0.9, 0.5], [0, 1], keypoints=points.select([0]))


def test_keypoints_are_validated():
    with pytest.raises(ValueError, match=r"\(N, K, 2 or 3\)"):
        Keypoints(np.zeros((1, 5, 4)))
    with pytest.raises(ValueError, match="outside"):
        Keypoints(np.zeros((1, 3, 3)), ((0, 3),))
    assert Keypoints(np.zeros((0, 5, 2))).data.shape == (0, 5, 2)


def test_corners_of_a_rotated_box():
    corners = RotatedBoxes([[10, 20, 4, 2, math.pi / 2]]).corners()[0]
    # turned a quarter: the width runs along y, the height along -x
    np.testing.assert_allclose(corners, [[9, 22], [11, 22], [11, 18], [9, 18]], atol=1e-5)


def test_plain_detections_write_what_they_always_wrote():
    found = Detections([[1, 2, 3, 4]], [0.123456], [1], ("a", "b"))
    assert found.to_dict() == {"detections": [{"label": "b", "class_id": 1, "score": 0.1235,
                                               "box": [1.0, 2.0, 3.0, 4.0]}]}
