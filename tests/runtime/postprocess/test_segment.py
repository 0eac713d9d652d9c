"""The segmentation decoder on synthetic outputs: layouts, masks in source pixels, formats, empty and bad outputs."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from lepton_edge.config.pipeline import SegmentConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.postprocess.segment import SegmentationPostprocessor, Taps
from lepton_edge.runtime.preprocess import Transform

M = 2  # mask coefficients


def spec(name: str, *shape) -> TensorSpec:
    return TensorSpec(name, tuple(shape), np.dtype(np.float32))


def prototypes(size: int = 8) -> np.ndarray:
    """Channel 0: +8 on prototype pixels 2..5 (a 16x16 square at input pixels 8..23 of a 32 input), -8 elsewhere;
    channel 1: zero."""
    protos = np.full((1, M, size, size), -8.0, np.float32)
    protos[0, 0, 2:6, 2:6] = 8.0
    protos[0, 1] = 0.0
    return protos


def yolov8_output(boxes_cxcywh: list[list[float]], scores: list[float], coefficients: list[list[float]],
                  anchors: int = 20) -> np.ndarray:
    """[1, 4 + 1 class + M, anchors]; unused anchors score 0."""
    out = np.zeros((1, 4 + 1 + M, anchors), np.float32)
    for i, (box, score, coef) in enumerate(zip(boxes_cxcywh, scores, coefficients, strict=True)):
        out[0, :4, i], out[0, 4, i], out[0, 5:, i] = box, score, coef
    return out


YOLOV8 = [spec("output0", 1, 4 + 1 + M, 20), spec("output1", 1, M, 8, 8)]
END2END = [spec("output0", 1, 5, 6 + M), spec("output1", 1, M, 8, 8)]
IDENTITY = Transform.identity(32, 32)


def decoder(outputs=YOLOV8, metadata=None, **config) -> SegmentationPostprocessor:
    return SegmentationPostprocessor(SegmentConfig(type="segment", **config), outputs, metadata or {}, ("blob",))


def test_a_mask_is_the_prototype_cropped_to_its_box_in_source_pixels():
    post = decoder()
    assert post.layout == "yolov8"
    # a box over the square's left half: the mask is the square cut at the box's right edge (x < 16)
    found = post([yolov8_output([[12, 16, 8, 32]], [0.9], [[1, 0]]), prototypes()], IDENTITY)
    assert len(found) == 1 and found.masks is not None
    dense = found.masks.dense(0)
    assert dense.shape == (32, 32) and dense.dtype == bool
    ys, xs = np.nonzero(dense)
    assert xs.min() >= 8 and xs.max() == 15 and 8 <= ys.min() <= 10 and 21 <= ys.max() <= 23
    rle = found.masks.rle(0)
    assert rle["size"] == [32, 32]
    decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), dense)
    assert found.to_dict()["detections"][0]["mask"] == {"rle": rle}


def test_masks_follow_the_letterbox_back_to_the_source():
    # a 64x32 source letterboxed into 32x32: scale 0.5, 8 rows of padding on top
    transform = Transform(0.5, 0.5, 0.0, 8.0, 64, 32)
    found = decoder()([yolov8_output([[16, 16, 32, 32]], [0.9], [[1, 0]]), prototypes()], transform)
    assert found.masks is not None and (found.masks.height, found.masks.width) == (32, 64)
    ys, xs = np.nonzero(found.masks.dense(0))
    # input square 8..23 -> source x 16..47, y (8..23 - 8) * 2 = 0..31
    assert 15 <= xs.min() <= 19 and 44 <= xs.max() <= 48 and ys.min() <= 1 and ys.max() >= 30


def test_end_to_end_rows_need_no_nms_and_keep_their_order():
    rows = np.zeros((1, 5, 6 + M), np.float32)
    rows[0, 0] = [8, 8, 24, 24, 0.8, 0, 1, 0]
    rows[0, 1] = [8, 8, 24, 24, 0.7, 0, 1, 0]  # the same box again: end-to-end rows are not suppressed
    post = decoder(END2END, {"end2end": "True"})
    assert post.layout == "end2end"
    found = post([rows, prototypes()], IDENTITY)
    assert found.scores.tolist() == pytest.approx([0.8, 0.7]) and len(found.masks) == 2


def test_detections_without_mask_pixels_are_dropped():
    found = decoder()([yolov8_output([[12, 16, 8, 32], [28, 4, 6, 6]], [0.9, 0.8], [[1, 0], [1, 0]]), prototypes()],
                      IDENTITY)
    assert len(found) == 1 and found.scores[0] == pytest.approx(0.9)  # the corner box holds no square pixel


def test_mask_threshold_moves_the_edge():
    protos = np.zeros((1, M, 8, 8), np.float32)
    protos[0, 0] = np.linspace(-4, 4, 8)[None, :]  # logits rising left to right
    output = yolov8_output([[16, 16, 32, 32]], [0.9], [[1, 0]])
    low = decoder(mask_threshold=0.2)([output, protos], IDENTITY).masks.areas()[0]
    high = decoder(mask_threshold=0.8)([output, protos], IDENTITY).masks.areas()[0]
    assert low > high > 0


def test_nothing_above_conf_gives_empty_detections_with_empty_masks():
    found = decoder()([yolov8_output([[12, 16, 8, 32]], [0.1], [[1, 0]]), prototypes()], Transform.identity(40, 30))
    assert len(found) == 0 and found.masks is not None and len(found.masks) == 0
    assert (found.masks.height, found.masks.width) == (30, 40) and found.to_dict() == {"detections": []}


def test_polygon_format_writes_contours():
    found = decoder(mask_format="polygon")([yolov8_output([[16, 16, 32, 32]], [0.9], [[1, 0]]), prototypes()],
                                            IDENTITY)
    (polygon,) = found.to_dict()["detections"][0]["mask"]["polygons"]
    xs, ys = polygon[0::2], polygon[1::2]
    assert min(xs) >= 7 and max(xs) <= 24 and min(ys) >= 7 and max(ys) <= 24


@pytest.mark.parametrize(("outputs", "message"), [
    ([spec("output0", 1, 7, 6)], "expects a box output"),
    ([spec("a", 1, 7, 6), spec("b", 1, 7, 6)], "expects a box output"),
    ([spec("output0", 1, 5, 20), spec("output1", 1, M, 8, 8)], "too few"),
    ([spec("output0", 1, 300, 40), spec("output1", 1, 32, 8, 8)], r"6\+32 values"),
])
def test_bad_layouts_fail_naming_the_shapes(outputs, message):
    metadata = {"end2end": "True"} if outputs[0].shape[1] == 300 else {}
    with pytest.raises(ModelError, match=message):
        decoder(outputs, metadata)


def test_bad_arrays_at_run_time_fail_clearly():
    post = decoder()
    with pytest.raises(ModelError, match="rank-4"):
        post([yolov8_output([[12, 16, 8, 32]], [0.9], [[1, 0]]), np.zeros((M, 8, 8), np.float32)], IDENTITY)
    with pytest.raises(ModelError, match="too few rows"):
        post([np.zeros((1, 5, 6), np.float32), prototypes()], IDENTITY)


def test_taps_resample_like_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    image = rng.normal(size=(10, 7)).astype(np.float32)
    rows, cols = Taps.linear(23, 10), Taps.linear(5, 7)
    ours = cols.apply(rows.apply(image, 0), 1)
    np.testing.assert_allclose(ours, cv2.resize(image, (5, 23), interpolation=cv2.INTER_LINEAR), atol=1e-5)
