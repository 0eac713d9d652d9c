"""Export tiny Ultralytics models of every task family to ONNX and record Ultralytics' own predictions on them.

Reference data for issue #10: the runtime's decoders for each Ultralytics task family are checked against what
Ultralytics' ``predict`` returns on the same ONNX files and the same frames. Run by hand, never by the tests::

    .venv/bin/python models/export_ultralytics.py            # ~1.5 min on 2 cores (~3 min with the first pip)
    .venv/bin/python models/export_ultralytics.py --only detect pose

Run it with the project's interpreter: it renders the frames with ``lepton_edge.runtime.sources.shapes``, then
creates (once) a separate virtualenv ``out/venv-ultralytics`` (``out/`` is git-ignored) with the pinned versions
below (torch from the machine's local CPU wheel, the rest from PyPI), and re-runs itself inside that venv to build,
export and predict. Nothing is downloaded at run time besides that pip install: the models are built from the
yaml files written here (random weights, no ``*.pt``), Ultralytics runs with ``YOLO_OFFLINE=1``,
``YOLO_AUTOINSTALL=False`` and its settings in ``out/ultralytics-work/``, and no plotting (so no font) is done.

What it writes, all under ``models/ultralytics/`` (committed, a few MB in all):

- ``frames/frame_0N.png``: the fixed test frames (BGR scenes of ``random_sample``, several sizes and aspects);
- ``<family>/<model>.yaml``: the tiny model definition (a stock Ultralytics yaml with a tiny scale, few classes,
  attention blocks swapped for plain ``C3k2`` because they need >= 64 channels per head);
- ``<family>/<model>[_variant].onnx``: Ultralytics' ONNX export (metadata as Ultralytics writes it);
- ``<family>/<model>[_variant].json``: Ultralytics' predictions on every frame (boxes xyxy, conf, cls, keypoints,
  obb xywhr, top-5) and, for segmentation, ``.masks.npz`` (one bool array ``[N, H, W]`` per frame, as
  ``Results.masks.data``);
- ``<family>/README.md``: the card (files, shapes, metadata, predict arguments, detections per frame);
- ``versions.json`` and ``README.md``.

Random weights give constant outputs, so the networks are made input-dependent first: batch-norm statistics are
re-estimated on 48 shapes scenes (seeds 0..47, never the test frames), then the biases of each class-score layer
are shifted (per class to a common logit quantile, then one offset found by bisection) until the 25th-percentile
calibration frame has ``per_frame`` scores above 0.25 before NMS. Per-frame counts still spread (random features
shift whole frames): see the cards. PyPI's torchvision is a CUDA build that cannot load next to the CPU torch;
``torchvision_cpu_shim`` works around it.
Everything is seeded: a rerun writes the same references (JSON, npz); the ONNX files differ only in the ``date``
Ultralytics writes into their metadata.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEST = HERE / "ultralytics"
VENV = ROOT / "out" / "venv-ultralytics"
WORK = ROOT / "out" / "ultralytics-work"

# The versions this was made with. torch comes from the machine's local CPU wheel, torchvision must match it.
PINS = {
    "ultralytics": "8.4.190",
    "torch": "2.13.0",
    "torchvision": "0.28.0",
    "onnx": "1.23.2",
    "onnxruntime": "1.32.0",
    "onnxslim": "0.1.98",
}

SHAPES = ["circle", "square", "triangle"]
# Test frames: (seed, width, height). Several aspects so letterboxing and box rescaling are exercised.
FRAMES = [(2000, 320, 240), (2001, 320, 240), (2002, 320, 240), (2003, 320, 240), (2004, 240, 320), (2005, 256, 256)]
CALIB_SEEDS = range(48)
CONF = 0.25
IOU = 0.7

# dynamic=True with onnxslim (the default simplify=True) adds ~0.9 MB of symbolic value_info shape annotations
# (1.25 MB in all for the detector), past our 1 MB per file; without onnxslim the graph is the plain torch export.
DYNAMIC = {"dynamic": True, "simplify": False}

# nms=True is exported for the detector only: for segment, pose and obb its output has the same layout as the YOLO26
# end-to-end exports ([1, 300, 6 + extra]), and three more ~0.5 MB files would double the folder's size.

# One entry per exported model. base: the stock yaml inside the ultralytics package; variants: export kwargs.
# scale: [depth, width, max_channels]. per_frame: how many (anchor, class) pairs per frame should pass CONF on
# the calibration frames, which the bias calibration aims at (NMS then merges some).
MODELS = [
    {
        "family": "detect",
        "name": "yolo11t-detect",
        "base": "11/yolo11.yaml",
        "task": "detect",
        "nc": 3,
        "names": SHAPES,
        "imgsz": 160,
        "scale": [0.5, 0.0625, 256],
        "reg_max": 4,
        "per_frame": 8,
        "variants": {"": {}, "dynamic": DYNAMIC, "fp16": {"quantize": 16}, "nms": {"nms": True}},
    },
    {
        "family": "detect",
        "name": "yolo26t-detect",
        "base": "26/yolo26.yaml",
        "task": "detect",
        "nc": 3,
        "names": SHAPES,
        "imgsz": 160,
        "scale": [0.5, 0.0625, 256],
        "per_frame": 6,
        "variants": {"": {}, "e2e": {"nms": False}},
    },
    {
        "family": "segment",
        "name": "yolo11t-seg",
        "base": "11/yolo11-seg.yaml",
        "task": "segment",
        "nc": 3,
        "names": SHAPES,
        "imgsz": 160,
        "scale": [0.5, 0.0625, 256],
        "reg_max": 4,
        "per_frame": 8,
        "variants": {"": {}},
    },
    {
        "family": "segment",
        "name": "yolo26t-seg",
        "base": "26/yolo26-seg.yaml",
        "task": "segment",
        "nc": 3,
        "names": SHAPES,
        "imgsz": 160,
        "scale": [0.5, 0.0625, 256],
        "per_frame": 6,
        "variants": {"e2e": {"nms": False}},
    },
    {
        "family": "pose",
        "name": "yolo11t-pose",
        "base": "11/yolo11-pose.yaml",
        "task": "pose",
        "nc": 1,
        "names": ["shape"],
        "kpt_shape": [5, 3],
        "imgsz": 160,
        "scale": [0.5, 0.0625, 256],
        "reg_max": 4,
        "per_frame": 4,
        "variants": {"": {}},
    },
    {
        "family": "pose",
        "name": "yolo26t-pose",
        "base": "26/yolo26-pose.yaml",
        "task": "pose",
        "nc": 1,
        "names": ["shape"],
        "kpt_shape": [5, 3],
        "imgsz": 160,
        "scale": [0.5, 0.0625, 256],
        "per_frame": 4,
        "variants": {"e2e": {"nms": False}},
    },
    {
        "family": "obb",
        "name": "yolo11t-obb",
        "base": "11/yolo11-obb.yaml",
        "task": "obb",
        "nc": 3,
        "names": SHAPES,
        "imgsz": 160,
        "scale": [0.5, 0.0625, 256],
        "reg_max": 4,
        "per_frame": 8,
        "variants": {"": {}},
    },
    {
        "family": "obb",
        "name": "yolo26t-obb",
        "base": "26/yolo26-obb.yaml",
        "task": "obb",
        "nc": 3,
        "names": SHAPES,
        "imgsz": 160,
        "scale": [0.5, 0.0625, 256],
        "per_frame": 6,
        "variants": {"e2e": {"nms": False}},
    },
    {
        "family": "classify",
        "name": "yolo11t-cls",
        "base": "11/yolo11-cls.yaml",
        "task": "classify",
        "nc": 10,
        "names": [f"class{i}" for i in range(10)],
        "imgsz": 128,
        "scale": [0.5, 0.0625, 256],
        "variants": {"": {}, "dynamic": {"dynamic": True}},
    },
    {
        "family": "rtdetr",
        "name": "rtdetr-tiny",
        "base": None,
        "task": "detect",
        "nc": 3,
        "names": SHAPES,
        "imgsz": 160,
        "per_frame": 8,
        "variants": {"": {}},
    },
]

# RT-DETR has no small stock yaml (r18 and l are tens of MB): a tiny one in the rtdetr-l layout.
RTDETR_YAML = {
    "nc": 3,
    "backbone": [
        [-1, 1, "Conv", [16, 3, 2]],  # 0-P1/2
        [-1, 1, "Conv", [16, 3, 2]],  # 1-P2/4
        [-1, 1, "Conv", [16, 3, 2]],  # 2-P3/8
        [-1, 1, "Conv", [16, 3, 2]],  # 3-P4/16
        [-1, 1, "Conv", [32, 3, 2]],  # 4-P5/32
    ],
    "head": [
        [-1, 1, "Conv", [16, 1, 1, None, 1, 1, False]],  # 5 input_proj.2
        [-1, 1, "AIFI", [32, 2]],  # 6
        [-1, 1, "Conv", [16, 1, 1]],  # 7 Y5
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [3, 1, "Conv", [16, 1, 1, None, 1, 1, False]],  # 9 input_proj.1
        [[-2, -1], 1, "Concat", [1]],
        [-1, 1, "RepC3", [16]],  # 11
        [-1, 1, "Conv", [16, 1, 1]],  # 12 Y4
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [2, 1, "Conv", [16, 1, 1, None, 1, 1, False]],  # 14 input_proj.0
        [[-2, -1], 1, "Concat", [1]],
        [-1, 1, "RepC3", [16]],  # 16 X3
        [-1, 1, "Conv", [16, 3, 2]],
        [[-1, 12], 1, "Concat", [1]],
        [-1, 1, "RepC3", [16]],  # 19 F4
        [-1, 1, "Conv", [16, 3, 2]],
        [[-1, 7], 1, "Concat", [1]],
        [-1, 1, "RepC3", [16]],  # 22 F5
        # nc, hidden dim, queries, decoder points, heads, decoder layers, feed-forward dim
        [[16, 19, 22], 1, "RTDETRDecoder", ["nc", 32, 50, 4, 2, 2, 64]],
    ],
}


# ----------------------------------------------------------------------------------------------------------------
# Outer stage: the project's interpreter renders frames and prepares the venv.


def write_frames() -> None:
    import cv2
    import numpy as np

    from lepton_edge.runtime.sources.shapes import random_sample

    (DEST / "frames").mkdir(parents=True, exist_ok=True)
    for i, (seed, w, h) in enumerate(FRAMES):
        image, _, _ = random_sample(seed, width=w, height=h, count=(3, 6))
        cv2.imwrite(str(DEST / "frames" / f"frame_{i:02d}.png"), image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    WORK.mkdir(parents=True, exist_ok=True)
    calib = np.stack([random_sample(s, width=320, height=240, count=(3, 6))[0] for s in CALIB_SEEDS])
    np.save(WORK / "calibration_frames.npy", calib)  # BGR uint8 [48, 240, 320, 3]


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    wanted = [f"{k}=={v}" for k, v in PINS.items()]
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    have = {line.split("+")[0].lower() for line in freeze.splitlines()}  # torch==2.13.0+cpu -> torch==2.13.0
    if not all(w in have for w in wanted):
        subprocess.run(["nice", "-n", "10", str(python), "-m", "pip", "install", "-q", *wanted], check=True)
    return python


def offline_env() -> dict:
    """The environment Ultralytics runs in: offline, no auto-install, settings under ``out/``."""
    env = dict(os.environ)
    env.update(
        YOLO_OFFLINE="1",  # no connectivity checks, no hub, no downloads
        YOLO_AUTOINSTALL="False",  # a missing requirement is an error, not a pip install
        YOLO_CONFIG_DIR=str(WORK / "config"),  # settings.json out of the home folder
        PYTHONHASHSEED="0",
    )
    return env


def outer(args: argparse.Namespace) -> None:
    t0 = time.time()
    write_frames()
    python = ensure_venv()
    env = offline_env()
    cmd = ["nice", "-n", "10", str(python), str(Path(__file__).resolve()), "--inner"]
    if args.only:
        cmd += ["--only", *args.only]
    subprocess.run(cmd, check=True, env=env, cwd=str(WORK))
    print(f"done in {time.time() - t0:.0f} s")


# ----------------------------------------------------------------------------------------------------------------
# Inner stage: inside the ultralytics venv.


def tiny_yaml(spec: dict) -> dict:
    """The stock yaml with a tiny scale, our classes, and attention blocks replaced (they need >= 64 channels)."""
    import ultralytics
    import yaml

    if spec["base"] is None:
        d = copy.deepcopy(RTDETR_YAML)
    else:
        base = Path(ultralytics.__file__).parent / "cfg" / "models" / spec["base"]
        d = yaml.safe_load(base.read_text())
        d["scales"] = {"t": spec["scale"]}
        d["scale"] = "t"
        for layer in d["backbone"] + d["head"]:
            if layer[2] == "C2PSA":  # C2PSA needs >= 128 channels (heads = c // 64)
                layer[2], layer[3] = "C3k2", [layer[3][0], True]
            elif layer[2] == "C3k2" and len(layer[3]) >= 4:
                layer[3][3] = False  # the attention flag of YOLO26's last C3k2: same constraint
    d["nc"] = spec["nc"]
    if "reg_max" in spec:
        d["reg_max"] = spec["reg_max"]
    if "kpt_shape" in spec:
        d["kpt_shape"] = spec["kpt_shape"]
    return d


def letterbox_batch(frames, imgsz: int, task: str):
    """Frames as Ultralytics' predictors feed them (BGR uint8 in, RGB float 0..1 NCHW out)."""
    import numpy as np
    import torch
    from ultralytics.data.augment import LetterBox

    out = []
    for f in frames:
        if task == "classify":
            import cv2

            img = cv2.resize(f, (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)
        else:
            img = LetterBox((imgsz, imgsz), auto=False, stride=32)(image=f)
        out.append(img[..., ::-1].transpose(2, 0, 1))
    return torch.from_numpy(np.ascontiguousarray(np.stack(out))).float() / 255.0


def recalibrate(model, spec: dict, frames) -> None:
    """Re-estimate every batch-norm's statistics on real frames (cumulative average), the rest in eval mode."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    x = letterbox_batch(frames, spec["imgsz"], spec["task"])
    with torch.no_grad():
        for i in range(0, len(x), 8):
            model(x[i : i + 8])
    model.eval()


def score_groups(model) -> dict:
    """The last layer of every class-score branch, by branch: one2many, one2one (end-to-end heads), RT-DETR."""
    head = model.model[-1]
    if hasattr(head, "dec_score_head"):  # RT-DETR: the last decoder layer's scores are the ones returned
        return {"dec": [head.dec_score_head[-1]]}
    groups = {"cv3": [seq[-1] for seq in head.cv3]}
    if getattr(head, "one2one_cv3", None) is not None:
        groups["one2one_cv3"] = [seq[-1] for seq in head.one2one_cv3]
    return groups


def passing_per_frame(model, x, nc: int) -> float:
    """Scores above CONF in the model's own output (before any NMS): the count of the 25th-percentile frame.

    The frames' counts spread widely (random features shift whole frames), so a low quantile, not the mean, keeps
    most frames from having none.
    """
    import torch

    with torch.no_grad():
        y = model(x)
    while isinstance(y, (tuple, list)):  # (y, raw) or ((y, mask coefficients), proto)...
        y = y[0]
    head = model.model[-1]
    if hasattr(head, "dec_score_head") or getattr(head, "end2end", False):  # [B, k, 6 + extra]: box, score, cls
        passing = (y[..., 4] > CONF).flatten(1).sum(1)
    else:  # [B, 4 + nc + extra, anchors]
        passing = (y[:, 4 : 4 + nc] > CONF).flatten(1).sum(1)
    return float(torch.quantile(passing.float(), 0.25))


def class_logits(model, x, layers: list, nc: int):
    """[nc, frames * anchors] logits of the given score layers (conv maps or RT-DETR's [B, queries, nc])."""
    import torch

    captured = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: captured.append(o.detach())) for m in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    flat = [o.permute(2, 0, 1).reshape(nc, -1) if o.dim() == 3 else o.transpose(0, 1).reshape(nc, -1) for o in captured]
    return torch.cat(flat[: len(layers)], 1).float()


def shift_biases(layers: list, shift) -> None:
    import torch

    with torch.no_grad():
        for m in layers:
            m.bias += shift.to(m.bias.dtype)


def calibrate_bias(model, spec: dict, frames) -> dict:
    """Shift the class biases so about ``per_frame`` scores per frame pass CONF on the calibration frames.

    First per class, to a common quantile of its logits (so every class shows up), then one offset for all classes,
    found by bisection on the count in the model's output. End-to-end heads get both branches tuned, each on the
    output it produces (one-to-many: raw anchors, one-to-one: the top-k list).
    """
    import torch

    head = model.model[-1]
    x = letterbox_batch(frames, spec["imgsz"], spec["task"])
    model.eval()
    shifts = {}
    nc = spec["nc"]
    for gname, layers in score_groups(model).items():
        if hasattr(head, "one2one_cv3"):
            head.end2end = gname == "one2one_cv3"
        base = -torch.quantile(class_logits(model, x, layers, nc), 0.99, dim=1)  # each class's 99th pct at 0
        lo, hi = -20.0, 20.0  # the passing count grows with the offset
        for _ in range(24):
            mid = (lo + hi) / 2
            shift_biases(layers, base + mid)
            n = passing_per_frame(model, x, nc)
            shift_biases(layers, -(base + mid))
            lo, hi = (lo, mid) if n > spec["per_frame"] else (mid, hi)
        shift_biases(layers, base + lo)
        shifts[gname] = [round(float(v), 4) for v in base + lo]
        shifts[gname + "_passing_per_frame"] = round(passing_per_frame(model, x, nc), 2)
    if hasattr(head, "one2one_cv3"):
        head.end2end = True
    return shifts


def classify_spread(model, spec: dict, frames) -> None:
    """Scale the classifier's logits so top-5 confidences differ visibly between frames (not all ~1/nc)."""
    import torch

    head = model.model[-1]
    x = letterbox_batch(frames, spec["imgsz"], "classify")
    captured = []
    hook = head.linear.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    logits = captured[0]
    std = float((logits - logits.mean(0, keepdim=True)).std())
    k = 2.0 / max(std, 1e-6)  # logits' spread across frames ~2 nats
    with torch.no_grad():
        head.linear.weight *= k
        head.linear.bias.copy_(k * (head.linear.bias - logits.mean(0)))  # centred: no class wins on every frame


def build(spec: dict, calib):
    import torch
    import yaml
    from ultralytics import RTDETR, YOLO

    fam = DEST / spec["family"]
    fam.mkdir(parents=True, exist_ok=True)
    ypath = fam / f"{spec['name']}.yaml"
    d = tiny_yaml(spec)
    header = (
        f"# {spec['name']}: tiny {spec['task']} model for lepton-edge's reference outputs (issue #10).\n"
        f"# Written by models/export_ultralytics.py from "
        f"{'ultralytics/cfg/models/' + spec['base'] if spec['base'] else 'the rtdetr-l layout'} "
        f"(ultralytics {PINS['ultralytics']}); random weights, see README.md.\n"
    )
    ypath.write_text(header + yaml.safe_dump(d, sort_keys=False, default_flow_style=None, width=120))
    torch.manual_seed(0)
    # Built from a copy in the work folder: the exporter writes its .onnx next to the yaml it was built from
    wpath = WORK / f"{spec['name']}.yaml"
    wpath.write_text(ypath.read_text())
    model = RTDETR(str(wpath)) if spec["base"] is None else YOLO(str(wpath), task=spec["task"])
    net = model.model
    net.names = dict(enumerate(spec["names"]))
    recalibrate(net, spec, calib)
    if spec["task"] == "classify":
        classify_spread(net, spec, calib)
        shifts = {}
    else:
        shifts = calibrate_bias(net, spec, calib)
    return model, ypath, shifts


def export_variant(model, spec: dict, variant: str, kwargs: dict) -> tuple[Path, dict]:
    import shutil

    args = {"format": "onnx", "imgsz": spec["imgsz"], "device": "cpu", "simplify": True, **kwargs}
    f = Path(model.export(**args))
    stem = spec["name"] + (f"_{variant}" if variant else "")
    dst = DEST / spec["family"] / f"{stem}.onnx"
    shutil.move(str(f), dst)
    return dst, args


def predict(spec: dict, onnx_path: Path) -> tuple[dict, dict]:
    """Ultralytics' predictions on every frame; masks separately (name -> bool array)."""
    import numpy as np
    from ultralytics import RTDETR, YOLO

    frames = sorted((DEST / "frames").glob("frame_*.png"))
    model = RTDETR(str(onnx_path)) if spec["base"] is None else YOLO(str(onnx_path), task=spec["task"])
    pargs = {"imgsz": spec["imgsz"], "conf": CONF, "iou": IOU, "device": "cpu", "save": False, "verbose": False}
    out, masks = [], {}

    def r4(a):
        return np.round(np.asarray(a, dtype=np.float64), 4).tolist()

    model.predict(str(frames[0]), **pargs)  # sets up the predictor, so its preprocess can be watched
    inputs = []
    preprocess = model.predictor.preprocess

    def watched(im):
        x = preprocess(im)
        inputs.append(list(x.shape))
        return x

    model.predictor.preprocess = watched
    for path in frames:
        r = model.predict(str(path), **pargs)[0]
        # input_shape: the tensor Ultralytics fed the model (dynamic models get a stride-multiple rectangle)
        rec = {"frame": f"frames/{path.name}", "orig_shape": list(r.orig_shape), "input_shape": inputs[-1]}
        if r.probs is not None:
            rec["top5"] = [int(i) for i in r.probs.top5]
            rec["top5conf"] = r4(r.probs.top5conf.cpu().numpy())
            rec["probs"] = r4(r.probs.data.cpu().numpy())
        if r.boxes is not None:
            rec["xyxy"] = r4(r.boxes.xyxy.cpu().numpy())
            rec["conf"] = r4(r.boxes.conf.cpu().numpy())
            rec["cls"] = [int(c) for c in r.boxes.cls.cpu().numpy()]
        if r.obb is not None:
            rec["xywhr"] = r4(r.obb.xywhr.cpu().numpy())
            rec["xyxyxyxy"] = r4(r.obb.xyxyxyxy.cpu().numpy())
            rec["conf"] = r4(r.obb.conf.cpu().numpy())
            rec["cls"] = [int(c) for c in r.obb.cls.cpu().numpy()]
        if r.keypoints is not None:
            rec["keypoints"] = r4(r.keypoints.data.cpu().numpy())  # [N, K, 3]: x, y, visibility
        if r.masks is not None:
            m = r.masks.data.cpu().numpy() > 0.5
            masks[path.stem] = m
            rec["masks_shape"] = list(m.shape)
            rec["mask_pixels"] = [int(a.sum()) for a in m]
        elif spec["task"] == "segment":
            masks[path.stem] = np.zeros((0, spec["imgsz"], spec["imgsz"]), bool)
            rec["masks_shape"] = [0, spec["imgsz"], spec["imgsz"]]
            rec["mask_pixels"] = []
        out.append(rec)
    return {"predict_args": pargs, "frames": out}, masks


def onnx_facts(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path))

    def shape(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    def dtype(v):
        return onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower()

    return {
        "bytes": path.stat().st_size,
        "opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": {v.name: [dtype(v), shape(v)] for v in m.graph.input},
        "outputs": {v.name: [dtype(v), shape(v)] for v in m.graph.output},
        "metadata": {p.key: p.value for p in m.metadata_props},
    }


def count_line(rec: dict) -> str:
    if "top5" in rec:
        return f"top1 {rec['top5'][0]} ({rec['top5conf'][0]:.3f})"
    n = len(rec.get("cls", []))
    return str(n)


_TORCHVISION_LIB = None


def torchvision_cpu_shim() -> None:
    """Let PyPI's torchvision run on the CPU-only torch wheel.

    PyPI's torchvision 0.28.0 is a CUDA build: its ``_C.so`` needs ``libc10_cuda.so``, which the CPU torch lacks,
    so it fails to load and ``import torchvision`` then dies registering fake kernels for the missing
    ``torchvision::nms``/``qnms`` ops. Ultralytics needs torchvision for classification transforms and for
    ``nms=True`` exports (``torchvision.ops.nms``, traced to ONNX ``NonMaxSuppression``). Define those two ops here,
    with a plain-torch greedy NMS as their CPU kernel (used by the exporter's dry run and tracing only), and
    declare the ops present. The ONNX graphs get the standard ``NonMaxSuppression`` operator either way.
    """
    global _TORCHVISION_LIB
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

    def nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        order = scores.argsort(descending=True)
        x1, y1, x2, y2 = dets.unbind(1)
        area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
        keep = []
        while order.numel():
            i = order[0]
            keep.append(i)
            rest = order[1:]
            w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
            h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
            inter = w * h
            iou = inter / (area[i] + area[rest] - inter).clamp(min=1e-9)
            order = rest[iou <= iou_threshold]
        return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long)

    lib.impl("nms", nms, "CPU")
    _TORCHVISION_LIB = lib  # the registration lives as long as this object
    import torchvision.extension

    if not torchvision.extension._has_ops():
        torchvision.extension._has_ops = lambda: True


