import json
from pathlib import Path

import numpy as np
import pytest

from lepton_edge.core.errors import ConfigError
from lepton_edge.engines.evaluation.datasets import load_labelled, write_detection_npz
from lepton_edge.runtime.sources.shapes import random_sample

REPO = Path(__file__).resolve().parents[3]
DIGITS_HELDOUT = REPO / "models" / "digits_heldout.npz"
SHAPES_HELDOUT = REPO / "calibration" / "shapes_heldout.json"


def test_classification_npz_yields_images_and_labels():
    data = load_labelled(DIGITS_HELDOUT)
    raw = np.load(DIGITS_HELDOUT)
    assert data.task == "classify"
    assert len(data) == len(raw["labels"]) == 450
    image, label = data[7]
    np.testing.assert_array_equal(image, raw["images"][7])
    assert label == int(raw["labels"][7]) and isinstance(label, int)
    assert [lab for _, lab in data.take(5)] == raw["labels"][:5].tolist()
    assert len(list(data.take(10_000))) == 450


def test_detection_npz_groups_boxes_per_image(tmp_path):
    images = np.zeros((3, 20, 30, 3), np.uint8)
    truths = [
        (np.array([[1, 2, 3, 4], [5, 6, 7, 8]]), np.array([0, 2])),
        (np.zeros((0, 4)), np.zeros(0)),
        (np.array([[9, 9, 19, 19]]), np.array([1])),
    ]
    path = write_detection_npz(tmp_path / "det.npz", images, truths)
    data = load_labelled(path)
    assert data.task == "detect" and len(data) == 3
    items = list(data)
    np.testing.assert_array_equal(items[0][1][0], [[1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_array_equal(items[0][1][1], [0, 2])
    assert items[1][1][0].shape == (0, 4) and items[1][1][1].shape == (0,)
    np.testing.assert_array_equal(items[2][1][1], [1])
    assert items[2][1][0].dtype == np.float32


def test_detection_npz_with_boxes_out_of_image_order(tmp_path):
    path = tmp_path / "det.npz"
    np.savez(path, images=np.zeros((2, 8, 8), np.uint8), boxes=np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5.0]]),
             classes=np.array([1, 0, 1]), image_index=np.array([1, 0, 1]))
    data = load_labelled(path)
    np.testing.assert_array_equal(data[0][1][0], [[2, 2, 3, 3]])
    np.testing.assert_array_equal(data[1][1][0], [[0, 0, 1, 1], [4, 4, 5, 5]])


def test_shapes_spec_regenerates_the_same_scenes():
    data = load_labelled(SHAPES_HELDOUT)
    spec = json.loads(SHAPES_HELDOUT.read_text())
    assert data.task == "detect"
    assert len(data) == spec["seeds"][1] - spec["seeds"][0] == 300
    image, (boxes, classes) = data[3]
    expected_image, expected_boxes, expected_classes = random_sample(spec["seeds"][0] + 3, 640, 480)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(boxes, expected_boxes)
    np.testing.assert_array_equal(classes, expected_classes)
    assert load_labelled(SHAPES_HELDOUT).sha256 == data.sha256


def test_shapes_spec_identity_ignores_description(tmp_path):
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps({"generator": "shapes", "width": 64, "height": 48, "seeds": [5, 9]}))
    b.write_text(json.dumps({"generator": "shapes", "width": 64, "height": 48, "seeds": [5, 9], "description": "x"}))
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"generator": "shapes", "width": 64, "height": 48, "seeds": [5, 10]}))
    assert load_labelled(a).sha256 == load_labelled(b).sha256 != load_labelled(c).sha256
    assert load_labelled(a)[0][0].shape == (48, 64, 3)


def _npz(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"labels": np.zeros(2, np.int64)}, "no 'images' array"),
        ({"images": np.zeros((2, 4, 4), np.float32), "labels": np.zeros(2, np.int64)}, "must be uint8"),
        ({"images": np.zeros((2, 4, 4, 2), np.uint8), "labels": np.zeros(2, np.int64)}, "[N, H, W, 3]"),
        ({"images": np.zeros((0, 4, 4), np.uint8), "labels": np.zeros(0, np.int64)}, "is empty"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.zeros(3, np.int64)}, "2 images but 3 labels"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.zeros(2, np.float32)}, "'labels' must be integers"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, -1])}, "negative class id"),
        ({"images": np.zeros((2, 4, 4), np.uint8)}, "missing ['boxes', 'classes', 'image_index']"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.zeros(2, np.int64), "boxes": np.zeros((1, 4))},
         "has both 'labels'"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "boxes": np.zeros((1, 3)), "classes": np.zeros(1, np.int64),
          "image_index": np.zeros(1, np.int64)}, "[M, 4]"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "boxes": np.zeros((1, 4)), "classes": np.zeros(1, np.int64),
          "image_index": np.array([2])}, "'image_index' must be in 0..1"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "boxes": np.zeros((2, 4)), "classes": np.zeros(1, np.int64),
          "image_index": np.zeros(2, np.int64)}, "differ in length"),
    ],
)
def test_bad_npz_is_refused_with_the_problem(tmp_path, arrays, message):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(ConfigError) as err:
        load_labelled(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_unreadable_and_unknown_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_labelled(tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match="is a directory"):
        load_labelled(tmp_path)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ConfigError, match=r"unsupported labelled data file type '\.csv'"):
        load_labelled(tmp_path / "x.csv")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(ConfigError, match=r"not a readable \.npz file \(not a zip"):
        load_labelled(tmp_path / "junk.npz")
    objects = tmp_path / "objects.npz"
    np.savez(objects, images=np.zeros((1, 2, 2), np.uint8), labels=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ConfigError, match="without pickle"):
        load_labelled(objects)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON file"),
        ('{"generator": "faces", "width": 64, "height": 64, "seeds": [0, 1]}', "\"generator\": \"shapes\""),
        ('{"generator": "shapes", "width": 64, "height": 64, "seeds": [5, 5]}', "start < stop"),
        ('{"generator": "shapes", "width": 8, "height": 64, "seeds": [0, 5]}', "width"),
        ('{"generator": "shapes", "width": 64, "height": 64, "seeds": [0, 5], "colour": 1}', "colour"),
    ],
)
def test_bad_shapes_spec_is_refused(tmp_path, content, message):
    path = tmp_path / "spec.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_labelled(path)
    assert message in str(err.value)


def test_index_out_of_range(tmp_path):
    data = load_labelled(DIGITS_HELDOUT)
    with pytest.raises(IndexError, match="out of range"):
        data[450]
