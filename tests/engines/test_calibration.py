"""INT8 calibration: tables from real data sets run through real onnxruntime, their files, the TensorRT cache
and the QDQ export."""

from __future__ import annotations

import argparse
import json
import logging
import struct
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lepton_edge.cli import calibrate as calibrate_command
from lepton_edge.config.pipeline import PreprocessConfig
from lepton_edge.core.errors import ConfigError, ModelError, SourceError
from lepton_edge.engines.calibration import (
    CalibrationTable,
    calibrate,
    dataset_manifest,
    load_table,
    quantize_qdq,
    read_tensorrt_cache,
    tensorrt_algorithm,
    write_table,
    write_tensorrt_cache,
)
from lepton_edge.engines.calibration.choice import choose_ranges, warn_clipped
from lepton_edge.engines.calibration.methods import entropy_threshold
from lepton_edge.engines.calibration.statistics import TensorStats
from lepton_edge.engines.onnx_tools import inspect_onnx
from lepton_edge.engines.tensorrt_builder import read_calibration_cache
from lepton_edge.runtime.platform import probe_tensorrt

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits_classifier.onnx"
DIGITS_HELDOUT = ROOT / "models" / "digits_heldout.npz"
DIGITS_CALIBRATION = ROOT / "calibration" / "digits.npy"
SHAPES_CALIBRATION = ROOT / "calibration" / "shapes"

# ------------------------------------------------------------------------------------------------------
# Small models built by hand


def save(nodes, inputs, outputs, inits, path: Path, opset: int = 17, metadata: dict | None = None) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def f32(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


W = np.array([[1.0, -2.0, 0.5], [0.25, 1.5, -1.0], [-0.75, 0.5, 2.0], [1.0, 1.0, 1.0]], np.float32)
B = np.array([0.1, -0.2, 0.3], np.float32)


def mlp(path: Path) -> Path:
    """x [N, 4] -> MatMul W -> h -> Tanh -> t -> Add B -> y [N, 3]: every activation computable with numpy."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("Add", ["t", "B"], ["y"])]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")]
    return save(nodes, [f32("x", ["N", 4])], [f32("y", ["N", 3])], inits, path)


def mlp_activations(x: np.ndarray) -> dict[str, np.ndarray]:
    h = x @ W
    t = np.tanh(h)
    return {"x": x, "h": h, "t": t, "y": t + B}


def passthrough(path: Path, shape: list) -> Path:
    """y = x * 1: its input and output ranges are the data's own."""
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    return save([helper.make_node("Mul", ["x", "one"], ["y"])], [f32("x", shape)], [f32("y", shape)], [one], path)


def conv_net(path: Path, layout: str = "nchw", spatial: tuple = (16, 16), opset: int = 17,
             metadata: dict | None = None) -> Path:
    """Conv -> SiLU -> global mean, dynamic batch; NHWC models start with a Transpose."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b")]
    nodes, x = [], "images"
    h, w = spatial
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2]))
        x, shape = "nchw", ["N", h, w, 3]
    else:
        shape = ["N", 3, h, w]
    nodes += [helper.make_node("Conv", [x, "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
              helper.make_node("Sigmoid", ["conv"], ["gate"]), helper.make_node("Mul", ["conv", "gate"], ["act"]),
              helper.make_node("ReduceMean", ["act"], ["pooled"], axes=[2, 3], keepdims=0)]
    return save(nodes, [f32("images", shape)], [f32("pooled", ["N", 8])], inits, path, opset, metadata)


# ------------------------------------------------------------------------------------------------------
# Data sets written by the tests


def grey_folder(folder: Path, levels: list[int], size: tuple[int, int] = (20, 16)) -> Path:
    """Flat grey PNG images (lossless), named so that name order is list order."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, level in enumerate(levels):
        assert cv2.imwrite(str(folder / f"img_{i:03d}.png"), np.full((size[1], size[0], 3), level, np.uint8))
    return folder


def noise_folder(folder: Path, count: int, size: tuple[int, int] = (20, 16)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for i in range(count):
        assert cv2.imwrite(str(folder / f"n_{i:03d}.png"), rng.integers(0, 256, (size[1], size[0], 3), np.uint8))
    return folder


def grey_input(level: int) -> float:
    """What the runtime's Preprocessor makes of a grey level with scale 1/255 (float32 arithmetic)."""
    return float(np.float32(level) * np.float32(1 / 255.0))


GREY_PREPROCESS = PreprocessConfig(size=(8, 8), resize="stretch", scale=1 / 255.0)


def quantize_scales(model_path: Path) -> dict[str, float]:
    """Activation tensor name -> scale of the QuantizeLinear node quantizing it."""
    model = onnx.load(str(model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}


def uint8_scale(lo: float, hi: float) -> float:
    """onnxruntime's asymmetric uint8 scale for a range (which it widens to include 0)."""
    return (max(hi, 0.0) - min(lo, 0.0)) / 255.0


# ------------------------------------------------------------------------------------------------------
# Ranges


def test_minmax_ranges_are_the_true_activation_extremes(tmp_path):
    model = mlp(tmp_path / "mlp.onnx")
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32) * 2
    np.save(tmp_path / "x.npy", x)
    table = calibrate(model, tmp_path / "x.npy", method="minmax", samples=40, progress=False)
    assert set(table.ranges) == {"x", "h", "t", "y"}
    for name, value in mlp_activations(x).items():
        np.testing.assert_allclose(table.ranges[name], (value.min(), value.max()), rtol=1e-5, err_msg=name)
    assert table.input_shapes == {"x": [1, 4]}
    assert table.preprocess == {}  # tensors at the model input go in unchanged
    assert table.samples == 40 and table.percentile is None


def test_samples_are_a_seeded_sorted_choice_of_the_items(tmp_path):
    levels = [5 * i + 3 for i in range(30)]
    folder = grey_folder(tmp_path / "grey", levels)
    model = passthrough(tmp_path / "p.onnx", [1, 3, 8, 8])
    for seed in (0, 7):
        table = calibrate(model, folder, method="minmax", samples=6, seed=seed, preprocess=GREY_PREPROCESS,
                          progress=False)
        chosen = np.sort(np.random.default_rng(seed).choice(len(levels), size=6, replace=False))
        picked = [levels[i] for i in chosen]
        assert table.ranges["x"] == (grey_input(min(picked)), grey_input(max(picked)))
        assert table.samples == 6 and table.seed == seed


def test_the_same_inputs_give_the_same_table_byte_for_byte(tmp_path):
    folder = noise_folder(tmp_path / "noise", 12)
    model = conv_net(tmp_path / "c.onnx")
    tables = [calibrate(model, folder, method="entropy", samples=8, seed=3, progress=False,
                        preprocess=PreprocessConfig(resize="stretch")) for _ in range(2)]
    files = []
    for i, table in enumerate(tables):
        files.append(write_table(table.model_copy(update={"created_at": "fixed"}), tmp_path / f"t{i}.json"))
    assert files[0].read_bytes() == files[1].read_bytes()
    assert {"images", "conv", "gate", "act", "pooled"} <= set(tables[0].ranges)


def heavy_tailed(tmp_path: Path) -> tuple[Path, Path, float]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 1024)).astype(np.float32)
    x[[3, 17, 40], [5, 900, 512]] = [500.0, -350.0, 420.0]  # rare, huge outliers
    np.save(tmp_path / "tails.npy", x)
    return passthrough(tmp_path / "p.onnx", ["N", 1024]), tmp_path / "tails.npy", float(np.abs(x).max())


