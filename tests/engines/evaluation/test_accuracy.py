import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lepton_edge.config.pipeline import DetectConfig, PreprocessConfig
from lepton_edge.core.results import Detections
from lepton_edge.engines.evaluation.accuracy import average_precision, box_iou, mean_average_precision, top1_accuracy
from lepton_edge.runtime.assembly import preprocess_from_metadata
from lepton_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from lepton_edge.runtime.postprocess import create_postprocessor
from lepton_edge.runtime.preprocess import Preprocessor
from lepton_edge.runtime.sources.shapes import CLASSES, random_sample

A = [0, 0, 10, 10]
B = [20, 20, 40, 40]
C = [50, 0, 60, 30]


def dets(*rows: tuple[list[float], float, int]) -> Detections:
    if not rows:
        return Detections.empty()
    boxes, scores, classes = zip(*rows, strict=True)
    return Detections(np.array(boxes), np.array(scores), np.array(classes))


def gt(*rows: tuple[list[float], int]) -> tuple[np.ndarray, np.ndarray]:
    if not rows:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    boxes, classes = zip(*rows, strict=True)
    return np.array(boxes, np.float32), np.array(classes, np.int64)


def test_box_iou_hand_computed():
    iou = box_iou(np.array([A]), np.array([A, [5, 0, 15, 10], B]))
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])


def test_perfect_detections_score_one():
    preds = [dets((A, 0.9, 0), (B, 0.8, 1)), dets((C, 0.7, 2))]
    truth = [gt((A, 0), (B, 1)), gt((C, 2))]
    result = mean_average_precision(preds, truth, num_classes=3)
    assert result == {"map": 1.0, "per_class": {0: 1.0, 1: 1.0, 2: 1.0}, "images": 2}


def test_false_positive_ranked_first_halves_ap():
    # ranked: FP (p=0, r=0), TP (p=0.5, r=1) -> interpolated precision 0.5 at every recall point
    result = mean_average_precision([dets((B, 0.9, 0), (A, 0.8, 0))], [gt((A, 0))], num_classes=1)
    assert result["map"] == pytest.approx(0.5)


def test_false_positive_ranked_last_costs_nothing():
    result = mean_average_precision([dets((A, 0.9, 0), (B, 0.8, 0))], [gt((A, 0))], num_classes=1)
    assert result["map"] == pytest.approx(1.0)


def test_ranking_is_global_across_images():
    preds = [dets((B, 0.9, 0)), dets((A, 0.5, 0))]
    truth = [gt(), gt((A, 0))]
    assert mean_average_precision(preds, truth, 1)["map"] == pytest.approx(0.5)
    preds = [dets((B, 0.4, 0)), dets((A, 0.5, 0))]
    assert mean_average_precision(preds, truth, 1)["map"] == pytest.approx(1.0)


def test_missed_object_caps_recall():
    # recall reaches 0.5 only: the 51 recall points 0.00..0.50 have precision 1, the other 50 have 0
    result = mean_average_precision([dets((A, 0.9, 0))], [gt((A, 0), (B, 0))], num_classes=1)
    assert result["map"] == pytest.approx(51 / 101)


def test_no_detections_scores_zero():
    result = mean_average_precision([dets()], [gt((A, 0))], num_classes=1)
    assert result["per_class"] == {0: 0.0}


def test_wrong_class_is_a_false_positive_and_a_miss():
    result = mean_average_precision([dets((A, 0.9, 1))], [gt((A, 0))], num_classes=2)
    # class 1 has no ground truth, so it is left out of the mean
    assert result["per_class"] == {0: 0.0}
    assert result["map"] == 0.0


def test_duplicate_counts_as_false_positive():
    preds = [dets((A, 0.9, 0), ([0, 0, 10, 9], 0.8, 0), (B, 0.7, 0))]
    # ranked TP (r .5, p 1), duplicate FP (r .5, p .5), TP (r 1, p 2/3)
    result = mean_average_precision(preds, [gt((A, 0), (B, 0))], num_classes=1)
    assert result["map"] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)


def test_iou_threshold_decides_a_match():
    pred = [dets(([0, 0, 10, 4.5], 0.9, 0))]  # IoU 0.45 with A
    assert mean_average_precision(pred, [gt((A, 0))], 1)["map"] == 0.0
    assert mean_average_precision(pred, [gt((A, 0))], 1, iou_threshold=0.4)["map"] == 1.0


def test_match_goes_to_the_best_unmatched_object():
    # The first detection overlaps both objects but A more; the second fits only B.
    a, b = [0, 0, 10, 10], [6, 0, 16, 10]
    preds = [dets(([1, 0, 11, 10], 0.9, 0), ([6, 0, 16, 10], 0.8, 0))]
    assert mean_average_precision(preds, [gt((a, 0), (b, 0))], 1)["map"] == 1.0


def test_mean_is_over_classes_with_ground_truth():
    preds = [dets((A, 0.9, 0), (C, 0.8, 2))]
    truth = [gt((A, 0), (B, 1))]
    result = mean_average_precision(preds, truth, num_classes=3)
    assert result["per_class"] == {0: 1.0, 1: 0.0}
    assert result["map"] == pytest.approx(0.5)


