"""Detection decoders on hand-built tensors, with a letterbox transform checked by hand numbers.

Geometry used throughout: a 200x100 source letterboxed into a 320x320 model input. The scale is
min(320/200, 320/100) = 1.6, the image fills 320x160, so there are 80 px of padding above and below.
"""

from __future__ import annotations

import numpy as np
import pytest

from lepton_edge.config.pipeline import DetectConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.postprocess.detect import (
    DetectionPostprocessor,
    decode_nms_single,
    decode_nms_split,
    decode_yolov5,
    decode_yolov8,
    detect_layout,
    split_nms_roles,
)
from lepton_edge.runtime.preprocess import Transform

LETTERBOX = Transform(scale_x=1.6, scale_y=1.6, pad_x=0.0, pad_y=80.0, source_width=200, source_height=100)
LABELS = ("person", "car", "dog")


def cfg(**kw) -> DetectConfig:
    return DetectConfig(type="detect", **kw)


def spec(name: str, *shape, dtype=np.float32) -> TensorSpec:
    return TensorSpec(name, tuple(shape), np.dtype(dtype))


# One anchor per row: cx, cy, w, h (model-input pixels), then scores for person, car, dog.
V8_ANCHORS = [
    [160, 160, 64, 32, 0.1, 0.9, 0.2],  # car 0.9 -> model [128,144,192,176] -> source [80,40,120,60]
    [162, 160, 64, 32, 0.0, 0.8, 0.0],  # car 0.8, IoU 0.94 with the first: suppressed
    [160, 160, 64, 32, 0.0, 0.0, 0.7],  # dog 0.7, same box as the first: kept unless class-agnostic
    [100, 100, 10, 10, 0.1, 0.1, 0.1],  # below conf 0.25 everywhere
    [40, 70, 40, 40, 0.5, 0.0, 0.0],  # person 0.5 -> model [20,50,60,90], top lies in the padding
    [300, 200, 20, 20, 0.3, 0.0, 0.0],  # person 0.3 -> model [290,190,310,210]
]
V8_EXPECTED = {
    "boxes": [[80, 40, 120, 60], [80, 40, 120, 60], [12.5, 0, 37.5, 6.25], [181.25, 68.75, 193.75, 81.25]],
    "scores": [0.9, 0.7, 0.5, 0.3],
    "class_ids": [1, 2, 0, 0],
}


def yolov8_output(anchors=V8_ANCHORS, dtype=np.float32) -> np.ndarray:
    return np.array(anchors, dtype).T[None]  # [1, 4+C, A]


def test_yolov8_decodes_and_maps_to_source_pixels():
    out = yolov8_output()
    assert out.shape == (1, 7, 6)
    dets = decode_yolov8(out, LETTERBOX, cfg(), LABELS)
    np.testing.assert_allclose(dets.boxes, V8_EXPECTED["boxes"], atol=1e-4)
    np.testing.assert_allclose(dets.scores, V8_EXPECTED["scores"], atol=1e-6)
    assert dets.class_ids.tolist() == V8_EXPECTED["class_ids"]
    assert dets.labels == LABELS
    assert [dets.label(int(c)) for c in dets.class_ids] == ["car", "dog", "person", "person"]


def test_yolov8_float16_output():
    dets = decode_yolov8(yolov8_output(dtype=np.float16), LETTERBOX, cfg(), LABELS)
    assert dets.class_ids.tolist() == V8_EXPECTED["class_ids"]
    np.testing.assert_allclose(dets.boxes, V8_EXPECTED["boxes"], atol=0.2)
    assert dets.boxes.dtype == np.float32 and dets.scores.dtype == np.float32


def test_yolov8_class_agnostic_suppresses_across_classes():
    dets = decode_yolov8(yolov8_output(), LETTERBOX, cfg(class_agnostic=True))
    assert dets.class_ids.tolist() == [1, 0, 0]
    np.testing.assert_allclose(dets.scores, [0.9, 0.5, 0.3], atol=1e-6)