def test_entropy_and_percentile_clip_heavy_tails_that_minmax_keeps(tmp_path):
    model, data, amax = heavy_tailed(tmp_path)
    width = {}
    for method in ("minmax", "entropy", "percentile"):
        table = calibrate(model, data, method=method, samples=64, progress=False)
        lo, hi = table.ranges["x"]
        width[method] = max(-lo, hi)
        assert table.method == method
    assert width["minmax"] == pytest.approx(amax)
    # The entropy search starts at 128 of the histogram's 4096 bins, so it can clip to 1/32 of the range.
    assert width["entropy"] < 0.1 * width["minmax"]
    assert width["percentile"] < 0.02 * width["minmax"]


def test_percentile_100_keeps_the_full_range_and_lower_percentiles_clip_more(tmp_path):
    model, data, amax = heavy_tailed(tmp_path)
    widths = []
    for p in (100.0, 99.9, 99.0):
        lo, hi = calibrate(model, data, method="percentile", percentile=p, samples=64, progress=False).ranges["x"]
        widths.append(max(-lo, hi))
    assert widths[0] == pytest.approx(amax)
    assert widths[0] > widths[1] > widths[2]


def reference_kl(sliced: np.ndarray, cut: float) -> float:
    """KL(P || Q) for one candidate, written out bin by bin."""
    p = sliced.copy()
    p[-1] += cut
    merged, q = len(sliced) // 128, np.zeros(len(sliced))
    for level in range(128):
        lo, hi = level * merged, (level + 1) * merged if level < 127 else len(sliced)
        filled = [j for j in range(lo, hi) if p[j] > 0]
        for j in filled:
            q[j] = sliced[lo:hi].sum() / len(filled)
    kept = p > 0
    p, q = p[kept] / p.sum(), np.maximum(q[kept] / q.sum(), 1e-12)
    return float(np.sum(p * np.log(p / q)))


@pytest.mark.parametrize("bins, gap", [(129, False), (300, False), (700, True)])
def test_entropy_threshold_matches_a_bin_by_bin_search(bins, gap):
    rng = np.random.default_rng(bins)
    values = np.abs(rng.standard_t(3, 20000))
    hist = np.bincount((values / values.max() * (bins - 1)).astype(int), minlength=4096).astype(np.int64)
    if gap:
        hist[300 : bins - 1] = 0  # an empty stretch before one far outlier bin
    kls = [reference_kl(hist[:i].astype(float), float(hist[i:].sum())) for i in range(128, bins + 1)]
    expected = bins if bins <= 128 else 128 + int(np.argmin(kls))
    assert entropy_threshold(hist, 0.5) == expected * 0.5