def test_no_ground_truth_at_all_gives_nan():
    result = mean_average_precision([dets((A, 0.9, 0))], [gt()], num_classes=1)
    assert np.isnan(result["map"]) and result["per_class"] == {}


def test_order_of_images_and_detections_does_not_matter():
    rng = np.random.default_rng(0)
    preds, truth = [], []
    for _ in range(6):
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0, 80, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (n, 2))], 1)
        classes = rng.integers(0, 2, n)
        truth.append((boxes, classes))
        jitter = boxes + rng.normal(0, 2, boxes.shape)
        guessed = np.where(rng.uniform(size=n) < 0.8, classes, 1 - classes)
        preds.append(Detections(jitter, rng.uniform(0, 1, n), guessed))
    base = mean_average_precision(preds, truth, 2)
    assert 0.0 < base["map"] < 1.0  # a mixed case, so a change of order could show
    perm = rng.permutation(len(preds))
    shuffled = mean_average_precision([preds[i] for i in perm], [truth[i] for i in perm], 2)
    reversed_dets = [Detections(d.boxes[::-1], d.scores[::-1], d.class_ids[::-1]) for d in preds]
    assert shuffled["map"] == pytest.approx(base["map"])
    assert mean_average_precision(reversed_dets, truth, 2)["map"] == pytest.approx(base["map"])


def test_average_precision_of_empty_curve_is_zero():
    assert average_precision(np.array([]), np.array([])) == 0.0


@pytest.mark.parametrize(
    ("preds", "truth", "num_classes", "message"),
    [
        ([dets()], [gt(), gt()], 1, "1 predictions but 2 ground-truth"),
        ([dets((A, 0.9, 3))], [gt()], 3, r"predictions\[0\] has class id 3 outside 0..2"),
        ([dets()], [gt((A, 5))], 3, r"ground_truth\[0\] has class id 5"),
        ([dets()], [(np.zeros((2, 4)), np.zeros(3))], 1, r"ground_truth\[0\] must be"),
        ([dets()], [gt()], 0, "num_classes must be >= 1"),
    ],
)
def test_bad_inputs_say_what_and_where(preds, truth, num_classes, message):
    with pytest.raises(ValueError, match=message):
        mean_average_precision(preds, truth, num_classes)


def test_bad_iou_threshold_is_rejected():
    with pytest.raises(ValueError, match="iou_threshold"):
        mean_average_precision([dets()], [gt()], 1, iou_threshold=0.0)


def test_top1_accuracy_from_ids_and_from_logits():
    labels = np.array([0, 1, 2, 1])
    assert top1_accuracy(np.array([0, 1, 1, 1]), labels) == 0.75
    logits = np.array([[3.0, 0, 0], [0, 2, 1], [0, 0, 1], [5, 0, 0]])
    assert top1_accuracy(logits, labels) == 0.75


@pytest.mark.parametrize(
    ("predicted", "labels", "message"),
    [
        (np.array([0, 1]), np.array([0]), "2 predictions but 1 labels"),
        (np.array([]), np.array([]), "no samples"),
        (np.zeros((2, 2, 2)), np.array([0, 1]), "class ids"),
    ],
)
def test_top1_accuracy_rejects_bad_input(predicted, labels, message):
    with pytest.raises(ValueError, match=message):
        top1_accuracy(predicted, labels)


MODELS = Path(__file__).resolve().parents[3] / "models"
# The model cards' held-out numbers (models/digits_classifier.md, models/shapes_detector.md), and the scenes
# the shapes card measured (train_shapes_detector.py: HELDOUT_SEED, 300 scenes of 640x480).
DIGITS_CARD_TOP1 = 0.9978
SHAPES_CARD_MAP50 = 0.9924
SHAPES_CARD_SEEDS = range(1_000_000, 1_000_300)
CARD_TOLERANCE = 0.01
"""One point: what a new onnxruntime's kernels may move; more is a regression of the model or its path."""


def test_bundled_digits_classifier_meets_its_card():
    data = np.load(MODELS / "digits_heldout.npz")
    with OnnxRuntimeBackend(MODELS / "digits_classifier.onnx") as backend:
        (logits,) = backend.infer({"input": data["images"].astype(np.float32)[:, None] / np.float32(255)})
    assert top1_accuracy(logits, data["labels"]) >= DIGITS_CARD_TOP1 - CARD_TOLERANCE


def test_bundled_shapes_detector_meets_its_card():
    predictions, truth = [], []
    with OnnxRuntimeBackend(MODELS / "shapes_detector.onnx") as backend:
        pre = Preprocessor(backend.inputs[0], preprocess_from_metadata(PreprocessConfig(), backend.metadata))
        post = create_postprocessor(
            DetectConfig(type="detect", conf_threshold=0.001), backend.outputs, backend.metadata, ()
        )
        buffer = pre.new_buffer()
        for seed in SHAPES_CARD_SEEDS:
            image, boxes, classes = random_sample(seed, 640, 480)
            transform = pre(image, buffer)
            predictions.append(post(backend.infer({"images": buffer}), transform))
            truth.append((boxes, classes))
    result = mean_average_precision(predictions, truth, num_classes=len(CLASSES))
    assert result["map"] >= SHAPES_CARD_MAP50 - CARD_TOLERANCE, result


