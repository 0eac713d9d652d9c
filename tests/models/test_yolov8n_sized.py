"""The torch-free YOLOv8n-sized generator: a valid ONNX file, the Ultralytics layout, YOLOv8n's size."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lepton_edge.data import yolov8n_sized as yolo

# The script in models/ (run as `python models/yolov8n_sized.py`); the package's module is a link to it.
MODULE_PATH = Path(__file__).resolve().parents[2] / "models" / "yolov8n_sized.py"
YOLOV8N_PARAMETERS = 3.2e6


def _parameter_count(model: onnx.ModelProto) -> int:
    """Conv weights and biases; the anchor and stride constants (which grow with size) are left out."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.name.endswith((".weight", ".bias")))


def _run(path: Path, image: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": image})[0]


@pytest.fixture(scope="module")
def model_320(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return yolo.build_yolov8n_sized(tmp_path_factory.mktemp("yolo") / "yolov8n_sized_320.onnx", size=320)


@pytest.fixture(scope="module")
def output_320(model_320: Path) -> np.ndarray:
    image = np.random.default_rng(7).random((1, 3, 320, 320), dtype=np.float32)
    return _run(model_320, image)


def test_model_is_valid_onnx_with_declared_input_and_output(model_320: Path) -> None:
    model = onnx.load(model_320)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    (graph_input,) = model.graph.input
    assert graph_input.name == "images"
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [1, 3, 320, 320]
    (graph_output,) = model.graph.output
    assert graph_output.name == "output0"
    assert graph_output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_output_has_ultralytics_layout_and_finite_values(output_320: np.ndarray) -> None:
    anchors = (320 // 8) ** 2 + (320 // 16) ** 2 + (320 // 32) ** 2
    assert output_320.shape == (1, 4 + 80, anchors)
    assert output_320.dtype == np.float32
    assert np.isfinite(output_320).all()


def test_class_scores_are_sigmoid_probabilities_that_vary(output_320: np.ndarray) -> None:
    scores = output_320[0, 4:]
    assert scores.min() > 0.0
    assert scores.max() < 1.0
    assert scores.max() - scores.min() > 1e-3


def test_boxes_are_decoded_around_their_anchor_cells(output_320: np.ndarray) -> None:
    """DFL gives each side a distance of 0..15 cells from the cell centre, scaled by the level's stride."""
    cx, cy, w, h = output_320[0, :4]
    centres_x, centres_y, strides = [], [], []
    for stride in (8, 16, 32):
        cells = 320 // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centres_x.append((xs.ravel() + 0.5) * stride)
        centres_y.append((ys.ravel() + 0.5) * stride)
        strides.append(np.full(cells * cells, stride))
    anchor_x, anchor_y, stride = map(np.concatenate, (centres_x, centres_y, strides))
    tolerance = 1e-3 * stride
    for size in (w, h):
        assert (size >= 0).all()
        assert (size <= 2 * 15 * stride + tolerance).all()
    # left + right = w and |right - left| / 2 = |cx - anchor|, with both distances >= 0
    assert (np.abs(cx - anchor_x) <= w / 2 + tolerance).all()
    assert (np.abs(cy - anchor_y) <= h / 2 + tolerance).all()
    assert w.std() > 1.0  # the boxes are not all alike


def test_size_matches_yolov8n_and_does_not_depend_on_input_size(model_320: Path, tmp_path: Path) -> None:
    parameters = _parameter_count(onnx.load(model_320))
    assert abs(parameters - YOLOV8N_PARAMETERS) <= 0.2 * YOLOV8N_PARAMETERS
    small = yolo.build_yolov8n_sized(tmp_path / "small.onnx", size=64)
    assert _parameter_count(onnx.load(small)) == parameters


def test_conv_flops_match_yolov8n(model_320: Path) -> None:
    """YOLOv8n is 8.7 GFLOPs at 640, so about a quarter of that at 320 (2 FLOPs per multiply-add)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(model_320))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    flops = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            _, c_in, kh, kw = weights[node.input[1]]
            flops += 2 * int(np.prod(shapes[node.output[0]])) * c_in * kh * kw
    expected = 8.7e9 / 4
    assert abs(flops - expected) <= 0.2 * expected


def test_metadata_names_task_and_layout(model_320: Path) -> None:
    metadata = {p.key: p.value for p in onnx.load(model_320).metadata_props}
    assert metadata["lepton.task"] == "detect"
    assert metadata["lepton.layout"] == "yolov8"
    names = ast.literal_eval(metadata["names"])
    assert names == {i: f"class{i}" for i in range(80)}


def test_same_seed_gives_the_same_file_and_another_seed_other_weights(
    model_320: Path, tmp_path: Path
) -> None:
    again = yolo.build_yolov8n_sized(tmp_path / "again.onnx", size=320, seed=0)
    assert again.read_bytes() == model_320.read_bytes()
    other = onnx.load(yolo.build_yolov8n_sized(tmp_path / "other.onnx", size=320, seed=1))
    reference = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(model_320).graph.initializer}
    first_conv = next(t for t in other.graph.initializer if t.name.endswith(".weight"))
    assert not np.array_equal(onnx.numpy_helper.to_array(first_conv), reference[first_conv.name])


def test_class_count_and_opset_are_honoured(tmp_path: Path) -> None:
    path = yolo.build_yolov8n_sized(tmp_path / "three.onnx", size=64, num_classes=3, opset=13)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 13
    assert ast.literal_eval({p.key: p.value for p in model.metadata_props}["names"]) == {
        0: "class0",
        1: "class1",
        2: "class2",
    }
    output = _run(path, np.full((1, 3, 64, 64), 0.5, dtype=np.float32))
    assert output.shape == (1, 4 + 3, 8 * 8 + 4 * 4 + 2 * 2)
    assert np.isfinite(output).all()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"size": 100}, "size must be a positive multiple of 32"),
        ({"size": 0}, "size must be a positive multiple of 32"),
        ({"num_classes": 0}, "num_classes must be at least 1"),
        ({"opset": 12}, "opset must be between 13 and"),
    ],
)
def test_bad_arguments_are_refused_before_writing(arguments: dict, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    with pytest.raises(ValueError, match=message):
        yolo.build_yolov8n_sized(path, **arguments)
    assert not path.exists()


@pytest.mark.integration
def test_command_line_writes_the_model_and_rejects_a_bad_size(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "cli.onnx"
    done = subprocess.run(
        [sys.executable, str(MODULE_PATH), str(out), "--size", "64", "--classes", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    output = onnx.load(out).graph.output[0]
    assert [d.dim_value for d in output.type.tensor_type.shape.dim] == [1, 6, 84]

    bad = subprocess.run(
        [sys.executable, str(MODULE_PATH), str(tmp_path / "bad.onnx"), "--size", "100"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "size must be a positive multiple of 32" in bad.stderr
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.integration
def test_module_imports_only_numpy_and_onnx() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('yolov8n_sized', {str(MODULE_PATH)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "heavy = ('torch', 'onnxruntime', 'cv2', 'lepton_edge')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