def inner(args: argparse.Namespace) -> None:
    torchvision_cpu_shim()
    import numpy as np
    import torch
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False})
    torch.set_num_threads(2)
    calib = np.load(WORK / "calibration_frames.npy")
    versions = {
        "python": sys.version.split()[0],
        **{k: __import__(k).__version__ for k in ("ultralytics", "torch", "torchvision", "onnx", "onnxruntime")},
    }
    import onnxslim

    versions["onnxslim"] = onnxslim.__version__
    assert versions["ultralytics"] == PINS["ultralytics"], versions
    (DEST / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
    summary = {}
    sp = DEST / "summary.json"
    if sp.exists():
        summary = json.loads(sp.read_text())
    for spec in MODELS:
        if args.only and spec["family"] not in args.only and spec["name"] not in args.only:
            continue
        t0 = time.time()
        model, ypath, shifts = build(spec, calib)
        entry = {
            "family": spec["family"],
            "task": spec["task"],
            "yaml": ypath.relative_to(DEST).as_posix(),
            "imgsz": spec["imgsz"],
            "names": spec["names"],
            "bias_shift": shifts,
            "variants": {},
        }
        if "kpt_shape" in spec:
            entry["kpt_shape"] = spec["kpt_shape"]
        for variant, kwargs in spec["variants"].items():
            try:
                path, eargs = export_variant(model, spec, variant, kwargs)
            except Exception as e:  # a variant this Ultralytics cannot export: recorded, not fatal
                entry["variants"][variant or "static"] = {"skipped": f"{type(e).__name__}: {e}"}
                print(f"SKIP {spec['name']} {variant}: {e}", flush=True)
                continue
            ref, masks = predict(spec, path)
            ref = {
                "model": path.name,
                "task": spec["task"],
                "ultralytics": versions["ultralytics"],
                "export_args": eargs,
                **ref,
            }
            (path.with_suffix(".json")).write_text(json.dumps(ref, separators=(",", ":")) + "\n")
            if masks:
                np.savez_compressed(path.with_suffix(".masks.npz"), **masks)
            counts = [count_line(r) for r in ref["frames"]]
            entry["variants"][variant or "static"] = {
                "onnx": path.name,
                "export_args": eargs,
                "facts": onnx_facts(path),
                "per_frame": counts,
            }
            if spec["task"] == "segment":
                entry["variants"][variant or "static"]["mask_pixels"] = [r["mask_pixels"] for r in ref["frames"]]
            if spec["task"] == "pose":
                entry["variants"][variant or "static"]["visible_kpts"] = [
                    [int((np.asarray(k)[:, 2] > 0.5).sum()) for k in r["keypoints"]] if r["keypoints"] else []
                    for r in ref["frames"]
                ]
            print(f"{path.name}: {path.stat().st_size} bytes, per frame {counts}", flush=True)
        entry["seconds"] = round(time.time() - t0, 1)
        summary[spec["name"]] = entry
        sp.write_text(json.dumps(summary, indent=1) + "\n")
    write_cards(summary, versions)


def write_cards(summary: dict, versions: dict) -> None:
    fams: dict[str, list] = {}
    for name, e in summary.items():
        fams.setdefault(e["family"], []).append((name, e))
    for fam, entries in fams.items():
        lines = [
            f"# Ultralytics reference models: {fam}",
            "",
            CARD_INTRO.format(**versions, family=fam),
            "",
            FAMILY_NOTES[fam],
            "",
        ]
        for name, e in entries:
            lines += [
                f"## {name}",
                "",
                f"Task `{e['task']}`, imgsz {e['imgsz']}, classes {e['names']}"
                + (f", kpt_shape {e['kpt_shape']}" if "kpt_shape" in e else "")
                + f". Model definition: `{Path(e['yaml']).name}`. Class-bias shift after batch-norm "
                f"recalibration: {e['bias_shift'] or 'none (classifier: logits scaled instead)'}.",
                "",
                "| file | bytes | opset | export args | inputs | outputs | results per frame |",
                "|---|---|---|---|---|---|---|",
            ]
            for v, d in e["variants"].items():
                if "skipped" in d:
                    lines.append(f"| ({v}) | | | | | | skipped: {d['skipped']} |")
                    continue
                f = d["facts"]
                ea = {k: v2 for k, v2 in d["export_args"].items() if k not in ("format", "device")}
                ins = "; ".join(f"`{k}` {t} {s}" for k, (t, s) in f["inputs"].items())
                outs = "; ".join(f"`{k}` {t} {s}" for k, (t, s) in f["outputs"].items())
                lines.append(
                    f"| `{d['onnx']}` | {f['bytes']:,} | {f['opset']} | `{ea}` | {ins} | {outs} | "
                    f"{', '.join(d['per_frame'])} |"
                )
            first = next((d for d in e["variants"].values() if "facts" in d), None)
            if first:
                lines += ["", "ONNX metadata (as Ultralytics writes it, static export):", "", "```"]
                lines += [f"{k}: {v}" for k, v in first["facts"]["metadata"].items()]
                lines += ["```", ""]
            for d in e["variants"].values():
                if "mask_pixels" in d:
                    lines.append(f"- `{d['onnx']}` mask pixels per frame: {d['mask_pixels']}")
                if "visible_kpts" in d:
                    lines.append(f"- `{d['onnx']}` keypoints with visibility > 0.5 per person: {d['visible_kpts']}")
            lines.append("")
        (DEST / fam / "README.md").write_text("\n".join(lines).rstrip() + "\n")
    rows = ["| family | model | file | bytes | output(s) | results per frame (6 frames) |", "|---|---|---|---|---|---|"]
    total = 0
    for name, e in summary.items():
        for d in e["variants"].values():
            if "facts" in d:
                total += d["facts"]["bytes"]
                outs = "; ".join(f"{s}" for _, s in d["facts"]["outputs"].values())
                rows.append(
                    f"| {e['family']} | {name} | `{e['family']}/{d['onnx']}` | {d['facts']['bytes']:,} | "
                    f"{outs} | {', '.join(d['per_frame'])} |"
                )
    (DEST / "README.md").write_text(TOP_README.format(**versions, table="\n".join(rows), total=total))


CARD_INTRO = """\
Made by `models/export_ultralytics.py` (see its docstring; run `.venv/bin/python models/export_ultralytics.py \
--only {family}` to remake this folder) with ultralytics {ultralytics}, torch {torch}, onnx {onnx}, onnxruntime \
{onnxruntime}, onnxslim {onnxslim}. The networks have **random weights**: batch-norm statistics re-estimated on 48 \
shapes scenes and class biases shifted so a few results per frame pass conf 0.25. They detect nothing meaningful; \
they exist so the runtime's decoders can be compared with Ultralytics' own `predict` on the same ONNX files.

Each `X.onnx` has `X.json`: Ultralytics' `predict` on the six frames in `../frames/` (arguments in \
`predict_args`: imgsz, conf 0.25, iou 0.7, CPU, onnxruntime), per frame `orig_shape` [h, w] and, by task, \
`xyxy`/`conf`/`cls` (pixels of the original frame), `keypoints` [N, K, 3] (x, y, visibility), `xywhr` and \
`xyxyxyxy` (obb, radians), `top5`/`top5conf`/`probs` (classify), and `input_shape`, the tensor Ultralytics \
fed the model (a dynamic export is letterboxed to a stride-multiple rectangle, not the square imgsz, so its \
results differ from the static export's); segmentation adds `X.masks.npz` (per frame key `frame_0N`, a bool \
array `[N, H, W]` = `Results.masks.data > 0.5`, shape in the JSON's `masks_shape`). Values rounded to 4 decimals."""


FAMILY_NOTES = {
    "detect": """\
Layouts: `output0 [1, 4 + nc, anchors]` (boxes cx, cy, w, h in input pixels, then class scores; NMS is the
caller's) for the default, dynamic and fp16 exports and for YOLO26's default export (its one-to-many branch);
`output0 [1, 300, 6]` (x1, y1, x2, y2 in input pixels, score, class) for `nms=True` (an ONNX `NonMaxSuppression`
in the graph, rows past the kept ones are zero) and for YOLO26 `nms=False` (= `end2end=True`: the one-to-one branch
and a top-k, no NMS at all; all 300 rows are filled, so rows under conf must be dropped). The fp16 export
(`quantize=16`, the new name of `half=True`) works on the CPU in this Ultralytics: the fp32 graph is converted
by onnxruntime's float16 tool with float32 inputs and outputs.""",
    "segment": """\
Layouts: `output0 [1, 4 + nc + 32, anchors]` (box, class scores, 32 mask coefficients) and `output1 [1, 32, 40, 40]`
(prototypes at 1/4 of the input) for YOLO11; YOLO26 `nms=False`: `output0 [1, 300, 6 + 32]` (x1, y1, x2, y2,
score, class, coefficients), same prototypes. A mask is sigmoid(coefficients @ prototypes), upsampled to the input,
cropped to the box, > 0.5; `Results.masks.data` is in the letterboxed input's pixels (see `input_shape`).
`nms=True` is not exported here: its `output0` has the YOLO26 end-to-end layout.""",
    "pose": """\
kpt_shape [5, 3] (not COCO's 17, to keep the files small and decoders honest about K). Layouts:
`output0 [1, 4 + nc + K*3, anchors]` (box, class score, then x, y, visibility per keypoint, in input pixels,
visibility a sigmoid) for YOLO11; YOLO26 `nms=False`: `output0 [1, 300, 6 + K*3]`. The random network's
visibilities sit near 0.5. `nms=True` is not exported here: its layout is the YOLO26 end-to-end one.""",
    "obb": """\
Layouts: `output0 [1, 4 + nc + 1, anchors]` (cx, cy, w, h, class scores, angle in radians) for YOLO11, NMS
(rotated IoU) is the caller's; YOLO26 `nms=False`: `output0 [1, 300, 7]` (cx, cy, w, h, score, class, angle).
Ultralytics' results normalise the angle (`xywhr`, w/h swapped where needed) and give the corners (`xyxyxyxy`).
`nms=True` is not exported here: its layout is the YOLO26 end-to-end one.""",
    "classify": """\
`output0 [1, nc]`: softmax probabilities (the softmax is in the graph). Ultralytics' classification preprocessing
is not a letterbox: resize the short side to imgsz, centre-crop imgsz x imgsz, RGB / 255, no mean/std.
The random network's logits are scaled so the top-5 differ between frames.""",
    "rtdetr": """\
`output0 [1, 50, 6]`: the decoder's 50 queries after an in-graph top-k over (query, class) scores: cx, cy, w, h
**normalised to 0..1**, score (sigmoid), class. No NMS. Ultralytics' RT-DETR predictor does not letterbox: it
stretches the frame to imgsz x imgsz (`scale_fill`), and scales boxes back by the frame's width and height.
A tiny hand-written yaml in the rtdetr-l layout (plain convs, AIFI, RepC3 neck, 2 decoder layers, hidden dim 32).""",
}

TOP_README = """\
# Ultralytics reference models (issue #10)

Tiny Ultralytics models of every task family, exported to ONNX by Ultralytics itself, with Ultralytics' own
`predict` results on six fixed frames: the references the runtime's decoders are checked against. Random weights
(batch-norm statistics re-estimated on shapes scenes, class biases shifted so a few results per frame pass conf
0.25): they find nothing real, but their outputs depend on the frame.

Made by `models/export_ultralytics.py` (run by hand: ~1.5 min on 2 cores, ~3 min with the first pip install;
its docstring says what it does) with ultralytics {ultralytics}, torch {torch}, torchvision {torchvision},
onnx {onnx}, onnxruntime {onnxruntime}, onnxslim {onnxslim}, Python {python} (`versions.json`).
`summary.json` has everything the cards show.

- `frames/frame_0N.png`: BGR scenes from `lepton_edge.runtime.sources.shapes.random_sample` (seeds 2000-2005;
  four 320x240, one 240x320, one 256x256).
- `<family>/`: the model yamls, the ONNX files, `<model>.json` (and `.masks.npz` for segmentation) with the
  references, and a `README.md` card with the layouts, metadata and per-frame counts.

{table}

ONNX total: {total:,} bytes.

## What this Ultralytics does differently from older ones
- A YOLO26 export with default arguments is **not** end-to-end: `nms=None` exports the one-to-many branch
  (`[1, 4 + nc, anchors]`, NMS needed). End-to-end needs `nms=False` (`end2end=True` is mapped onto it).
  `nms=True` is refused for end-to-end heads.
- `half`/`int8` are deprecated names of `quantize=16`/`quantize=8`. FP16 ONNX export works on the CPU.
- `dynamic=True` with the default onnxslim pass adds ~0.9 MB of symbolic shape annotations (`value_info`), so the
  dynamic detector here is exported with `simplify=False` (0.26 MB instead of 1.25 MB); the classifier's is not.
  Ultralytics' predictor letterboxes dynamic models to a stride-multiple rectangle, not the square imgsz.

## Skipped
- `nms=True` for segment, pose and obb (same output layout as the YOLO26 end-to-end exports; ~0.5 MB each).
- `int8` ONNX (needs a calibration data set through Ultralytics' dataloader, i.e. a dataset yaml; not asked for).
- YOLOv8-style heads: same ONNX layouts as YOLO11's (only the class branch's convs differ).
- Pose keypoints without visibility (`kpt_shape [K, 2]`).

Counts per frame spread (random features shift whole frames); RT-DETR finds nothing on `frame_02`, which
leaves one empty-result case in the references.

## How it stays offline
The models are built from yaml (no `*.pt`), Ultralytics runs with `YOLO_OFFLINE=1`, `YOLO_AUTOINSTALL=False`,
its settings in `out/ultralytics-work/config`, and nothing is plotted (no font). PyPI's torchvision wheel is a CUDA
build whose `_C.so` cannot load next to the CPU torch; the script defines `torchvision::nms` itself (a plain-torch
greedy NMS, used only while exporting `nms=True`, which becomes ONNX `NonMaxSuppression`).
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="families or model names to (re)make, e.g. detect yolo26t-seg")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    main()
