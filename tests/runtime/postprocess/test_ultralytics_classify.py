"""Our preprocess + onnxruntime + classification decoder against Ultralytics' own ``predict`` (issue #10).

Both committed ``yolo11t-cls`` exports (static and dynamic, imgsz 128, softmax in the graph) run on the committed
frames (320x240, 240x320, 256x256) with the resize mode chosen from their metadata (centre crop, Ultralytics'
classification transform). The references hold Ultralytics 8.4.190's top-5 classes and probabilities rounded to
4 decimals: ours must give the same top-5 classes in the same order, probabilities within ``PROBABILITY_ATOL``
(the references' rounding, 5e-5, plus float noise: the preprocessed tensor is pixel-identical to Ultralytics').
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lepton_edge.config.pipeline import ClassifyConfig, PreprocessConfig
from lepton_edge.core.results import Classification
from lepton_edge.runtime.backends import create_backend
from lepton_edge.runtime.backends.base import Backend
from lepton_edge.runtime.postprocess import create_postprocessor, infer_task
from lepton_edge.runtime.preprocess import AntialiasedCrop, Preprocessor, Transform, cover_size

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")

MODELS = Path(__file__).resolve().parents[3] / "models" / "ultralytics"
EXPORTS = ("yolo11t-cls.onnx", "yolo11t-cls_dynamic.onnx")
PROBABILITY_ATOL = 1e-4


def reference(onnx: str) -> dict:
    return json.loads((MODELS / "classify" / onnx).with_suffix(".json").read_text())


def classify_frames(backend: Backend, frames: list[dict]) -> list[Classification]:
    """Each reference frame through our default preprocessing for the model, the backend and the decoder."""
    preprocess = Preprocessor(backend.inputs[0], PreprocessConfig(), metadata=backend.metadata)
    decode = create_postprocessor(None, backend.outputs, backend.metadata, ())
    tensor = preprocess.new_buffer()
    results = []
    for frame in frames:
        transform = preprocess(cv2.imread(str(MODELS / frame["frame"])), tensor)
        results.append(decode(backend.infer({backend.inputs[0].name: tensor}), transform))
    return results


@pytest.fixture(scope="module", params=EXPORTS)
def export(request) -> tuple[str, Backend]:
    backend = create_backend(MODELS / "classify" / request.param).load()
    yield request.param, backend
    backend.close()


def test_ultralytics_classifier_metadata_picks_classify_and_center_crop(export):
    _, backend = export
    assert infer_task(backend.outputs, backend.metadata) == "classify"
    preprocess = Preprocessor(backend.inputs[0], PreprocessConfig(), metadata=backend.metadata)
    assert preprocess.config.resize == "center-crop"
    assert (preprocess.width, preprocess.height) == (128, 128)


def test_an_explicit_resize_mode_wins_over_the_ultralytics_default(export):
    _, backend = export
    preprocess = Preprocessor(backend.inputs[0], PreprocessConfig(resize="letterbox"), metadata=backend.metadata)
    assert preprocess.config.resize == "letterbox"


def test_top5_classes_and_probabilities_match_ultralytics_predict(export):
    onnx, backend = export
    frames = reference(onnx)["frames"]
    results = classify_frames(backend, frames)
    for frame, result in zip(frames, results, strict=True):
        assert result.class_ids.tolist() == frame["top5"], frame["frame"]
        np.testing.assert_allclose(result.scores, frame["top5conf"], rtol=0, atol=PROBABILITY_ATOL,
                                   err_msg=frame["frame"])


def test_probabilities_are_reported_as_the_model_gives_them_not_softmaxed_again(export):
    _, backend = export
    probs = backend.infer({backend.inputs[0].name: np.zeros((1, 3, 128, 128), np.float32)})[0]
    decode = create_postprocessor(ClassifyConfig(type="classify", top_k=10), backend.outputs, backend.metadata, ())
    result = decode([probs], Transform.identity(128, 128))
    np.testing.assert_allclose(result.scores, probs[0][result.class_ids], rtol=0, atol=1e-7)


@pytest.mark.parametrize(("width", "height"), [(320, 240), (240, 320), (256, 256), (100, 60), (1920, 1080)])
def test_cover_size_keeps_the_short_side_exact_and_truncates_the_long_one(width, height):
    nw, nh = cover_size(width, height, 128, 128)
    assert min(nw, nh) == 128
    assert max(nw, nh) == int(128 * max(width, height) / min(width, height))


def test_center_crop_transform_maps_the_input_back_to_the_frame_centre(export):
    _, backend = export
    preprocess = Preprocessor(backend.inputs[0], PreprocessConfig(), metadata=backend.metadata)
    transform = preprocess(np.zeros((240, 320, 3), np.uint8), preprocess.new_buffer())
    # 320x240 -> 170x128, crop offset 21: the whole input is the frame's centre, about 240x240.
    box = transform.to_source(np.array([[0, 0, 128, 128]], np.float32))[0]
    np.testing.assert_allclose(box, [21 * 320 / 170, 0, 149 * 320 / 170, 240], rtol=1e-5)


def test_antialiased_crop_of_a_constant_frame_is_constant():
    frame = np.full((240, 320, 3), 77, np.uint8)
    crop = AntialiasedCrop((320, 240), (170, 128), (21, 0, 128, 128))(frame)
    assert crop.shape == (128, 128, 3)
    assert (crop == 77).all()


@pytest.mark.parametrize(
    ("row", "resized", "expected"),
    [
        ([0, 100, 200, 50], 2, [71, 121]),  # shrinking: the triangle widens to 2 pixels
        ([0, 255], 5, [0, 25, 128, 230, 255]),  # enlarging: plain bilinear, rounded half up
    ],
)
def test_antialiased_crop_gives_pillows_bilinear_values(row, resized, expected):
    """Expected values are Pillow 13's ``Image.resize(..., BILINEAR)`` (what torchvision's Resize calls)."""
    frame = np.repeat(np.array(row, np.uint8)[None, :, None], 3, axis=2).repeat(3, axis=0)
    crop = AntialiasedCrop((len(row), 3), (resized, 3), (0, 0, resized, 3))(frame)
    assert crop[0, :, 0].tolist() == expected
    assert (crop == crop[:1, :, :1]).all()