def test_entropy_keeps_nearly_the_whole_range_of_uniform_data(tmp_path):
    x = np.random.default_rng(2).uniform(-3, 3, (32, 512)).astype(np.float32)
    np.save(tmp_path / "u.npy", x)
    lo, hi = calibrate(passthrough(tmp_path / "p.onnx", ["N", 512]), tmp_path / "u.npy", method="entropy",
                       samples=32, progress=False).ranges["x"]
    assert -3 <= lo < -2.7 and 2.7 < hi <= 3


# ------------------------------------------------------------------------------------------------------
# Ranges chosen per tensor: bounded activations and heads keep their range, far clipping is reported


def scores_head(path: Path) -> Path:
    """A detector head in miniature: x -> MatMul (identity) -> logits -> Sigmoid -> scores (output), and a
    feature branch logits + 8 -> Relu -> features (internal) -> MatMul -> embedding (output)."""
    inits = [numpy_helper.from_array(np.eye(16, dtype=np.float32), "W1"),
             numpy_helper.from_array(np.array(8.0, np.float32), "eight"),
             numpy_helper.from_array(np.random.default_rng(12).standard_normal((16, 4)).astype(np.float32), "W2")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["scores"]),
             helper.make_node("Add", ["logits", "eight"], ["shifted"]),
             helper.make_node("Relu", ["shifted"], ["features"]),
             helper.make_node("MatMul", ["features", "W2"], ["embedding"])]
    return save(nodes, [f32("x", ["N", 16])], [f32("scores", ["N", 16]), f32("embedding", ["N", 4])], inits, path)