def test_yolov8_conf_threshold_and_max_detections():
    assert decode_yolov8(yolov8_output(), LETTERBOX, cfg(conf_threshold=0.6)).class_ids.tolist() == [1, 2]
    dets = decode_yolov8(yolov8_output(), LETTERBOX, cfg(max_detections=2))
    np.testing.assert_allclose(dets.scores, [0.9, 0.7], atol=1e-6)
    # A score equal to the threshold is kept ("minimum score").
    assert decode_yolov8(yolov8_output(), LETTERBOX, cfg(conf_threshold=0.5)).class_ids.tolist() == [1, 2, 0]
    assert len(decode_yolov8(yolov8_output(), LETTERBOX, cfg(conf_threshold=0.95))) == 0


def test_yolov8_iou_threshold_controls_suppression():
    dets = decode_yolov8(yolov8_output(), LETTERBOX, cfg(iou_threshold=0.95))
    np.testing.assert_allclose(dets.scores, [0.9, 0.8, 0.7, 0.5, 0.3], atol=1e-6)


def test_yolov8_empty_and_bad_shape():
    empty = decode_yolov8(np.zeros((1, 7, 0), np.float32), LETTERBOX, cfg(), LABELS)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.labels == LABELS
    with pytest.raises(ModelError, match=r"rank-3.*\(7, 6\)"):
        decode_yolov8(np.zeros((7, 6), np.float32), LETTERBOX, cfg())
    with pytest.raises(ModelError, match="at least 5 rows"):
        decode_yolov8(np.zeros((1, 4, 6), np.float32), LETTERBOX, cfg())


# cx, cy, w, h, objectness, P(person), P(car)
V5_ROWS = [
    [160, 160, 64, 32, 0.9, 0.2, 0.8],  # car 0.72 -> source [80,40,120,60]
    [100, 100, 20, 20, 0.2, 1.0, 0.0],  # objectness 0.2 < 0.25: dropped however sure the class is
    [300, 200, 20, 20, 0.5, 0.4, 0.6],  # car 0.3 -> source [181.25,68.75,193.75,81.25]
    [50, 150, 20, 20, 0.9, 0.25, 0.25],  # objectness passes but 0.9*0.25 = 0.225 < 0.25
    [160, 160, 64, 32, 1.0, 0.9, 0.1],  # person 0.9 on the car's box: other class, kept
]


def test_yolov5_score_is_objectness_times_class():
    out = np.array(V5_ROWS, np.float32)[None]
    dets = decode_yolov5(out, LETTERBOX, cfg(), ("person", "car"))
    assert dets.class_ids.tolist() == [0, 1, 1]
    np.testing.assert_allclose(dets.scores, [0.9, 0.72, 0.3], atol=1e-6)
    np.testing.assert_allclose(
        dets.boxes, [[80, 40, 120, 60], [80, 40, 120, 60], [181.25, 68.75, 193.75, 81.25]], atol=1e-4
    )
    agnostic = decode_yolov5(out, LETTERBOX, cfg(class_agnostic=True))
    np.testing.assert_allclose(agnostic.scores, [0.9, 0.3], atol=1e-6)
    assert len(decode_yolov5(out, LETTERBOX, cfg(max_detections=1))) == 1


def test_yolov5_nothing_passes():
    out = np.array(V5_ROWS, np.float32)[None]
    assert len(decode_yolov5(out, LETTERBOX, cfg(conf_threshold=0.99))) == 0


def nms_split_outputs(num: int = 3):
    boxes = np.array([[[128, 144, 192, 176], [20, 50, 60, 90], [0, 0, 8, 8], [1, 1, 2, 2], [3, 3, 4, 4]]],
                     np.float32)
    # Entries after num_dets are padding with misleadingly high scores; they must be ignored.
    scores = np.array([[0.9, 0.6, 0.2, 0.95, 0.99]], np.float32)
    classes = np.array([[1, 0, 2, 2, 2]], np.int32)
    return np.array([[num]], np.int32), boxes, scores, classes


