"""The pose decoder on synthetic outputs: keypoint shape from config, metadata or shapes; letterbox undone and
clipped; skeletons; empty and bad outputs."""

from __future__ import annotations

import numpy as np
import pytest

from lepton_edge.config.pipeline import PoseConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.results import COCO_SKELETON
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.postprocess.pose import PosePostprocessor
from lepton_edge.runtime.preprocess import Transform


def spec(*shape) -> TensorSpec:
    return TensorSpec("output0", tuple(shape), np.dtype(np.float32))


def decoder(output: TensorSpec, metadata=None, labels=("person",), **config) -> PosePostprocessor:
    return PosePostprocessor(PoseConfig(type="pose", **config), [output], metadata or {}, labels)


def test_keypoint_shape_from_metadata_config_or_shapes():
    assert (decoder(spec(1, 4 + 1 + 15, 30), {"kpt_shape": "[5, 3]"}).keypoints, 5) == (5, 5)
    post = decoder(spec(1, 4 + 1 + 10, 30), keypoints=5, keypoint_dims=2)
    assert (post.keypoints, post.dims) == (5, 2)
    post = decoder(spec(1, 300, 6 + 51), {"end2end": "True"})
    assert (post.layout, post.keypoints, post.dims) == ("end2end", 17, 3) and post.skeleton == COCO_SKELETON
    assert decoder(spec(1, 4 + 1 + 51, 8400)).keypoints == 17  # one class from the labels


def test_unknown_keypoints_fail_naming_the_setting():
    with pytest.raises(ModelError, match=r"set postprocess\.keypoints"):
        decoder(spec(1, 4 + 1 + 14, 30))
    with pytest.raises(ModelError, match=r"set postprocess\.keypoints"):
        decoder(spec(1, 20, 30), labels=())


def test_keypoints_are_undone_from_the_letterbox_and_clipped():
    # a 40x20 source letterboxed into 20x20: scale 0.5, 5 rows of padding on top
    transform = Transform(0.5, 0.5, 0.0, 5.0, 40, 20)
    out = np.zeros((1, 4 + 1 + 6, 30), np.float32)
    out[0, :5, 0] = [10, 10, 8, 8, 0.9]
    out[0, 5:, 0] = [4, 7, 0.8, -3, 30, 0.2]  # (4, 7) -> (8, 4); (-3, 30) -> clipped to (0, 20)
    found = decoder(spec(1, 11, 30), keypoints=2)([out], transform)
    assert found.keypoints is not None
    np.testing.assert_allclose(found.keypoints.data[0], [[8, 4, 0.8], [0, 20, 0.2]], atol=1e-6)
    np.testing.assert_allclose(found.boxes[0], [12, 2, 28, 18])  # (6, 6, 14, 14) in the input
    assert found.to_dict()["detections"][0]["keypoints"] == [[8.0, 4.0, 0.8], [0.0, 20.0, 0.2]]


def test_nms_keeps_the_best_person_and_its_keypoints():
    out = np.zeros((1, 4 + 1 + 3, 30), np.float32)
    out[0, :, 0] = [10, 10, 8, 8, 0.6, 1, 1, 0.5]
    out[0, :, 1] = [10, 10, 8, 8, 0.9, 2, 2, 0.5]  # same box, better score
    found = decoder(spec(1, 8, 30), keypoints=1)([out], Transform.identity(20, 20))
    assert len(found) == 1 and found.keypoints.data[0, 0, :2].tolist() == [2, 2]


def test_skeletons():
    assert decoder(spec(1, 20, 30), {"kpt_shape": "[5, 3]"}, skeleton=[(0, 1), (1, 4)]).skeleton == ((0, 1), (1, 4))
    assert decoder(spec(1, 20, 30), {"kpt_shape": "[5, 3]", "lepton.skeleton": "[[0, 2]]"}).skeleton == ((0, 2),)
    with pytest.raises(ModelError, match=r"outside 0\.\.4"):
        decoder(spec(1, 20, 30), {"kpt_shape": "[5, 3]"}, skeleton=[(0, 5)])
    with pytest.raises(ModelError, match="not JSON"):
        decoder(spec(1, 20, 30), {"kpt_shape": "[5, 3]", "lepton.skeleton": "[[0, 2"})


def test_empty_and_bad_outputs():
    post = decoder(spec(1, 20, 30), {"kpt_shape": "[5, 3]"})
    found = post([np.zeros((1, 20, 30), np.float32)], Transform.identity(20, 20))
    assert len(found) == 0 and found.keypoints is not None and found.keypoints.data.shape == (0, 5, 3)
    with pytest.raises(ModelError, match="too few rows"):
        post([np.zeros((1, 12, 30), np.float32)], Transform.identity(20, 20))
    with pytest.raises(ModelError, match="one output"):
        PosePostprocessor(PoseConfig(type="pose"), [spec(1, 20, 30), spec(1, 20, 30)], {}, ())
    with pytest.raises(ModelError, match="rank-3"):
        decoder(spec(1, 20), {"kpt_shape": "[5, 3]"})
    with pytest.raises(ModelError, match=r"6\+15 values"):
        decoder(spec(1, 300, 20), {"kpt_shape": "[5, 3]", "end2end": "True"})