def rare_objects(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Logits as a detector sees them: background in [-12, -4] (scores near 0), 1% objects in [0, 6] (scores
    0.5..0.998): a heavy right tail, and a heavy-tailed ReLU of logits + 8 (mostly 0..4, objects 8..14)."""
    rng = np.random.default_rng(11)
    x = rng.uniform(-12, -4, (256, 16)).astype(np.float32)
    objects = rng.random(x.shape) < 0.01
    x[objects] = rng.uniform(0, 6, int(objects.sum()))
    np.save(tmp_path / "objects.npy", x)
    return tmp_path / "objects.npy", x


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def method_alone(values: np.ndarray, method: str, percentile: float) -> tuple[float, float]:
    """The range ``method`` picks from ``values`` fed one row at a time, knowing nothing of the tensor."""
    stats = TensorStats(histogram=True)
    for row in values:
        stats.update(row[None])
    return stats.range(method, percentile)


METHOD_ARGS = [("entropy", 99.99), ("percentile", 99.0)]


@pytest.mark.parametrize("method, percentile", METHOD_ARGS)
def test_the_method_alone_clips_sigmoid_scores_far_below_their_maximum(tmp_path, method, percentile):
    _data, x = rare_objects(tmp_path)
    scores = sigmoid(x)
    _lo, hi = method_alone(scores, method, percentile)
    assert hi < 0.1 * scores.max()  # what every table had before: high scores capped near 0.1 at most
    assert hi < 0.25 < scores.max()  # a detector's default threshold: nothing would be detected


@pytest.mark.parametrize("method, percentile", METHOD_ARGS)
def test_sigmoid_scores_keep_their_observed_range_under_every_method(tmp_path, method, percentile):
    data, x = rare_objects(tmp_path)
    model = scores_head(tmp_path / "head.onnx")
    table = calibrate(model, data, method=method, percentile=percentile, samples=256, progress=False)
    observed = calibrate(model, data, method="minmax", samples=256, progress=False).ranges
    assert table.ranges["scores"] == observed["scores"]
    assert table.ranges["scores"][1] == pytest.approx(float(sigmoid(x).max()), rel=1e-6)
    assert table.ranges["embedding"] == observed["embedding"]  # a graph output: kept too
    assert "scores" not in table.clipped and "embedding" not in table.clipped


def test_an_internal_heavy_tailed_relu_is_still_clipped_and_reported(tmp_path, caplog):
    data, x = rare_objects(tmp_path)
    model = scores_head(tmp_path / "head.onnx")
    with caplog.at_level(logging.WARNING, logger="lepton_edge.engines.calibration"):
        table = calibrate(model, data, method="entropy", samples=256, progress=False)
    observed_max = float(np.maximum(x + 8, 0).max())
    chosen_max = table.ranges["features"][1]
    assert chosen_max < 0.5 * observed_max  # entropy still trims the ReLU's tail
    assert table.clipped["features"] == (0.0, pytest.approx(observed_max, rel=1e-6))
    assert {"x", "logits", "scores", "embedding"}.isdisjoint(table.clipped)
    warnings = [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()]
    assert len(warnings) == 1  # one summary, not one line per tensor
    assert f"clipped {len(table.clipped)} tensor(s)" in warnings[0]
    assert f"features (max |x| {chosen_max:.4g} of {observed_max:.4g} observed)" in warnings[0]


def test_the_clipping_warning_counts_all_and_names_the_worst_few(caplog):
    stats = {}
    for i, tail in enumerate([20.0, 40.0, 80.0, 160.0, 320.0]):
        values = np.random.default_rng(i).standard_normal((64, 256)).astype(np.float32)
        values[0, 0] = tail
        stats[f"t{i}"] = TensorStats(histogram=True)
        for row in values:
            stats[f"t{i}"].update(row)
    chosen = choose_ranges(stats, set(), "entropy", 99.99)
    assert set(chosen.clipped) == set(stats)
    with caplog.at_level(logging.WARNING, logger="lepton_edge.engines.calibration"):
        warn_clipped(chosen, "entropy")
    (message,) = [r.getMessage() for r in caplog.records]
    assert "clipped 5 tensor(s)" in message
    named = [name for name in stats if f"{name} (max" in message]
    assert named == ["t2", "t3", "t4"]  # the largest tails are clipped the most


@pytest.mark.parametrize("op, attributes", [("Sigmoid", {}), ("HardSigmoid", {}), ("Softmax", {"axis": -1}),
                                            ("Tanh", {})])
def test_bounded_activations_and_the_reshapes_of_them_keep_their_observed_range(tmp_path, op, attributes):
    """x -> op -> bounded -> Reshape -> moved -> Mul 1 -> y: the op's output and its reshaped copy are internal."""
    inits = [numpy_helper.from_array(np.array([-1, 4, 4], np.int64), "shape"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    nodes = [helper.make_node(op, ["x"], ["bounded"], **attributes),
             helper.make_node("Reshape", ["bounded", "shape"], ["moved"]),
             helper.make_node("Mul", ["moved", "one"], ["y"])]
    model = save(nodes, [f32("x", ["N", 16])], [f32("y", ["N", 4, 4])], inits, tmp_path / f"{op}.onnx")
    data, _x = rare_objects(tmp_path)
    table = calibrate(model, data, method="entropy", samples=256, progress=False)
    observed = calibrate(model, data, method="minmax", samples=256, progress=False).ranges
    for name in ("bounded", "moved", "y"):
        assert table.ranges[name] == observed[name], name
    assert table.ranges["x"] == observed["x"]  # the logits' own range is not heavy-tailed in absolute value


def test_qdq_with_the_entropy_table_keeps_high_sigmoid_scores(tmp_path):
    data, x = rare_objects(tmp_path)
    model = scores_head(tmp_path / "head.onnx")
    table = calibrate(model, data, method="entropy", samples=256, progress=False)
    old = table.model_copy(update={"ranges": {**table.ranges, "scores": method_alone(sigmoid(x), "entropy", 99.99)}})
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(["scores"], {"x": x})[0]
    high = want > 0.5
    assert high.sum() >= 20
    error = {}
    for name, ranges in (("new", table), ("old", old)):
        # float_tail=False quantizes the Sigmoid's output too, as a TensorRT int8 engine does.
        out = quantize_qdq(model, ranges, tmp_path / f"{name}.onnx", float_tail=False)
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["scores"], {"x": x})[0]
        error[name] = float(np.abs(got - want)[high].max())
        if name == "old":
            assert got.max() < 0.1  # every score capped: nothing passes a 0.25 threshold
    assert error["new"] < 0.02, error
    assert error["old"] > 0.4, error


# ------------------------------------------------------------------------------------------------------
# Data sets


def test_manifest_hash_follows_every_file_of_the_data_set(tmp_path):
    folder = grey_folder(tmp_path / "set", [10, 20, 30])
    first = dataset_manifest(folder)
    assert first["kind"] == "folder"
    assert [f["name"] for f in first["files"]] == ["img_000.png", "img_001.png", "img_002.png"]
    (folder / "notes.txt").write_text("not an image: not read, not hashed")
    assert dataset_manifest(folder)["sha256"] == first["sha256"]
    data = bytearray((folder / "img_001.png").read_bytes())
    data[-20] ^= 0x01
    (folder / "img_001.png").write_bytes(bytes(data))
    changed = dataset_manifest(folder)
    assert changed["sha256"] != first["sha256"]
    (folder / "img_001.png").rename(folder / "img_009.png")
    assert dataset_manifest(folder)["sha256"] not in (first["sha256"], changed["sha256"])


def test_the_table_records_model_data_and_preprocessing(tmp_path):
    folder = grey_folder(tmp_path / "set", [10, 200])
    model = passthrough(tmp_path / "p.onnx", [1, 3, 8, 8])
    table = calibrate(model, folder, method="minmax", preprocess=GREY_PREPROCESS, progress=False)
    assert table.model_sha256 == inspect_onnx(model).sha256 and table.model_name == "p.onnx"
    assert table.dataset == str(folder) and table.dataset_sha256 == dataset_manifest(folder)["sha256"]
    assert table.preprocess == GREY_PREPROCESS.model_dump(mode="json")
    assert table.samples == 2  # fewer items than asked for: all of them
    assert table.format_version == 1 and table.lepton_edge_version and table.created_at


def test_preprocessing_merges_the_models_metadata_like_the_runtime(tmp_path):
    hints = {"size": [8, 8], "resize": "stretch", "color": "bgr", "scale": 0.5}
    model = conv_net(tmp_path / "c.onnx", spatial=(8, 8), metadata={"lepton.preprocess": json.dumps(hints)})
    folder = grey_folder(tmp_path / "set", [100])
    table = calibrate(model, folder, method="minmax", progress=False)
    assert table.preprocess["color"] == "bgr" and table.preprocess["scale"] == 0.5
    assert table.ranges["images"] == (50.0, 50.0)
    # A value set by the caller wins over the model's hint, as in the runtime.
    table = calibrate(model, folder, method="minmax", progress=False, preprocess=PreprocessConfig(scale=0.25))
    assert table.ranges["images"] == (25.0, 25.0)


def test_a_video_data_set_is_read_frame_by_frame(tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (32, 32))
    assert writer.isOpened()
    for i in range(12):
        writer.write(np.full((32, 32, 3), 10 + 20 * i, np.uint8))
    writer.release()
    table = calibrate(passthrough(tmp_path / "p.onnx", [1, 3, 8, 8]), video, method="minmax", samples=5,
                      preprocess=GREY_PREPROCESS, progress=False)
    assert dataset_manifest(video)["kind"] == "video"
    assert table.samples == 5
    chosen = np.sort(np.random.default_rng(0).choice(12, size=5, replace=False))
    lo, hi = table.ranges["x"]
    # Lossy coding moves flat grey levels by a few steps; neighbouring frames are 20 levels apart.
    assert lo == pytest.approx((10 + 20 * chosen[0]) / 255, abs=8 / 255)
    assert hi == pytest.approx((10 + 20 * chosen[-1]) / 255, abs=8 / 255)


def test_uint8_image_recordings_go_through_the_preprocessor(tmp_path):
    images = np.stack([np.full((8, 8), v, np.uint8) for v in (0, 51, 255)])
    np.save(tmp_path / "imgs.npy", images)
    table = calibrate(DIGITS, tmp_path / "imgs.npy", method="minmax", progress=False)
    assert table.ranges["input"] == (0.0, 1.0)
    assert table.preprocess["color"] == "gray"  # from the model's lepton.preprocess metadata


def test_several_inputs_are_calibrated_from_a_npz_with_one_array_per_input(tmp_path):
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["s", "b"], ["p"])]
    model = save(nodes, [f32("a", ["N", 4]), f32("b", ["N", 4])], [f32("s", ["N", 4]), f32("p", ["N", 4])], [],
                 tmp_path / "two.onnx")
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((10, 4)).astype(np.float32), rng.standard_normal((10, 4)).astype(np.float32)
    np.savez(tmp_path / "rec.npz", a=a, b=b)
    table = calibrate(model, tmp_path / "rec.npz", method="minmax", progress=False)
    assert table.input_shapes == {"a": [1, 4], "b": [1, 4]}
    for name, value in {"a": a, "b": b, "s": a + b, "p": (a + b) * b}.items():
        np.testing.assert_allclose(table.ranges[name], (value.min(), value.max()), rtol=1e-6, err_msg=name)
    np.savez(tmp_path / "bad.npz", a=a, c=b)
    with pytest.raises(ConfigError, match=r"holds arrays \['a', 'c'\].*inputs are \['a', 'b'\]"):
        calibrate(model, tmp_path / "bad.npz", progress=False)
    with pytest.raises(ConfigError, match="image data sets feed one input"):
        calibrate(model, grey_folder(tmp_path / "imgs", [1]), progress=False)


