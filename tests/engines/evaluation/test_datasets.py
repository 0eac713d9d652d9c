import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

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


# --- YOLO folders and COCO JSON: written from the shapes scenes, loaded back to the npz path's boxes ---------

SCENE_SIZE = (160, 120)
NAMES = ["circle", "square", "triangle"]


def _scenes(count: int = 4, first_seed: int = 7) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [random_sample(seed, *SCENE_SIZE) for seed in range(first_seed, first_seed + count)]


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def _yolo_line(box: np.ndarray, class_id: int, kind: str = "box") -> str:
    w, h = SCENE_SIZE
    x1, y1, x2, y2 = box[0] / w, box[1] / h, box[2] / w, box[3] / h
    if kind == "polygon":  # a hexagon inside the box that touches all four sides
        xm, ym = (x1 + x2) / 2, (y1 + y2) / 2
        points = [x1, ym, xm, y1, x2, y1, x2, ym, xm, y2, x1, y2]
        return " ".join([str(class_id)] + [f"{v:.9f}" for v in points])
    values = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    keypoints = [0.5, 0.5, 2, 0, 0, 0] if kind == "pose" else []
    return " ".join([str(class_id)] + [f"{v:.9f}" for v in values + keypoints])


def _write_yolo(root: Path, scenes, split: str = "val", kind: str = "box", names=NAMES, extra: str = "") -> Path:
    for index, (image, boxes, classes) in enumerate(scenes):
        _write_png(root / "images" / split / f"{index:03d}.png", image)
        label = root / "labels" / split / f"{index:03d}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(_yolo_line(b, int(c), kind) + "\n" for b, c in zip(boxes, classes, strict=True)))
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": ".", split: f"images/{split}", "names": names}) + extra)
    return data


def _npz_of(tmp_path: Path, scenes) -> Path:
    return write_detection_npz(tmp_path / "ref.npz", np.stack([s[0] for s in scenes]), [(s[1], s[2]) for s in scenes])


def _assert_same_sets(loaded, reference, atol: float = 1e-3) -> None:
    assert loaded.task == "detect" and len(loaded) == len(reference)
    for (image, (boxes, classes)), (ref_image, (ref_boxes, ref_classes)) in zip(loaded, reference, strict=True):
        np.testing.assert_array_equal(image, ref_image)
        assert boxes.dtype == np.float32 and classes.dtype == np.int64
        np.testing.assert_allclose(boxes, ref_boxes, atol=atol)
        np.testing.assert_array_equal(classes, ref_classes)


@pytest.mark.parametrize("kind", ["box", "polygon", "pose"])
def test_yolo_folder_loads_to_the_npz_boxes(tmp_path, kind):
    scenes = _scenes()
    extra = "kpt_shape: [2, 3]\n" if kind == "pose" else ""
    data = _write_yolo(tmp_path / "yolo", scenes, kind=kind, extra=extra)
    reference = load_labelled(_npz_of(tmp_path, scenes))
    _assert_same_sets(load_labelled(data), reference)
    _assert_same_sets(load_labelled(data.parent), reference)  # the folder holding data.yaml
    assert load_labelled(data).class_names == tuple(NAMES)


def test_yolo_names_as_dict_split_choice_and_list_files(tmp_path):
    root = tmp_path / "yolo"
    val, train = _scenes(2), _scenes(3, first_seed=50)
    _write_yolo(root, train, split="train")
    data = _write_yolo(root, val, split="val", names={0: "circle", 1: "square", 2: "triangle"})
    data.write_text(yaml.safe_dump({"train": "train.txt", "val": "images/val", "names": {0: "c", 1: "s", 2: "t"}}))
    (root / "train.txt").write_text("".join(f"./images/train/{i:03d}.png\n" for i in range(3)))
    assert len(load_labelled(data)) == 2  # val first
    assert load_labelled(data).class_names == ("c", "s", "t")
    _assert_same_sets(load_labelled(f"{data}:train"), load_labelled(_npz_of(tmp_path, train)))
    with pytest.raises(ConfigError, match=r"has no split 'test'"):
        load_labelled(f"{data}:test")


def test_yolo_image_without_label_has_no_objects(tmp_path):
    data = _write_yolo(tmp_path, _scenes(2))
    (tmp_path / "labels" / "val" / "001.txt").unlink()
    (tmp_path / "labels" / "val" / "000.txt").write_text("\n")
    for _, (boxes, classes) in load_labelled(data):
        assert boxes.shape == (0, 4) and classes.shape == (0,)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2", "4 columns, expected 5 (class cx cy w h) or a polygon"),
        ("0 0.5 0.5 0.2 0.2 0.1", "6 columns"),
        ("3 0.5 0.5 0.2 0.2", "class 3 outside 0..2"),
        ("-1 0.5 0.5 0.2 0.2", "class -1 outside 0..2"),
        ("0.5 0.5 0.5 0.2 0.2", "class 0.5 outside"),
        ("0 1.5 0.5 0.2 0.2", "coordinate 1.5 outside 0..1"),
        ("0 0.1 0.1 0.2 0.3 -0.2 0.5", "coordinate -0.2 outside 0..1"),
        ("0 a 0.5 0.2 0.2", "not all numbers"),
    ],
)
def test_yolo_malformed_label_names_file_and_line(tmp_path, line, message):
    data = _write_yolo(tmp_path, _scenes(1))
    label = tmp_path / "labels" / "val" / "000.txt"
    label.write_text(label.read_text().splitlines()[0] + "\n\n" + line + "\n")
    with pytest.raises(ConfigError) as err:
        load_labelled(data)
    assert f"{label}:3: " in str(err.value) and message in str(err.value)


