"""Train and export the bundled shapes detector (anchor-free, Ultralytics YOLOv8 output layout) as ONNX.

    .venv/bin/python models/train_shapes_detector.py                  # train, export, evaluate
    .venv/bin/python models/train_shapes_detector.py --eval-only models/shapes_detector.onnx

Needs torch (CPU is enough). Training images come from ``lepton_edge.runtime.sources.shapes.random_sample``
with seeds ``0 .. --train-images-1`` and go through the runtime's own ``Preprocessor``; the held-out
set uses seeds from 1_000_000 on, so it never overlaps the training set.

The model: a small conv backbone (BN + SiLU), a top-down feature pyramid at strides 8/16/32 and one
head shared by the three levels. Each anchor point predicts distances to the four box sides and three
sigmoid class scores. Ground truth is assigned FCOS-style: anchor points inside a box and near its
centre, on the pyramid levels suited to the box size. Classification uses BCE with the IoU of the
predicted box as the positive target, so scores rank boxes by quality; boxes use a GIoU loss.
The exported graph decodes boxes itself and returns ``output0 [1, 4+3, 2100]`` (cx, cy, w, h in input
pixels, then class scores), the layout Ultralytics YOLOv8 exports.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LABELS = ["circle", "square", "triangle"]
INPUT_SIZE = 320
STRIDES = (8, 16, 32)
# Pyramid level by the box's longer side in input pixels; the ranges overlap so boxes near a
# boundary train both levels (NMS removes the duplicate at inference).
LEVEL_RANGES = ((0.0, 48.0), (32.0, 96.0), (64.0, float("inf")))
CENTRE_RADIUS = 1.5  # in strides: positives lie this close to the box centre
SOURCE_SIZE = (640, 480)
HELDOUT_SEED = 1_000_000
PREPROCESS = {"size": [INPUT_SIZE, INPUT_SIZE], "resize": "letterbox", "color": "rgb", "scale": 1 / 255.0}


def input_spec():
    from lepton_edge.core.tensors import TensorSpec

    return TensorSpec("images", (1, 3, INPUT_SIZE, INPUT_SIZE), np.dtype("float32"))


def make_dataset(seeds: range) -> tuple[np.ndarray, list[np.ndarray]]:
    """Images as uint8 ``(N, 3, 320, 320)`` RGB letterboxed by the runtime's Preprocessor, and targets
    ``(G, 5)`` per image: class id, then x1, y1, x2, y2 in input pixels."""
    from lepton_edge.runtime.preprocess import Preprocessor
    from lepton_edge.runtime.sources.shapes import random_sample

    pre = Preprocessor(input_spec())
    buffer = pre.new_buffer()
    images = np.empty((len(seeds), 3, INPUT_SIZE, INPUT_SIZE), np.uint8)
    targets = []
    for i, seed in enumerate(seeds):
        image, boxes, classes = random_sample(seed, *SOURCE_SIZE)
        t = pre(image, buffer)
        # The tensor is uint8 / 255 exactly, so this recovers the uint8 canvas and saves 4x memory.
        np.rint(buffer[0] * 255.0, out=buffer[0])
        images[i] = buffer[0]
        scaled = boxes * np.array([t.scale_x, t.scale_y, t.scale_x, t.scale_y], np.float32)
        scaled += np.array([t.pad_x, t.pad_y, t.pad_x, t.pad_y], np.float32)
        targets.append(np.concatenate([classes[:, None].astype(np.float32), scaled], 1))
    return images, targets


def anchor_points() -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres ``(2100, 2)`` in input pixels and their strides ``(2100,)``, level by level."""
    points, strides = [], []
    for s in STRIDES:
        n = INPUT_SIZE // s
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        points.append(np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32) * s + s / 2)
        strides.append(np.full(n * n, s, np.float32))
    return np.concatenate(points), np.concatenate(strides)