def test_dynamic_spatial_inputs_are_calibrated_at_preprocess_size(tmp_path):
    model = conv_net(tmp_path / "dyn.onnx", spatial=("h", "w"))
    folder = noise_folder(tmp_path / "noise", 3)
    with pytest.raises(ConfigError, match=r"preprocess\.size"):
        calibrate(model, folder, progress=False)
    table = calibrate(model, folder, method="minmax", preprocess=PreprocessConfig(size=(32, 24)), progress=False)
    assert table.input_shapes == {"images": [1, 3, 24, 32]}


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, error, message", [
    (lambda d: d / "missing", SourceError, "not found"),
    (lambda d: (d / "empty").mkdir() or d / "empty", SourceError, "has no images"),
    (lambda d: "rtsp://camera.local/stream", ConfigError, "not a live source"),
    (lambda d: np.save(d / "wrong.npy", np.zeros((4, 5), np.float32)) or d / "wrong.npy", ConfigError,
     r"shape \[5\].*does not fit model input 'x'"),
    (lambda d: np.save(d / "none.npy", np.zeros((0, 4), np.float32)) or d / "none.npy", SourceError, "no frames"),
    (lambda d: write(d / "junk.npy", b"not numpy"), SourceError, "cannot load"),
])
def test_unusable_data_sets_are_refused_clearly(tmp_path, make, error, message):
    model = mlp(tmp_path / "mlp.onnx")
    with pytest.raises(error, match=message):
        calibrate(model, make(tmp_path), progress=False)


def test_an_undecodable_chosen_image_is_named(tmp_path):
    folder = grey_folder(tmp_path / "set", [10, 20])
    (folder / "img_001.png").write_bytes(b"broken")
    with pytest.raises(SourceError, match=r"img_001\.png.*remove it"):
        calibrate(passthrough(tmp_path / "p.onnx", [1, 3, 8, 8]), folder, preprocess=GREY_PREPROCESS,
                  progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"samples": 0}, "samples must be .* at least 1"),
    ({"method": "kl"}, "method 'kl' is unknown"),
    ({"method": "percentile", "percentile": 0}, "percentile must be in"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(ConfigError, match=message):
        calibrate(mlp(tmp_path / "mlp.onnx"), tmp_path / "x.npy", progress=False, **kwargs)


# ------------------------------------------------------------------------------------------------------
# Table files


@pytest.fixture
def table(tmp_path) -> CalibrationTable:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))
    return calibrate(mlp(tmp_path / "mlp.onnx"), tmp_path / "x.npy", method="minmax", progress=False)


