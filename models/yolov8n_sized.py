"""A network the size and shape of Ultralytics YOLOv8n, with random weights, written as ONNX without torch.

It exists for speed benchmarks: the layer graph follows YOLOv8n (width 0.25, depth 0.33: C2f blocks,
SPPF, FPN/PAN neck, decoupled head with DFL decode in the graph), so parameters (~3.2 M), FLOPs
(~8.7 G at 640x640) and memory traffic are realistic, while the detections are meaningless.

The output is the Ultralytics export layout: ``output0`` float32 ``[batch, 4 + classes, anchors]`` with
(cx, cy, w, h) in input pixels followed by sigmoid class scores. The batch is 1 by default; ``--dynamic-batch``
writes a dynamic batch axis (as Ultralytics ``dynamic=True`` does for the batch): every reshape keeps axis 0, so one
call runs several frames. :func:`build_bench_model` is the multi-stream benchmark's model: 320x320, dynamic batch.

Usage: ``python models/yolov8n_sized.py out.onnx [--size 640] [--classes 80] [--seed 0] [--opset 17]
[--dynamic-batch]``.
This module imports only numpy and onnx, so it runs where torch is not installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (8, 16, 32)
REG_MAX = 16  # DFL bins per box side
MIN_OPSET = 13  # Split and ReduceSum take their sizes and axes as inputs from opset 13 on

# Random weights with a fixed gain make SiLU activations shrink or grow layer after layer, so each conv
# is calibrated as it is added, the way a folded BatchNorm sets its scale: the builder runs the layer in
# numpy on a few small random images (float64), draws He-normal weights, then scales them so the
# pre-activation has the spread below and shifts each channel's bias to centre it. One scale per conv,
# not per channel: a channel that happens to be nearly flat on the calibration images would otherwise
# get a huge gain and explode on other inputs.
_CALIBRATION_SIZE = 256
_PREACT_STD = 1.0
_BOX_LOGIT_STD = 3.0  # peaked DFL bins, so box sides spread over 0..15 cells instead of all near 7.5
# Class logits centre on a low prior, as Ultralytics initialises them: flat or noisy images score about
# 0.01 everywhere and pass no 0.25 threshold; images with shapes push a minority of anchors over it.
_CLASS_LOGIT_MEAN = -5.0


class _Tensor(NamedTuple):
    """A graph value: its name and its value on the calibration images (float64, ``[3, C, H, W]``)."""

    name: str
    value: np.ndarray

    @property
    def channels(self) -> int:
        return self.value.shape[1]


def _conv_np(x: np.ndarray, weight: np.ndarray, stride: int) -> np.ndarray:
    k = weight.shape[-1]
    padded = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def _silu_np(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _max_pool_np(x: np.ndarray) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(padded, (5, 5), axis=(2, 3)).max(axis=(4, 5))


def _calibration_images(rng: np.random.Generator) -> np.ndarray:
    """Three random images in 0..1: large flat colour blocks, pixel noise, and small blocks with noise."""
    size = _CALIBRATION_SIZE
    large = np.kron(rng.random((1, 3, size // 32, size // 32)), np.ones((1, 1, 32, 32)))
    noise = rng.random((1, 3, size, size))
    small = 0.7 * np.kron(rng.random((1, 3, size // 8, size // 8)), np.ones((1, 1, 8, 8)))
    small += 0.3 * rng.random((1, 3, size, size))
    return np.concatenate([large, noise, small])


def _round_half(x: np.ndarray) -> np.ndarray:
    """Round to float16 precision, so tiny BLAS differences between machines cannot change the file."""
    return x.astype(np.float16).astype(np.float64)


class _GraphBuilder:
    """Collects nodes and random initializers; each layer method takes and returns :class:`_Tensor`."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.image = _Tensor("images", _calibration_images(self.rng))
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, outputs: int = 1, **attrs: object) -> list[str]:
        names = [name] if outputs == 1 else [f"{name}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=name, **attrs))
        return names

    def conv2d(
        self,
        x: _Tensor,
        c_out: int,
        k: int,
        stride: int,
        name: str,
        mean: float = 0.0,
        std: float = _PREACT_STD,
    ) -> _Tensor:
        """Conv2d with bias (BatchNorm folded in): output channels centred on ``mean``, spread ``std``."""
        fan_in = x.channels * k * k
        weight = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(c_out, x.channels, k, k))
        raw = _conv_np(x.value, weight, stride)
        channel_mean = raw.mean(axis=(0, 2, 3))
        scale = _round_half(std / np.sqrt(raw.var(axis=(0, 2, 3)).mean()))
        bias = _round_half(mean - channel_mean * scale)
        weight *= scale
        inputs = [
            x.name,
            self.constant(f"{name}.weight", weight.astype(np.float32)),
            self.constant(f"{name}.bias", bias.astype(np.float32)),
        ]
        out = self.node("Conv", inputs, name, kernel_shape=[k, k], strides=[stride] * 2, pads=[k // 2] * 4)[0]
        return _Tensor(out, raw * scale + bias[None, :, None, None])

    def conv(self, x: _Tensor, c_out: int, k: int, stride: int, name: str) -> _Tensor:
        """Ultralytics Conv: Conv2d + SiLU, with SiLU written as x * Sigmoid(x) as torch exports it."""
        y = self.conv2d(x, c_out, k, stride, f"{name}.conv")
        sig = self.node("Sigmoid", [y.name], f"{name}.act.sigmoid")[0]
        return _Tensor(self.node("Mul", [y.name, sig], f"{name}.act")[0], _silu_np(y.value))

    def add(self, a: _Tensor, b: _Tensor, name: str) -> _Tensor:
        return _Tensor(self.node("Add", [a.name, b.name], name)[0], a.value + b.value)

    def split(self, x: _Tensor, sizes: list[int], name: str) -> list[_Tensor]:
        split = self.constant(f"{name}.sizes", np.array(sizes, dtype=np.int64))
        outs = self.node("Split", [x.name, split], name, outputs=len(sizes), axis=1)
        values = np.split(x.value, np.cumsum(sizes)[:-1], axis=1)
        return [_Tensor(out, value) for out, value in zip(outs, values, strict=True)]

    def concat(self, xs: list[_Tensor], name: str) -> _Tensor:
        out = self.node("Concat", [x.name for x in xs], name, axis=1)[0]
        return _Tensor(out, np.concatenate([x.value for x in xs], axis=1))

    def max_pool(self, x: _Tensor, name: str) -> _Tensor:
        out = self.node("MaxPool", [x.name], name, kernel_shape=[5, 5], strides=[1, 1], pads=[2] * 4)[0]
        return _Tensor(out, _max_pool_np(x.value))

    def upsample(self, x: _Tensor, name: str) -> _Tensor:
        """Nearest-neighbour x2, as torch exports ``nn.Upsample(scale_factor=2)``."""
        scales = self.constant(f"{name}.scales", np.array([1, 1, 2, 2], dtype=np.float32))
        out = self.node(
            "Resize",
            [x.name, "", scales],
            name,
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )[0]
        return _Tensor(out, x.value.repeat(2, axis=2).repeat(2, axis=3))

    def c2f(self, x: _Tensor, c_out: int, n: int, shortcut: bool, name: str) -> _Tensor:
        """C2f: 1x1 conv, split in halves, n bottlenecks chained on the second, concat all, 1x1 conv."""
        half = c_out // 2
        parts = self.split(self.conv(x, 2 * half, 1, 1, f"{name}.cv1"), [half, half], f"{name}.split")
        for i in range(n):
            h = self.conv(parts[-1], half, 3, 1, f"{name}.m.{i}.cv1")
            h = self.conv(h, half, 3, 1, f"{name}.m.{i}.cv2")
            parts.append(self.add(parts[-1], h, f"{name}.m.{i}.add") if shortcut else h)
        return self.conv(self.concat(parts, f"{name}.cat"), c_out, 1, 1, f"{name}.cv2")

    def sppf(self, x: _Tensor, c_out: int, name: str) -> _Tensor:
        """SPPF: 1x1 conv, three chained 5x5 max pools, concat the four, 1x1 conv."""
        parts = [self.conv(x, x.channels // 2, 1, 1, f"{name}.cv1")]
        for i in range(3):
            parts.append(self.max_pool(parts[-1], f"{name}.m.{i}"))
        return self.conv(self.concat(parts, f"{name}.cat"), c_out, 1, 1, f"{name}.cv2")

    def reshape(self, x: str, shape: list[int], name: str) -> str:
        """Reshape ``x`` to ``shape``; a leading 0 keeps the input's batch (ONNX Reshape: 0 copies that axis)."""
        shape_name = self.constant(f"{name}.shape", np.array(shape, dtype=np.int64))
        return self.node("Reshape", [x, shape_name], name)[0]


def _anchors(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres ``[1, 2, A]`` (x, y in cells) and strides ``[1, 1, A]``, level by level, row-major."""
    points, strides = [], []
    for stride in STRIDES:
        cells = size // stride
        ys, xs = np.meshgrid(np.arange(cells) + 0.5, np.arange(cells) + 0.5, indexing="ij")
        points.append(np.stack([xs.ravel(), ys.ravel()]))
        strides.append(np.full(cells * cells, stride))
    anchor_points = np.concatenate(points, axis=1)[None].astype(np.float32)
    anchor_strides = np.concatenate(strides)[None, None].astype(np.float32)
    return anchor_points, anchor_strides


def _detect_head(g: _GraphBuilder, features: list[_Tensor], num_classes: int, size: int, dynamic: bool) -> None:
    """Decoupled box/class branches per level, DFL decode to pixel boxes, output ``[N, 4 + C, A]``; the reshapes
    keep the input's batch axis when ``dynamic`` (shape 0 on axis 0), else hard-code batch 1."""
    n = 0 if dynamic else 1
    box_width = max(16, features[0].channels // 4, 4 * REG_MAX)
    cls_width = max(features[0].channels, min(num_classes, 100))
    box_levels, cls_levels = [], []
    for level, x in enumerate(features):
        name = f"model.22.cv2.{level}"
        b = g.conv(g.conv(x, box_width, 3, 1, f"{name}.0"), box_width, 3, 1, f"{name}.1")
        b = g.conv2d(b, 4 * REG_MAX, 1, 1, f"{name}.2", std=_BOX_LOGIT_STD)
        box_levels.append(g.reshape(b.name, [n, 4 * REG_MAX, -1], f"{name}.flat"))
        name = f"model.22.cv3.{level}"
        c = g.conv(g.conv(x, cls_width, 3, 1, f"{name}.0"), cls_width, 3, 1, f"{name}.1")
        c = g.conv2d(c, num_classes, 1, 1, f"{name}.2", mean=_CLASS_LOGIT_MEAN)
        cls_levels.append(g.reshape(c.name, [n, num_classes, -1], f"{name}.flat"))
    box_logits = g.node("Concat", box_levels, "model.22.box_cat", axis=2)[0]  # [1, 64, A]
    cls_logits = g.node("Concat", cls_levels, "model.22.cls_cat", axis=2)[0]  # [1, C, A]

    # DFL: for each box side a softmax over the bins, then the expected bin index (a distance in cells).
    bins = g.reshape(box_logits, [n, 4, REG_MAX, -1], "model.22.dfl.bins")
    prob = g.node("Softmax", [bins], "model.22.dfl.softmax", axis=2)[0]
    index = g.constant("model.22.dfl.index", np.arange(REG_MAX, dtype=np.float32).reshape(1, 1, REG_MAX, 1))
    weighted = g.node("Mul", [prob, index], "model.22.dfl.weighted")[0]
    axes = g.constant("model.22.dfl.axes", np.array([2], dtype=np.int64))
    dist = g.node("ReduceSum", [weighted, axes], "model.22.dfl.sum", keepdims=0)[0]  # [1, 4, A]

    anchor_points, anchor_strides = _anchors(size)
    points = g.constant("model.22.anchors", anchor_points)
    split = g.constant("model.22.dist_split.sizes", np.array([2, 2], dtype=np.int64))
    left_top, right_bottom = g.node("Split", [dist, split], "model.22.dist_split", outputs=2, axis=1)
    top_left = g.node("Sub", [points, left_top], "model.22.x1y1")[0]
    bottom_right = g.node("Add", [points, right_bottom], "model.22.x2y2")[0]
    corner_sum = g.node("Add", [top_left, bottom_right], "model.22.xy_sum")[0]
    half = g.constant("model.22.half", np.array(0.5, dtype=np.float32))
    centre = g.node("Mul", [corner_sum, half], "model.22.cxcy")[0]
    extent = g.node("Sub", [bottom_right, top_left], "model.22.wh")[0]
    cell_box = g.node("Concat", [centre, extent], "model.22.box_cells", axis=1)[0]
    strides = g.constant("model.22.strides", anchor_strides)
    pixel_box = g.node("Mul", [cell_box, strides], "model.22.box_pixels")[0]
    scores = g.node("Sigmoid", [cls_logits], "model.22.cls_sigmoid")[0]
    g.nodes.append(helper.make_node("Concat", [pixel_box, scores], ["output0"], name="model.22.out", axis=1))


def _build_graph(g: _GraphBuilder, size: int, num_classes: int, dynamic: bool) -> None:
    """YOLOv8n layer by layer; names follow the Ultralytics module indices (model.0 ... model.22)."""
    x = g.conv(g.image, 16, 3, 2, "model.0")  # P1/2
    x = g.conv(x, 32, 3, 2, "model.1")  # P2/4
    x = g.c2f(x, 32, 1, True, "model.2")
    x = g.conv(x, 64, 3, 2, "model.3")  # P3/8
    p3 = g.c2f(x, 64, 2, True, "model.4")
    x = g.conv(p3, 128, 3, 2, "model.5")  # P4/16
    p4 = g.c2f(x, 128, 2, True, "model.6")
    x = g.conv(p4, 256, 3, 2, "model.7")  # P5/32
    x = g.c2f(x, 256, 1, True, "model.8")
    p5 = g.sppf(x, 256, "model.9")

    x = g.concat([g.upsample(p5, "model.10"), p4], "model.11")
    n4 = g.c2f(x, 128, 1, False, "model.12")
    x = g.concat([g.upsample(n4, "model.13"), p3], "model.14")
    small = g.c2f(x, 64, 1, False, "model.15")  # P3/8 output
    x = g.concat([g.conv(small, 64, 3, 2, "model.16"), n4], "model.17")
    medium = g.c2f(x, 128, 1, False, "model.18")  # P4/16 output
    x = g.concat([g.conv(medium, 128, 3, 2, "model.19"), p5], "model.20")
    large = g.c2f(x, 256, 1, False, "model.21")  # P5/32 output

    _detect_head(g, [small, medium, large], num_classes, size, dynamic)


def _check_arguments(size: int, num_classes: int, opset: int) -> None:
    if size <= 0 or size % 32:
        raise ValueError(f"size must be a positive multiple of 32 (the largest stride), got {size}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(
            f"opset must be between {MIN_OPSET} and {newest} (newest in onnx {onnx.__version__}), got {opset}"
        )


def build_yolov8n_sized(
    path: Path, size: int = 640, num_classes: int = 80, seed: int = 0, opset: int = 17, dynamic_batch: bool = False
) -> Path:
    """Write a YOLOv8n-sized detector with random weights to ``path`` and return the path.

    Input ``images`` float32 ``[1, 3, size, size]`` (pixels in 0..1); output ``output0`` float32
    ``[1, 4 + num_classes, anchors]``. With ``dynamic_batch`` axis 0 of both is the dynamic ``batch`` and the graph
    runs any number of frames per call. The same arguments always write the same file. Raises
    ``ValueError`` for a size that is not a positive multiple of 32, fewer than one class, or an opset
    below 13 or newer than the installed onnx knows.
    """
    _check_arguments(size, num_classes, opset)
    g = _GraphBuilder(seed)
    _build_graph(g, size, num_classes, dynamic_batch)
    anchors = sum((size // s) ** 2 for s in STRIDES)
    batch: int | str = "batch" if dynamic_batch else 1
    graph = helper.make_graph(
        g.nodes,
        "yolov8n_sized",
        inputs=[helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])],
        outputs=[helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 4 + num_classes, anchors])],
        initializer=g.initializers,
    )
    opset_ids = [helper.make_opsetid("", opset)]
    # The lowest IR version for the opset, so older onnxruntime builds (e.g. on Jetson) load the file.
    model = helper.make_model(
        graph,
        opset_imports=opset_ids,
        ir_version=helper.find_min_ir_version_for(opset_ids),
        producer_name="lepton-edge models/yolov8n_sized.py",
    )
    helper.set_model_props(
        model,
        {
            "lepton.task": "detect",
            "lepton.layout": "yolov8",
            "names": "{" + ", ".join(f"{i}: 'class{i}'" for i in range(num_classes)) + "}",
            "task": "detect",
            "stride": str(max(STRIDES)),
            "imgsz": f"[{size}, {size}]",
            "description": f"YOLOv8n-sized network, random weights (seed {seed}), for benchmarks only",
        },
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


BENCH_SIZE = 320
"""Input size of the multi-stream benchmark's model."""


def build_bench_model(path: Path, size: int = BENCH_SIZE, seed: int = 0) -> Path:
    """The multi-stream benchmark's model: YOLOv8n-sized, 80 classes, a dynamic batch axis, ``size`` x ``size``."""
    return build_yolov8n_sized(path, size=size, seed=seed, dynamic_batch=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="where to write the .onnx file")
    parser.add_argument("--size", type=int, default=640, help="square input size, a multiple of 32")
    parser.add_argument("--classes", type=int, default=80, help="number of classes")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument("--dynamic-batch", action="store_true", help="a dynamic batch axis (default: batch 1)")
    args = parser.parse_args(argv)
    try:
        path = build_yolov8n_sized(args.output, args.size, args.classes, args.seed, args.opset, args.dynamic_batch)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