# --- mAP from pycocotools -------------------------------------------------------------------------------------


def _shapes_truth(count: int = 6) -> list[tuple[np.ndarray, np.ndarray]]:
    return [random_sample(seed, 160, 120)[1:] for seed in range(count)]


def _as_detections(truth, shift_fraction: float = 0.0) -> list[Detections]:
    found = []
    for boxes, classes in truth:
        shifted = boxes.astype(np.float64).copy()
        width = shifted[:, 2] - shifted[:, 0]
        shifted[:, [0, 2]] += shift_fraction * width[:, None]
        found.append(Detections(shifted, np.linspace(0.9, 0.5, len(boxes)), classes))
    return found


def test_library_map_is_one_for_perfect_predictions_on_shapes_scenes():
    truth = _shapes_truth()
    result = mean_average_precision(_as_detections(truth), truth, num_classes=len(CLASSES))
    assert result["map"] == 1.0 and set(result["per_class"].values()) == {1.0}


def test_library_map_drops_for_shifted_boxes():
    truth = _shapes_truth()
    # a shift of 0.3 widths keeps IoU 0.7 / 1.3 = 0.54: still a match at 0.5, not at 0.75
    slightly = _as_detections(truth, 0.3)
    assert mean_average_precision(slightly, truth, len(CLASSES))["map"] == 1.0
    assert mean_average_precision(slightly, truth, len(CLASSES), iou_threshold=0.75)["map"] == 0.0
    # half a width: IoU 1/3, no match anywhere
    assert mean_average_precision(_as_detections(truth, 0.5), truth, len(CLASSES))["map"] == 0.0
    half_moved = [d if i % 2 else _as_detections([t], 0.5)[0] for i, (d, t) in enumerate(zip(
        _as_detections(truth), truth, strict=True))]
    assert 0.0 < mean_average_precision(half_moved, truth, len(CLASSES))["map"] < 0.9


def test_library_map_matches_a_hand_computed_curve():
    # ranked TP (r 1/3, p 1), FP (r 1/3, p 1/2), TP (r 2/3, p 2/3), FP; one object missed:
    # recall points 0.00..0.33 take precision 1, 0.34..0.66 take 2/3, 0.67..1.00 take 0
    d = [100, 100, 110, 110]
    preds = [dets((A, 0.9, 0), (d, 0.8, 0), (B, 0.7, 0), ([200, 200, 210, 210], 0.6, 0))]
    result = mean_average_precision(preds, [gt((A, 0), (B, 0), (C, 0))], num_classes=1)
    assert result["map"] == pytest.approx((34 * 1.0 + 33 * 2 / 3) / 101)


def test_library_map_scores_only_the_best_100_detections_per_image_and_class():
    far = [([300 + 20 * i, 300, 310 + 20 * i, 310], 0.9, 0) for i in range(100)]
    preds = [dets(*far, (A, 0.1, 0))]  # the true box ranks 101st
    assert mean_average_precision(preds, [gt((A, 0))], num_classes=1)["map"] == 0.0


def test_library_map_equals_pycocotools_own_ap50_from_coco_json():
    rng = np.random.default_rng(3)
    images, objects, results = [], [], []
    preds, truth = [], []
    for image_id in range(1, 9):
        n = int(rng.integers(1, 5))
        xy = rng.uniform(0, 200, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 60, (n, 2))], 1)
        classes = rng.integers(0, 3, n)
        preds.append(Detections(boxes + rng.normal(0, 6, boxes.shape), rng.uniform(0.1, 1, n), classes))
        found, scores = preds[-1].boxes, preds[-1].scores  # as Detections holds them (float32)
        truth.append((boxes, classes))
        images.append({"id": image_id, "width": 300, "height": 300})
        for box, c in zip(boxes, classes, strict=True):
            x1, y1, x2, y2 = box.tolist()
            objects.append({"id": len(objects) + 1, "image_id": image_id, "category_id": int(c) + 1, "iscrowd": 0,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        for box, c, s in zip(found, classes, scores, strict=True):
            x1, y1, x2, y2 = box.tolist()
            results.append({"image_id": image_id, "category_id": int(c) + 1, "score": float(s),
                            "bbox": [x1, y1, x2 - x1, y2 - y1]})
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCO()
        reference.dataset = {"images": images, "annotations": objects,
                             "categories": [{"id": i} for i in (1, 2, 3)]}
        reference.createIndex()
        evaluation = COCOeval(reference, reference.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    ours = mean_average_precision(preds, truth, num_classes=3)["map"]
    assert 0.0 < ours < 1.0
    assert ours == pytest.approx(evaluation.stats[1], abs=1e-9)  # stats[1]: AP at IoU 0.50, all areas, 100 dets