def test_a_written_table_loads_back_equal(tmp_path, table):
    path = write_table(table, tmp_path / "out" / "t.json")
    assert load_table(path, model_sha256=table.model_sha256) == table
    assert json.loads(path.read_text())["format_version"] == 1


def rewrite(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format_version=2), "format_version: 2 is not a table format"),
    (lambda d: d.pop("format_version"), "format_version: missing"),
    (lambda d: d.pop("ranges"), r"ranges: Field required"),
    (lambda d: d.update(method="magic"), "method: Input should be"),
    (lambda d: d.update(colour="red"), "colour: Extra inputs are not permitted"),
    (lambda d: d["ranges"].update(h=[2.0, 1.0]), "'h': range .* min <= max"),
])
def test_load_table_refuses_malformed_tables_naming_the_field(tmp_path, table, change, message):
    path = rewrite(write_table(table, tmp_path / "t.json"), change)
    with pytest.raises(ConfigError, match=message) as err:
        load_table(path)
    assert str(path) in str(err.value)


def test_load_table_refuses_a_table_for_another_model(tmp_path, table):
    path = write_table(table, tmp_path / "t.json")
    with pytest.raises(ConfigError, match="model_sha256: the table was made for another model"):
        load_table(path, model_sha256="0" * 64)


def test_load_table_refuses_files_that_are_not_tables(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_table(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_table(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_table(tmp_path / "list.json")


def test_tables_without_the_clipped_field_still_load_and_clipped_ones_round_trip(tmp_path, table):
    path = write_table(table, tmp_path / "old.json")
    assert "clipped" not in json.loads(path.read_text())  # an empty report is left out: the old layout
    assert load_table(path).clipped == {}
    clipped = table.model_copy(update={"clipped": {"h": (-9.0, 12.0)}})
    path = write_table(clipped, tmp_path / "new.json")
    assert json.loads(path.read_text())["clipped"] == {"h": [-9.0, 12.0]}
    assert load_table(path) == clipped
    rewrite(path, lambda d: d["clipped"].update(h=[3.0, 1.0]))
    with pytest.raises(ConfigError, match=r"'h': range .* min <= max"):
        load_table(path)


# ------------------------------------------------------------------------------------------------------
# TensorRT cache


def test_tensorrt_cache_round_trip_and_format(tmp_path, table):
    table = table.model_copy(update={"ranges": {**table.ranges, "exact": (-127.0, 50.0)}})
    path = write_tensorrt_cache(table, tmp_path / "t.cache", trt_version=100300)
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-100300-MinMaxCalibration"
    assert "exact: 3f800000" in lines  # scale 127 / 127 = 1.0, big-endian IEEE-754 float32
    header, scales = read_tensorrt_cache(path)
    assert header == lines[0]
    assert set(scales) == set(table.ranges)
    for name, (lo, hi) in table.ranges.items():
        assert scales[name] == float(np.float32(max(abs(lo), abs(hi)) / 127.0)), name
    entropy = table.model_copy(update={"method": "entropy"})
    assert read_tensorrt_cache(write_tensorrt_cache(entropy, tmp_path / "e.cache", trt_version=8601))[0] == \
        "TRT-8601-EntropyCalibration2"


@pytest.mark.parametrize("text, message", [
    ("calibration\nx: 3f800000\n", "line 1: expected a header"),
    ("TRT-8601-EntropyCalibration2\nx: 3f800000\ny 3f800000\n", "line 3: expected 'tensor_name: <8 hex"),
    ("TRT-8601-EntropyCalibration2\nx: zz800000\n", "line 2"),
    ("TRT-8601-EntropyCalibration2\nx: 3f800000\nx: 3f800000\n", "line 3: tensor 'x' appears twice"),
    ("TRT-8601-EntropyCalibration2\nx: 7fc00000\n", "line 2: scale nan"),
])
def test_malformed_tensorrt_caches_are_refused_with_the_line(tmp_path, text, message):
    (tmp_path / "c.cache").write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_tensorrt_cache(tmp_path / "c.cache")


def test_tensorrt_cache_scales_use_big_endian_float_bits(tmp_path):
    (tmp_path / "c.cache").write_text("TRT-8601-EntropyCalibration2\nin/put:0: 3c010204\n")
    _header, scales = read_tensorrt_cache(tmp_path / "c.cache")
    assert scales == {"in/put:0": struct.unpack(">f", bytes.fromhex("3c010204"))[0]}


# ------------------------------------------------------------------------------------------------------
# QDQ export


@pytest.fixture(scope="module")
def digits_table() -> CalibrationTable:
    return calibrate(DIGITS, DIGITS_CALIBRATION, method="entropy", samples=128, progress=False)


def test_qdq_digits_keeps_accuracy_within_one_point(tmp_path, digits_table):
    out = quantize_qdq(DIGITS, digits_table, tmp_path / "digits.int8.onnx")
    info = inspect_onnx(out)
    assert info.has_qdq and info.ops["QuantizeLinear"] >= 10
    assert json.loads(info.metadata["lepton.quantization"])["method"] == "entropy"
    held = np.load(DIGITS_HELDOUT)
    x = held["images"].astype(np.float32)[:, None] / np.float32(255.0)

    def accuracy(path: Path) -> float:
        logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        return 100.0 * float(np.mean(logits.argmax(1) == held["labels"]))

    fp32, int8 = accuracy(DIGITS), accuracy(out)
    assert fp32 > 95
    assert int8 >= fp32 - 1.0, (fp32, int8)


def test_qdq_scales_come_from_the_table(tmp_path, digits_table):
    widened = dict(digits_table.ranges)
    widened["/0/Conv_output_0"] = (-10.0, 10.0)  # no calibration would find this: it must come from the table
    table = digits_table.model_copy(update={"ranges": widened})
    scales = quantize_scales(quantize_qdq(DIGITS, table, tmp_path / "d.onnx"))
    assert scales["/0/Conv_output_0"] == pytest.approx(20.0 / 255.0, rel=1e-6)
    model = onnx.load(str(DIGITS))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    checked = 0
    for name, scale in scales.items():
        # Ops that only move values (MaxPool, Flatten) reuse their input's scale; check the others.
        if name in table.ranges and producers.get(name, "input") in ("input", "Conv", "Sigmoid", "Mul"):
            assert scale == pytest.approx(uint8_scale(*table.ranges[name]), rel=1e-6), name
            checked += 1
    assert checked >= 10


def test_qdq_refuses_a_table_of_another_model(tmp_path, digits_table):
    other = passthrough(tmp_path / "p.onnx", [1, 3, 8, 8])
    with pytest.raises(ConfigError, match="made for another model"):
        quantize_qdq(other, digits_table, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("layout, opset", [("nhwc", 17), ("nchw", 11)])
def test_qdq_of_nhwc_and_old_opset_models_with_dynamic_batch(tmp_path, layout, opset):
    model = conv_net(tmp_path / "c.onnx", layout=layout, opset=opset)
    folder = noise_folder(tmp_path / "noise", 10)
    table = calibrate(model, folder, method="minmax", preprocess=PreprocessConfig(resize="stretch"),
                      progress=False)
    shape = [1, 16, 16, 3] if layout == "nhwc" else [1, 3, 16, 16]
    assert table.input_shapes == {"images": shape}
    out = quantize_qdq(model, table, tmp_path / "c.int8.onnx")
    quantized = onnx.load(str(out))
    axes = [a.i for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w")
            for a in n.attribute if a.name == "axis"]
    assert axes == [0]  # the Conv weight is quantized per output channel
    x = np.random.default_rng(9).random([4, *shape[1:]]).astype(np.float32)  # batch 4: still dynamic
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    assert got.shape == (4, 8)
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())


def boxes_and_scores(path: Path) -> Path:
    """A detector-like graph: pixel boxes (0..~600) and 0..1 scores concatenated into one output."""
    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "wb"),
             numpy_helper.from_array(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "ws"),
             numpy_helper.from_array(np.array(300.0, np.float32), "stride")]
    nodes = [helper.make_node("Conv", ["images", "wb"], ["box_logits"]),
             helper.make_node("Sigmoid", ["box_logits"], ["box_unit"]),
             helper.make_node("Mul", ["box_unit", "stride"], ["boxes"]),
             helper.make_node("Conv", ["images", "ws"], ["score_logits"]),
             helper.make_node("Sigmoid", ["score_logits"], ["scores"]),
             helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1)]
    return save(nodes, [f32("images", ["N", 3, 8, 8])], [f32("output0", ["N", 6, 8, 8])], inits, path)