def build_model():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class ConvBN(nn.Sequential):
        def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1) -> None:
            super().__init__(
                nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU()
            )

    class Residual(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.body = nn.Sequential(ConvBN(c, c // 2, 1), ConvBN(c // 2, c, 3))

        def forward(self, x):
            return x + self.body(x)

    class ShapesDetector(nn.Module):
        def __init__(self, width: int = 64) -> None:
            super().__init__()
            self.stem = nn.Sequential(ConvBN(3, 16, 3, 2), ConvBN(16, 32, 3, 2), Residual(32))  # stride 4
            self.c3 = nn.Sequential(ConvBN(32, 64, 3, 2), Residual(64))  # stride 8
            self.c4 = nn.Sequential(ConvBN(64, 96, 3, 2), Residual(96))  # stride 16
            self.c5 = nn.Sequential(ConvBN(96, 128, 3, 2), Residual(128))  # stride 32
            self.lateral = nn.ModuleList([ConvBN(c, width, 1) for c in (64, 96, 128)])
            self.smooth = nn.ModuleList([ConvBN(width, width, 3) for _ in STRIDES])
            self.head = ConvBN(width, width, 3)
            self.box = nn.Conv2d(width, 4, 1)
            self.cls = nn.Conv2d(width, len(LABELS), 1)
            nn.init.constant_(self.cls.bias, -math.log((1 - 0.01) / 0.01))
            points, strides = anchor_points()
            self.register_buffer("points", torch.from_numpy(points).T.contiguous(), persistent=False)
            self.register_buffer("strides", torch.from_numpy(strides)[None], persistent=False)

        def raw(self, x):
            """Per-anchor ``(B, 4, A)`` side distances in input pixels and ``(B, C, A)`` class logits."""
            f3 = self.c3(self.stem(x))
            f4 = self.c4(f3)
            f5 = self.c5(f4)
            p5 = self.lateral[2](f5)
            p4 = self.lateral[1](f4) + F.interpolate(p5, scale_factor=2.0, mode="nearest")
            p3 = self.lateral[0](f3) + F.interpolate(p4, scale_factor=2.0, mode="nearest")
            dist, logits = [], []
            for p, smooth in zip((p3, p4, p5), self.smooth, strict=True):
                h = self.head(smooth(p))
                dist.append(self.box(h).flatten(2))
                logits.append(self.cls(h).flatten(2))
            return F.softplus(torch.cat(dist, 2)) * self.strides, torch.cat(logits, 2)

        def forward(self, x):
            """The exported graph: ``[B, 4+C, A]`` with cx, cy, w, h in input pixels and sigmoid scores."""
            dist, logits = self.raw(x)
            lt, rb = dist[:, :2], dist[:, 2:]
            centre = self.points + (rb - lt) / 2
            size = lt + rb
            return torch.cat([centre, size, logits.sigmoid()], 1)

    return ShapesDetector()


def assign(targets: np.ndarray, points: np.ndarray, strides: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For one image: the ground-truth index each anchor learns (-1 = background) and the GT boxes."""
    n_anchors = len(points)
    owner = np.full(n_anchors, -1, np.int64)
    if not len(targets):
        return owner, np.zeros((0, 4), np.float32)
    boxes = targets[:, 1:5]
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = (
        (points[:, None, 0] > boxes[None, :, 0]) & (points[:, None, 0] < boxes[None, :, 2])
        & (points[:, None, 1] > boxes[None, :, 1]) & (points[:, None, 1] < boxes[None, :, 3])
    )
    near = np.all(np.abs(points[:, None] - centre[None]) < CENTRE_RADIUS * strides[:, None, None], axis=2)
    level_ok = np.zeros((n_anchors, len(boxes)), bool)
    for s, (lo, hi) in zip(STRIDES, LEVEL_RANGES, strict=True):
        level_ok |= (strides[:, None] == s) & (side[None] >= lo) & (side[None] < hi)
    candidate = inside & near & level_ok
    # A box too small to contain any anchor centre of its level still gets the nearest one.
    for g in np.flatnonzero(~candidate.any(0)):
        allowed = np.flatnonzero(level_ok[:, g])
        nearest = allowed[np.argmin(np.abs(points[allowed] - centre[g]).sum(1))]
        candidate[nearest, g] = True
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cost = np.where(candidate, area[None], np.inf)  # an anchor claimed twice learns the smaller box
    has = candidate.any(1)
    owner[has] = np.argmin(cost[has], 1)
    return owner, boxes


def giou(a, b):
    """Generalised IoU of matching xyxy rows (torch)."""
    import torch

    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    union = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter
    iou = inter / union.clamp(min=1e-6)
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(1)
    return iou - (hull - union) / hull.clamp(min=1e-6), iou


def compute_loss(model, images, targets: list[np.ndarray], points: np.ndarray, strides: np.ndarray):
    """Total loss of one batch (a tensor to back-propagate), and its class and box parts as floats."""
    import torch
    from torch.nn import functional as F

    dist, logits = model.raw(images)  # (B, 4, A), (B, C, A)
    gt_boxes, gt_classes, batch_idx, anchor_idx = [], [], [], []
    for b, t in enumerate(targets):
        owner, boxes = assign(t, points, strides)
        pos = np.flatnonzero(owner >= 0)
        batch_idx.append(np.full(len(pos), b))
        anchor_idx.append(pos)
        gt_boxes.append(boxes[owner[pos]])
        gt_classes.append(t[owner[pos], 0].astype(np.int64))
    batch_idx = torch.from_numpy(np.concatenate(batch_idx))
    anchor_idx = torch.from_numpy(np.concatenate(anchor_idx))
    gt_boxes = torch.from_numpy(np.concatenate(gt_boxes))
    gt_classes = torch.from_numpy(np.concatenate(gt_classes))
    n_pos = max(len(anchor_idx), 1)

    p = model.points.T[anchor_idx]  # (P, 2)
    d = dist[batch_idx, :, anchor_idx]  # (P, 4)
    pred_boxes = torch.cat([p - d[:, :2], p + d[:, 2:]], 1)
    g, iou = giou(pred_boxes, gt_boxes)
    box_loss = (1 - g).sum() / n_pos

    cls_target = torch.zeros_like(logits)
    cls_target[batch_idx, gt_classes, anchor_idx] = iou.detach().clamp(min=0.05)
    cls_loss = F.binary_cross_entropy_with_logits(logits, cls_target, reduction="sum") / n_pos
    return cls_loss + 2.0 * box_loss, cls_loss.item(), box_loss.item()


def train(args: argparse.Namespace):
    import copy

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)

    started = time.monotonic()
    images, targets = make_dataset(range(args.train_images))
    print(f"{len(images)} training images generated in {time.monotonic() - started:.0f} s")
    points, strides = anchor_points()

    model = build_model()
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    model = model.to(memory_format=torch.channels_last)  # about 1.5x faster with oneDNN on CPU
    decay_params = [p for p in model.parameters() if p.ndim > 1]
    other_params = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay_params, "weight_decay": 5e-4}, {"params": other_params, "weight_decay": 0.0}],
        lr=args.lr,
    )
    warmup = min(300, args.steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    started = time.monotonic()
    for step in range(args.steps):
        idx = rng.integers(0, len(images), args.batch_size)
        batch = images[idx].copy()
        batch_targets = [targets[i].copy() for i in idx]
        # Mirror flips: each class stays itself, and the letterbox padding is symmetric.
        for j, (flip_x, flip_y) in enumerate(rng.random((len(idx), 2)) < 0.5):
            t = batch_targets[j]
            if flip_x:
                batch[j] = batch[j, :, :, ::-1]
                t[:, [1, 3]] = INPUT_SIZE - t[:, [3, 1]]
            if flip_y:
                batch[j] = batch[j, :, ::-1, :]
                t[:, [2, 4]] = INPUT_SIZE - t[:, [4, 2]]
        x = torch.from_numpy(batch).float().div_(255.0).contiguous(memory_format=torch.channels_last)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss, cls_loss, box_loss = compute_loss(model, x, batch_targets, points, strides)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        with torch.no_grad():
            decay = 0.999 * (1 - math.exp(-(step + 1) / 200))
            for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
                if e.dtype.is_floating_point:
                    e.mul_(decay).add_(m.detach(), alpha=1 - decay)
                else:
                    e.copy_(m)
        if step % 100 == 0 or step == args.steps - 1:
            elapsed = time.monotonic() - started
            print(f"step {step}/{args.steps} loss {loss.item():.3f} (cls {cls_loss:.3f} box {box_loss:.3f}) "
                  f"lr {lr_at(step):.5f} {elapsed:.0f} s", flush=True)
    return ema


def export(model, path: Path) -> None:
    """Export to ONNX opset 17, fold what is constant (the legacy exporter leaves Shape/Reshape chains
    behind), then add the metadata the runtime reads."""
    import warnings

    import onnx
    import onnxscript.optimizer
    import torch

    model = model.eval()
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter: deprecated, works in 2.13
        torch.onnx.export(
            model, (dummy,), str(path), input_names=["images"], output_names=["output0"],
            opset_version=17, do_constant_folding=True, dynamo=False,
        )
    proto = onnxscript.optimizer.optimize(onnx.load(str(path)))
    meta = {
        "lepton.task": "detect",
        "lepton.layout": "yolov8",
        "lepton.labels": json.dumps(LABELS),
        "lepton.preprocess": json.dumps(PREPROCESS),
        "lepton.dataset": "synthetic://shapes",
        "names": str(dict(enumerate(LABELS))),
        "stride": str(max(STRIDES)),
        "imgsz": str([INPUT_SIZE, INPUT_SIZE]),
        "task": "detect",
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "lepton-edge models/train_shapes_detector.py"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    from lepton_edge.engines.evaluation.accuracy import box_iou

    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        order = rest[box_iou(boxes[i : i + 1], boxes[rest])[0] <= iou_threshold]
    return np.array(keep, np.int64)


def _own_postprocessor(conf_threshold: float, iou_threshold: float = 0.45, max_det: int = 100):
    """A plain YOLOv8-layout decoder, used only while lepton_edge.runtime.postprocess is not available."""
    from lepton_edge.core.results import Detections

    def post(outputs: list[np.ndarray], transform) -> Detections:
        out = outputs[0][0].T  # (A, 4+C)
        scores_all = out[:, 4:]
        anchor, cls = np.nonzero(scores_all > conf_threshold)
        scores = scores_all[anchor, cls]
        cxcywh = out[anchor, :4]
        boxes = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
        keep = []
        for c in np.unique(cls):
            members = np.flatnonzero(cls == c)
            keep.extend(members[_nms(boxes[members], scores[members], iou_threshold)])
        keep = np.array(keep, np.int64)
        keep = keep[np.argsort(-scores[keep], kind="stable")][:max_det]
        return Detections(transform.to_source(boxes[keep]), scores[keep], cls[keep], tuple(LABELS))

    return post


def evaluate(model_path: Path, images: int = 300, conf_threshold: float = 0.001) -> dict:
    """mAP@0.5 on ``images`` held-out scenes through the runtime path: OnnxRuntimeBackend, the
    Preprocessor on the 640x480 BGR frame, and the runtime's detection postprocessor (boxes in source
    pixels), compared with the renderer's ground truth."""
    import onnx

    from lepton_edge.config.pipeline import PreprocessConfig
    from lepton_edge.engines.evaluation.accuracy import mean_average_precision
    from lepton_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from lepton_edge.runtime.preprocess import Preprocessor
    from lepton_edge.runtime.sources.shapes import random_sample

    onnx.checker.check_model(onnx.load(str(model_path)))
    backend = OnnxRuntimeBackend(model_path).load()
    try:
        pre = Preprocessor(backend.inputs[0], PreprocessConfig(**PREPROCESS))
        post, decoder = _runtime_postprocessor(backend, conf_threshold)
        if post is None:
            post = _own_postprocessor(conf_threshold)
        buffer = pre.new_buffer()
        predictions, truth = [], []
        for seed in range(HELDOUT_SEED, HELDOUT_SEED + images):
            frame, boxes, classes = random_sample(seed, *SOURCE_SIZE)
            transform = pre(frame, buffer)
            predictions.append(post(backend.infer({"images": buffer}), transform))
            truth.append((boxes, classes))
    finally:
        backend.close()
    result = mean_average_precision(predictions, truth, num_classes=len(LABELS), iou_threshold=0.5)
    return {
        "map50": round(result["map"], 4),
        "per_class": {LABELS[c]: round(ap, 4) for c, ap in result["per_class"].items()},
        "images": result["images"],
        "objects": int(sum(len(c) for _, c in truth)),
        "heldout_seeds": f"{HELDOUT_SEED}..{HELDOUT_SEED + images - 1}",
        "conf_threshold": conf_threshold,
        "decoder": decoder,
    }


def _runtime_postprocessor(backend, conf_threshold: float):
    try:
        from lepton_edge.config.pipeline import DetectConfig
        from lepton_edge.runtime.postprocess import create_postprocessor
    except ImportError as e:
        print(f"lepton_edge.runtime.postprocess unavailable ({e}); decoding with this script's own decoder")
        return None, "train_shapes_detector._own_postprocessor"
    cfg = DetectConfig(type="detect", conf_threshold=conf_threshold)
    return (
        create_postprocessor(cfg, backend.outputs, backend.metadata, tuple(LABELS)),
        "lepton_edge.runtime.postprocess.create_postprocessor",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=HERE / "shapes_detector.onnx")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-images", type=int, default=300)
    parser.add_argument("--eval-only", type=Path, metavar="MODEL", help="only evaluate this ONNX model")
    args = parser.parse_args()

    if args.eval_only is None:
        started = time.monotonic()
        model = train(args)
        print(f"trained in {time.monotonic() - started:.0f} s, "
              f"{sum(p.numel() for p in model.parameters())} parameters")
        export(model, args.out)
        args.out.with_suffix("").with_suffix(".labels.txt").write_text("\n".join(LABELS) + "\n")
        print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(json.dumps(evaluate(args.eval_only or args.out, args.eval_images), indent=2))


if __name__ == "__main__":
    main()