def test_nms_split_uses_only_num_dets_entries():
    num, boxes, scores, classes = nms_split_outputs()
    dets = decode_nms_split(num, boxes, scores, classes, LETTERBOX, cfg(), LABELS)
    assert dets.class_ids.tolist() == [1, 0]
    np.testing.assert_allclose(dets.scores, [0.9, 0.6], atol=1e-6)
    np.testing.assert_allclose(dets.boxes, [[80, 40, 120, 60], [12.5, 0, 37.5, 6.25]], atol=1e-4)
    low = decode_nms_split(num, boxes, scores, classes, LETTERBOX, cfg(conf_threshold=0.1, max_detections=2))
    np.testing.assert_allclose(low.scores, [0.9, 0.6], atol=1e-6)
    assert len(decode_nms_split(np.array([[0]], np.int32), boxes, scores, classes, LETTERBOX, cfg())) == 0
    # A num_dets larger than the arrays (corrupt) is clamped, not an IndexError.
    assert len(decode_nms_split(np.array([[99]]), boxes, scores, classes, LETTERBOX, cfg())) == 4


def test_nms_single_end2end_rows():
    rows = np.zeros((1, 5, 6), np.float32)  # unused rows stay zero, as exporters pad them
    rows[0, 0] = [20, 50, 60, 90, 0.6, 0]
    rows[0, 1] = [128, 144, 192, 176, 0.9, 1]
    rows[0, 2] = [0, 80, 16, 96, 0.3, 2]  # -> source [0, 0, 10, 10]
    dets = decode_nms_single(rows, LETTERBOX, cfg(), LABELS)
    assert dets.class_ids.tolist() == [1, 0, 2]
    np.testing.assert_allclose(dets.scores, [0.9, 0.6, 0.3], atol=1e-6)
    want = [[80, 40, 120, 60], [12.5, 0, 37.5, 6.25], [0, 0, 10, 10]]
    np.testing.assert_allclose(dets.boxes, want, atol=1e-4)
    assert decode_nms_single(rows, LETTERBOX, cfg(max_detections=1)).class_ids.tolist() == [1]
    assert decode_nms_single(rows, LETTERBOX, cfg(conf_threshold=0.5)).class_ids.tolist() == [1, 0]
    # No NMS on this layout: two identical boxes both survive.
    rows[0, 3] = [128, 144, 192, 176, 0.8, 1]
    assert decode_nms_single(rows, LETTERBOX, cfg()).class_ids.tolist() == [1, 1, 0, 2]


FOUR = [spec("num_dets", 1, 1, dtype=np.int32), spec("det_boxes", 1, 100, 4), spec("det_scores", 1, 100),
        spec("det_classes", 1, 100, dtype=np.int32)]


def test_split_roles_by_name_in_any_order():
    shuffled = [FOUR[2], FOUR[0], FOUR[3], FOUR[1]]
    assert split_nms_roles(shuffled) == (1, 3, 0, 2)
    trt = [spec("detection_classes", 1, 100, dtype=np.int32), spec("num_detections", 1, 1, dtype=np.int32),
           spec("detection_scores", 1, 100), spec("detection_boxes", 1, 100, 4)]
    assert split_nms_roles(trt) == (1, 3, 2, 0)


def test_split_roles_by_shape_and_dtype():
    names = ["a", "b", "c", "d"]
    # Integer classes are recognised wherever they are.
    shuffled = [FOUR[3], FOUR[1], FOUR[0], FOUR[2]]
    anon = [spec(n, *s.shape, dtype=s.dtype) for n, s in zip(names, shuffled, strict=True)]
    assert split_nms_roles(anon) == (2, 1, 3, 0)
    # All float: conventional order, scores before classes.
    floats = [spec(n, *s.shape) for n, s in zip(names, FOUR, strict=True)]
    assert split_nms_roles(floats) == (0, 1, 2, 3)
    assert split_nms_roles([spec(n, 1, 100) for n in names]) is None
    assert split_nms_roles(FOUR[:3]) is None


def test_postprocessor_routes_four_outputs_by_name():
    num, boxes, scores, classes = nms_split_outputs(2)
    order = [FOUR[3], FOUR[1], FOUR[0], FOUR[2]]
    post = DetectionPostprocessor(cfg(), order, {}, LABELS)
    assert post.layout == "nms"
    dets = post([classes, boxes, num, scores], LETTERBOX)
    assert dets.class_ids.tolist() == [1, 0]
    np.testing.assert_allclose(dets.boxes[0], [80, 40, 120, 60], atol=1e-4)