def test_the_decode_tail_after_the_last_weighted_layer_stays_float(tmp_path):
    model = boxes_and_scores(tmp_path / "det.onnx")
    x = np.random.default_rng(8).random((4, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    table = calibrate(model, tmp_path / "x.npy", method="minmax", progress=False)
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    score_error = {}
    for float_tail in (True, False):
        out = quantize_qdq(model, table, tmp_path / f"q{float_tail}.onnx", float_tail=float_tail)
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
        score_error[float_tail] = float(np.abs(got[:, 4:] - want[:, 4:]).max())
        quantized = {n.input[0] for n in onnx.load(str(out)).graph.node if n.op_type == "QuantizeLinear"}
        # onnxruntime renames a quantized graph output's tensor to output0_QuantizeLinear_Input.
        assert any(name.startswith("output0") for name in quantized) is not float_tail
        assert "box_logits" in quantized and "score_logits" in quantized  # the layers themselves are int8
    assert score_error[True] < 0.02
    assert score_error[False] > 0.2  # one uint8 scale for pixels and scores wipes the scores out


def test_already_quantized_models_are_refused(tmp_path, digits_table):
    out = quantize_qdq(DIGITS, digits_table, tmp_path / "d.onnx")
    with pytest.raises(ModelError, match="already quantized"):
        calibrate(out, DIGITS_CALIBRATION, progress=False)


# ------------------------------------------------------------------------------------------------------
# Command line and committed data sets


def test_calibrate_command_writes_table_cache_and_qdq(tmp_path):
    parser = argparse.ArgumentParser(epilog=calibrate_command.EPILOG)
    calibrate_command.add_arguments(parser)
    assert "lepton-edge calibrate --model models/shapes_detector.onnx" in parser.format_help()
    args = parser.parse_args([
        "--model", str(DIGITS), "--data", str(DIGITS_CALIBRATION), "--method", "percentile", "--samples", "32",
        "--out", str(tmp_path / "d.json"), "--trt-cache", str(tmp_path / "d.cache"), "--trt-version", "8.6.1",
        "--qdq", str(tmp_path / "d.int8.onnx"), "--no-progress",
    ])
    assert calibrate_command.run(args) == 0
    table = load_table(tmp_path / "d.json", model_sha256=inspect_onnx(DIGITS).sha256)
    assert table.method == "percentile" and table.percentile == 99.99 and table.samples == 32
    assert read_tensorrt_cache(tmp_path / "d.cache")[0] == "TRT-8601-EntropyCalibration2"
    assert inspect_onnx(tmp_path / "d.int8.onnx").has_qdq


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_calibrate_writes_caches_the_builder_reads_for_the_tensorrt_it_names(tmp_path, method):
    parser = argparse.ArgumentParser()
    calibrate_command.add_arguments(parser)
    base = ["--model", str(DIGITS), "--data", str(DIGITS_CALIBRATION), "--method", method, "--samples", "8",
            "--out", str(tmp_path / "d.json"), "--trt-cache", str(tmp_path / "d.cache"), "--no-progress"]
    if probe_tensorrt()[0] is None:  # no TensorRT here to take the version from
        with pytest.raises(ConfigError, match=r"TensorRT is not installed here .* --trt-version 8\.6\.1"):
            calibrate_command.run(parser.parse_args(base))
    assert calibrate_command.run(parser.parse_args([*base, "--trt-version", "10.3.0"])) == 0
    cache = read_calibration_cache(tmp_path / "d.cache")
    assert (cache.trt_version, cache.algorithm) == (100300, tensorrt_algorithm(method))
    with pytest.raises(ConfigError, match=r"expected e\.g\. 8\.6\.1"):
        calibrate_command.run(parser.parse_args([*base, "--trt-version", "ten"]))


def test_committed_calibration_sets_match_their_manifests():
    digits = np.load(DIGITS_CALIBRATION)
    assert digits.dtype == np.uint8 and digits.shape == (200, 8, 8)
    recorded = json.loads((SHAPES_CALIBRATION / "manifest.json").read_text())
    current = dataset_manifest(SHAPES_CALIBRATION)
    assert {k: recorded[k] for k in ("kind", "files", "sha256")} == current
    assert len(current["files"]) == 64
    assert sum(f["size"] for f in current["files"]) < 4 * 1024 * 1024
    assert recorded["generator"]["seeds"] == [2_000_000, 2_000_064]
    image = cv2.imread(str(SHAPES_CALIBRATION / current["files"][0]["name"]))
    assert image.shape == (480, 640, 3)


SHAPES_DETECTOR = ROOT / "models" / "shapes_detector.onnx"


@pytest.mark.skipif(not SHAPES_DETECTOR.exists(), reason="models/shapes_detector.onnx is not trained yet")
def test_shapes_detector_calibrates_from_the_committed_images(tmp_path):
    table = calibrate(SHAPES_DETECTOR, SHAPES_CALIBRATION, method="entropy", samples=8, progress=False)
    info = inspect_onnx(SHAPES_DETECTOR)
    assert {s.name for s in info.inputs} | {s.name for s in info.outputs} <= set(table.ranges)
    out = quantize_qdq(SHAPES_DETECTOR, table, tmp_path / "shapes.int8.onnx")
    x = np.zeros(table.input_shapes[info.inputs[0].name], np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {info.inputs[0].name: x})
    assert [o.shape for o in got] == [tuple(d if isinstance(d, int) else 1 for d in s.shape) for s in info.outputs]


def test_qdq_weights_fit_the_16_bit_pair_sums_of_cpus_without_vnni(tmp_path):
    """Without VNNI, onnxruntime's u8s8 kernels add two uint8 x int8 products in 16 bits: weights in -64..64 keep
    every pair below 32767, so the fused (QLinearConv/QGemm) model answers as the unfused QDQ graph on any CPU."""
    table = calibrate(DIGITS, DIGITS_CALIBRATION, method="minmax", samples=64, progress=False)
    out = quantize_qdq(DIGITS, table, tmp_path / "digits.int8.onnx")
    initializers = onnx.load(str(out)).graph.initializer
    weights = [numpy_helper.to_array(t) for t in initializers if t.data_type == TensorProto.INT8]
    assert weights and max(int(np.abs(w).max()) for w in weights) <= 64
    x = np.load(DIGITS_HELDOUT)["images"][:64, None].astype(np.float32) / 255.0
    outputs = {}
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outputs[level] = session.run(None, {name: x})[0]
    fused = outputs[ort.GraphOptimizationLevel.ORT_ENABLE_ALL]
    unfused = outputs[ort.GraphOptimizationLevel.ORT_DISABLE_ALL]
    assert (fused.argmax(1) == unfused.argmax(1)).mean() == 1.0
    assert np.abs(fused - unfused).max() < 0.05 * np.abs(unfused).max()