def test_yolo_pose_line_needs_the_keypoint_columns(tmp_path):
    data = _write_yolo(tmp_path, _scenes(1), extra="kpt_shape: [2, 3]\n")
    label = tmp_path / "labels" / "val" / "000.txt"
    label.write_text("0 0.5 0.5 0.2 0.2 0.1 0.1\n")
    with pytest.raises(ConfigError, match=r"000\.txt:1: 7 columns, expected 11"):
        load_labelled(data)


def test_yolo_label_without_image_is_named(tmp_path):
    data = _write_yolo(tmp_path, _scenes(1))
    orphan = tmp_path / "labels" / "val" / "lost.txt"
    orphan.write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ConfigError, match="label file without an image") as err:
        load_labelled(data)
    assert str(orphan) in str(err.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"val": "images/val"}, "no 'names'"),
        ({"val": "images/val", "names": {0: "a", 2: "b"}}, "'names' keys must be the class ids 0..1"),
        ({"train": "images/train", "names": NAMES}, "images/train is neither an image folder nor a .txt list"),
        ({"names": NAMES}, "has no split; splits named: none"),
        ({"val": "images/val", "names": NAMES, "kpt_shape": [17]}, "'kpt_shape' must be"),
    ],
)
def test_yolo_bad_data_yaml(tmp_path, spec, message):
    data = _write_yolo(tmp_path, _scenes(1))
    data.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        load_labelled(data)
    assert message in str(err.value) and str(data) in str(err.value)


def _coco_document(scenes, category_ids=(3, 7, 1)) -> dict:
    images, annotations = [], []
    for index, (_, boxes, classes) in enumerate(scenes):
        images.append({"id": 100 + index, "file_name": f"{index:03d}.png", "width": SCENE_SIZE[0],
                       "height": SCENE_SIZE[1]})
        for box, class_id in zip(boxes.tolist(), classes.tolist(), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + index, "iscrowd": 0,
                                "category_id": category_ids[class_id],
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    categories = [{"id": category_id, "name": name} for category_id, name in zip(category_ids, NAMES, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _write_coco(json_path: Path, image_folder: Path, scenes, document: dict | None = None) -> Path:
    for index, (image, _, _) in enumerate(scenes):
        _write_png(image_folder / f"{index:03d}.png", image)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(document or _coco_document(scenes)))
    return json_path


def test_coco_json_loads_to_the_npz_boxes_with_categories_in_file_order(tmp_path):
    scenes = _scenes()
    path = _write_coco(tmp_path / "annotations" / "instances_val2017.json", tmp_path / "val2017", scenes)
    loaded = load_labelled(path)
    _assert_same_sets(loaded, load_labelled(_npz_of(tmp_path, scenes)), atol=1e-4)
    assert loaded.class_names == tuple(NAMES)  # category ids 3, 7, 1 -> classes 0, 1, 2


def test_coco_images_next_to_the_json_or_given(tmp_path):
    scenes = _scenes(2)
    beside = _write_coco(tmp_path / "a" / "instances_x.json", tmp_path / "a", scenes)
    assert len(load_labelled(beside)) == 2
    elsewhere = _write_coco(tmp_path / "b" / "labels.json", tmp_path / "pictures", scenes)
    with pytest.raises(ConfigError, match=r"'000\.png' not found in"):
        load_labelled(elsewhere)
    _assert_same_sets(load_labelled(elsewhere, images=tmp_path / "pictures"), load_labelled(_npz_of(tmp_path, scenes)))


def test_coco_crowd_regions_and_images_without_annotations(tmp_path):
    scenes = _scenes(2)
    document = _coco_document(scenes)
    first = [a for a in document["annotations"] if a["image_id"] == 100]
    first[0]["iscrowd"] = 1
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] == 100]
    loaded = load_labelled(_write_coco(tmp_path / "instances_val.json", tmp_path, scenes, document))
    assert len(loaded[0][1][1]) == len(first) - 1
    assert loaded[1][1][0].shape == (0, 4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["annotations"][1].update(category_id=99), "annotations[1] (id 2): category_id 99 is not in"),
        (lambda d: d["annotations"][0].update(image_id=5), "annotations[0] (id 1): image_id 5 is not in 'images'"),
        (lambda d: d["annotations"][0].update(bbox=[150, 10, 30, 10]), "annotations[0] (id 1): bbox [150, 10, 30, 10]"
                                                                       " is not inside its 160x120 image"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "'bbox' must be [x, y, width, height]"),
        (lambda d: d["images"][1].update(file_name="gone.png"), "1 image(s) not found"),
        (lambda d: d.update(categories=[]), "'categories' must be a non-empty list"),
        (lambda d: d["categories"].append({"id": 3}), "'categories' need unique integer ids"),
    ],
)
def test_coco_malformed_file_is_named(tmp_path, change, message):
    scenes = _scenes(2)
    document = _coco_document(scenes)
    change(document)
    path = _write_coco(tmp_path / "instances_val.json", tmp_path, scenes, document)
    with pytest.raises(ConfigError) as err:
        load_labelled(path)
    assert message in str(err.value) and str(path) in str(err.value)
