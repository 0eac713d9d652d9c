"""Train a real YOLOv8n (Ultralytics, from scratch) on shapes scenes and export it to ONNX, by hand only.

The issue #10 int8 target ("int8 keeps >= 0.97 mAP@0.5 against fp32's own detections on a YOLOv8n-architecture
detector") cannot be measured on ``models/yolov8n_sized.py``: its random weights give chaotic outputs. A trained
YOLOv8n gives stable, confident ones. Run it with the project's interpreter::

    .venv/bin/python models/train_yolov8n_shapes.py                  # ~25 min on 2 cores (--hours)
    .venv/bin/python models/train_yolov8n_shapes.py --export-only    # re-export best.pt

1. Writes a YOLO-format data set under ``out/yolov8n-shapes/data/`` (``data.yaml``, ``images/{train,val}``,
   ``labels/{train,val}``) of ``lepton_edge.runtime.sources.shapes.random_sample`` scenes, 320x320: train seeds
   3_000_000 + i, val seeds 3_100_000 + i, disjoint from the shapes detector's training (0..) and held-out
   (1_000_000..) seeds, the calibration images (2_000_000..) and the Ultralytics reference frames (0..47, 2000..).
2. Re-runs itself in ``out/venv-ultralytics`` (made by ``export_ultralytics.ensure_venv``, pinned ultralytics and
   torch; same offline environment: ``export_ultralytics.offline_env`` and ``torchvision_cpu_shim``) to train
   ``yolov8n.yaml`` from scratch (no ``*.pt``: ``pretrained=False``), 2 torch threads, imgsz 320, batch 16,
   ``plots=False``, ``amp=False``, CPU. Ultralytics' ``time`` argument caps the run: it times the first epoch and
   sets the number of epochs (and the learning-rate schedule) to fit.
3. Validates ``best.pt`` on the val split and exports it (ONNX, default opset, ``simplify=True``, static, imgsz 320)
   to ``out/yolov8n-shapes/yolov8n_shapes.onnx`` (~12 MB, not committed); ``summary.json`` next to it.
Card: ``models/yolov8n_shapes.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import export_ultralytics as xu

HERE = Path(__file__).resolve().parent
OUT = xu.ROOT / "out" / "yolov8n-shapes"
DATA = OUT / "data"
ONNX = OUT / "yolov8n_shapes.onnx"
TRAIN_SEED = 3_000_000
VAL_SEED = 3_100_000
SIZE = 320


def write_dataset(train: int, val: int) -> None:
    import cv2

    from lepton_edge.runtime.sources.shapes import CLASSES, random_sample

    for split, start, n in (("train", TRAIN_SEED, train), ("val", VAL_SEED, val)):
        img_dir, lbl_dir = DATA / "images" / split, DATA / "labels" / split
        for d in (img_dir, lbl_dir):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        for seed in range(start, start + n):
            image, boxes, classes = random_sample(seed, SIZE, SIZE)
            cv2.imwrite(str(img_dir / f"shapes_{seed}.png"), image)
            rows = []
            for (x1, y1, x2, y2), c in zip(boxes, classes, strict=True):
                cx, cy, w, h = (x1 + x2) / 2 / SIZE, (y1 + y2) / 2 / SIZE, (x2 - x1) / SIZE, (y2 - y1) / SIZE
                rows.append(f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            (lbl_dir / f"shapes_{seed}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    (DATA / "data.yaml").write_text(
        f"# shapes scenes {SIZE}x{SIZE}: train seeds [{TRAIN_SEED}, {TRAIN_SEED + train}), "
        f"val seeds [{VAL_SEED}, {VAL_SEED + val}); written by models/train_yolov8n_shapes.py\n"
        f"path: {DATA}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )


def outer(args: argparse.Namespace) -> None:
    t0 = time.time()
    if not args.export_only:
        write_dataset(args.train, args.val)
        print(f"data set written to {DATA} in {time.time() - t0:.0f} s", flush=True)
    python = xu.ensure_venv()
    xu.WORK.mkdir(parents=True, exist_ok=True)
    cmd = ["nice", "-n", "10", str(python), str(Path(__file__).resolve()), "--inner", "--hours", str(args.hours)]
    cmd += ["--epochs", str(args.epochs)] + (["--export-only"] if args.export_only else [])
    subprocess.run(cmd, check=True, env=xu.offline_env(), cwd=str(xu.WORK))
    print(f"done in {time.time() - t0:.0f} s")


def inner(args: argparse.Namespace) -> None:
    xu.torchvision_cpu_shim()
    import torch
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False})
    torch.set_num_threads(2)
    run_dir = OUT / "runs" / "train"
    best = run_dir / "weights" / "best.pt"
    summary = json.loads((OUT / "summary.json").read_text()) if (OUT / "summary.json").exists() else {}
    if not args.export_only:
        t0 = time.time()
        model = YOLO("yolov8n.yaml")  # the stock yaml in the ultralytics package, scale n; nc comes from data.yaml
        model.train(
            data=str(DATA / "data.yaml"),
            epochs=args.epochs,
            time=args.hours,
            imgsz=SIZE,
            batch=16,
            workers=2,
            device="cpu",
            pretrained=False,
            amp=False,
            plots=False,
            cache="ram",
            close_mosaic=3,
            seed=0,
            project=str(OUT / "runs"),
            name="train",
            exist_ok=True,
            verbose=True,
        )
        summary["train_seconds"] = round(time.time() - t0, 1)
        import csv

        with open(run_dir / "results.csv") as f:
            summary["epochs"] = [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f)]
    model = YOLO(str(best))
    m = model.val(data=str(DATA / "data.yaml"), imgsz=SIZE, batch=16, device="cpu", plots=False, workers=0)
    summary["val"] = {"mAP50": round(float(m.box.map50), 4), "mAP50-95": round(float(m.box.map), 4)}
    summary["val_per_class_mAP50-95"] = [round(float(v), 4) for v in m.box.maps]
    f = Path(model.export(format="onnx", imgsz=SIZE, simplify=True, dynamic=False, device="cpu"))
    shutil.move(str(f), ONNX)
    summary["onnx"] = {"path": str(ONNX.relative_to(xu.ROOT)), "bytes": ONNX.stat().st_size}
    summary["versions"] = {k: __import__(k).__version__ for k in ("ultralytics", "torch", "onnx", "onnxruntime")}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "epochs"}, indent=1), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=1000, help="training images (default 1000)")
    p.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    p.add_argument("--epochs", type=int, default=100, help="upper bound; --hours decides (default 100)")
    p.add_argument("--hours", type=float, default=0.4, help="Ultralytics' time cap in hours (default 0.4)")
    p.add_argument("--export-only", action="store_true", help="validate and export the existing best.pt")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    main()