@pytest.mark.parametrize(
    ("shape", "metadata", "layout"),
    [
        ((1, 84, 8400), {}, "yolov8"),
        (("batch", 84, "anchors"), {}, "yolov8"),
        ((1, 6, 8400), {}, "yolov8"),
        ((1, 25200, 85), {}, "yolov5"),
        ((None, None, 85), {}, "yolov5"),
        ((1, 300, 6), {"end2end": "True"}, "nms"),
        ((1, 300, 6), {"lepton.layout": "nms"}, "nms"),
        ((1, 25200, 6), {"lepton.layout": "yolov5"}, "yolov5"),
        ((1, 84, 8400), {"end2end": "False"}, "yolov8"),
    ],
)
def test_detect_layout_auto(shape, metadata, layout):
    assert detect_layout([spec("output0", *shape)], metadata) == layout


def test_detect_layout_four_outputs():
    assert detect_layout(FOUR, {}) == "nms"


@pytest.mark.parametrize(
    ("outputs", "reason"),
    [
        ([spec("output0", 1, 300, 6)], "both the end2end NMS layout and YOLOv5"),
        ([spec("output0", 1, 3, 4)], "no supported detection layout"),
        ([spec("output0", 1, 116, 8400), spec("output1", 1, 32, 160, 160)], "no supported detection layout"),
        ([spec("logits", 1, 1000)], "no supported detection layout"),
        ([spec("output0", 8, 84, 8400)], "batch size 8"),
    ],
)
def test_detect_layout_unknown_raises_clear_error(outputs, reason):
    with pytest.raises(ModelError) as err:
        detect_layout(outputs, {})
    message = str(err.value)
    assert reason in message
    assert outputs[0].shape_str in message  # names the shapes found
    assert "yolov8 [1, 4+C, A]" in message and "yolov5 [1, A, 5+C]" in message  # the layouts supported
    assert "postprocess.layout" in message  # and what to do


def test_bad_metadata_layout():
    with pytest.raises(ModelError, match=r"lepton\.layout='ssd' is not a known layout"):
        detect_layout([spec("output0", 1, 84, 8400)], {"lepton.layout": "ssd"})


def test_explicit_layout_resolves_ambiguity_and_is_checked():
    rows = np.zeros((1, 4, 6), np.float32)
    rows[0, 0] = [128, 144, 192, 176, 0.9, 1]
    post = DetectionPostprocessor(cfg(layout="nms"), [spec("output0", 1, 4, 6)])
    assert post(list(rows[None]), LETTERBOX).class_ids.tolist() == [1]
    with pytest.raises(ModelError, match=r"postprocess\.layout is yolov8 .*output0 \[1, 84, 8400\], output1"):
        DetectionPostprocessor(cfg(layout="yolov8"), [spec("output0", 1, 84, 8400), spec("output1", 1, 32)])
    with pytest.raises(ModelError, match=r"layout is yolov5 .* does not have at least 6 columns"):
        DetectionPostprocessor(cfg(layout="yolov5"), [spec("output0", 1, 8400, 5)])
    with pytest.raises(ModelError, match=r"postprocess\.layout is nms but the four outputs"):
        DetectionPostprocessor(cfg(layout="nms"), [spec(n, 1, 100) for n in "abcd"])


def test_postprocessor_auto_yolov8_end_to_end():
    post = DetectionPostprocessor(cfg(), [spec("output0", 1, 7, "anchors")], {}, LABELS)
    assert post.layout == "yolov8"
    dets = post([yolov8_output()], LETTERBOX)
    assert dets.class_ids.tolist() == V8_EXPECTED["class_ids"]
    assert dets.to_dict()["detections"][0] == {"label": "car", "class_id": 1, "score": 0.9,
                                               "box": [80.0, 40.0, 120.0, 60.0]}


def test_label_count_mismatch_warns(caplog):
    DetectionPostprocessor(cfg(), [spec("output0", 1, 84, 8400)], {}, ("a", "b"))
    assert "2 labels but the yolov8 output" in caplog.text and "80 classes" in caplog.text
