"""Train and export the bundled digits classifier (scikit-learn's 8x8 digits) as ONNX.

    .venv/bin/python models/train_digits_classifier.py                 # train, export, evaluate
    .venv/bin/python models/train_digits_classifier.py --eval-only models/digits_classifier.onnx

Needs torch and scikit-learn (the data set ships inside scikit-learn; nothing is downloaded).
The held-out quarter is written to ``digits_heldout.npz``; the training split is regenerated
here from the same deterministic split and never stored.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LABELS = [str(d) for d in range(10)]
SEED = 0
PREPROCESS = {"size": [8, 8], "resize": "stretch", "color": "gray", "scale": 1 / 255.0}


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as uint8 0..255 ``(N, 8, 8)``, split stratified 75/25 with seed 0: train x, y, held-out x, y."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, stratify=labels, random_state=SEED
    )
    return x_train, y_train, x_test, y_test


def build_model():
    from torch import nn

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU()]

    return nn.Sequential(
        *block(1, 16), *block(16, 32), nn.MaxPool2d(2),  # 4x4
        *block(32, 64), nn.MaxPool2d(2),  # 2x2
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(64 * 4, 10),
    )


def shift(batch, rng: np.random.Generator):
    """Move each image by up to one pixel (zero fill), a cheap augmentation."""
    import torch

    out = torch.zeros_like(batch)
    for i, (dy, dx) in enumerate(rng.integers(-1, 2, (len(batch), 2))):
        src = batch[i, :, max(0, -dy) : 8 - max(0, dy), max(0, -dx) : 8 - max(0, dx)]
        out[i, :, max(0, dy) : max(0, dy) + src.shape[1], max(0, dx) : max(0, dx) + src.shape[2]] = src
    return out


def train(x_train: np.ndarray, y_train: np.ndarray, epochs: int = 60):
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    rng = np.random.default_rng(SEED)
    model = build_model()
    x = torch.from_numpy(x_train.astype(np.float32) / 255.0)[:, None]
    y = torch.from_numpy(y_train)
    batch_size = 64
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(len(x)))
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = loss_fn(model(shift(x[idx], rng)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}/{epochs} loss {total / len(x):.4f}")
    return model.eval()


def export(model, path: Path) -> None:
    """Export to ONNX opset 17, fold what is constant (the legacy exporter leaves Shape/Reshape chains
    behind), then add the metadata the runtime reads."""
    import warnings

    import onnx
    import onnxscript.optimizer
    import torch

    dummy = torch.zeros(1, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter: deprecated, works in 2.13
        torch.onnx.export(
            model, (dummy,), str(path), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17, do_constant_folding=True, dynamo=False,
        )
    proto = onnxscript.optimizer.optimize(onnx.load(str(path)))
    meta = {
        "lepton.task": "classify",
        "lepton.labels": json.dumps(LABELS),
        "lepton.preprocess": json.dumps(PREPROCESS),
        "lepton.dataset": "sklearn://digits (held-out 25%, stratified, seed 0)",
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "lepton-edge models/train_digits_classifier.py"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def evaluate(model_path: Path, heldout_path: Path) -> dict:
    """Top-1 accuracy on the held-out split, twice: a batched onnxruntime run and the runtime's own
    per-image path (Preprocessor on a BGR frame, then the classification postprocessor when present)."""
    import cv2
    import onnx

    from lepton_edge.config.pipeline import PreprocessConfig
    from lepton_edge.engines.evaluation.accuracy import top1_accuracy
    from lepton_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from lepton_edge.runtime.preprocess import Preprocessor

    onnx.checker.check_model(onnx.load(str(model_path)))
    data = np.load(heldout_path)
    images, labels = data["images"], data["labels"]
    backend = OnnxRuntimeBackend(model_path).load()
    try:
        batch = images.astype(np.float32)[:, None] / np.float32(255.0)
        (logits,) = backend.infer({"input": batch})
        batched = top1_accuracy(logits, labels)

        pre = Preprocessor(backend.inputs[0], PreprocessConfig(**PREPROCESS))
        post = _classify_postprocessor(backend)
        buffer = pre.new_buffer()
        predicted = []
        for image in images:
            transform = pre(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), buffer)
            outputs = backend.infer({"input": buffer})
            if post is None:
                predicted.append(int(np.argmax(outputs[0][0])))
            else:
                predicted.append(int(post(outputs, transform).class_ids[0]))
        runtime = top1_accuracy(np.array(predicted), labels)
    finally:
        backend.close()
    return {
        "samples": len(labels),
        "top1_batched": batched,
        "top1_runtime": runtime,
        "runtime_postprocessor": post is not None,
    }


def _classify_postprocessor(backend):
    """The runtime's classification postprocessor, or None while that module is not available."""
    try:
        from lepton_edge.config.pipeline import ClassifyConfig
        from lepton_edge.runtime.postprocess import create_postprocessor
    except ImportError:
        return None
    config = ClassifyConfig(type="classify", top_k=1)
    return create_postprocessor(config, backend.outputs, backend.metadata, tuple(LABELS))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=HERE / "digits_classifier.onnx")
    parser.add_argument("--heldout", type=Path, default=HERE / "digits_heldout.npz")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--eval-only", type=Path, metavar="MODEL", help="only evaluate this ONNX model")
    args = parser.parse_args()

    if args.eval_only is None:
        x_train, y_train, x_test, y_test = load_split()
        np.savez_compressed(args.heldout, images=x_test, labels=y_test)
        started = time.monotonic()
        model = train(x_train, y_train, args.epochs)
        print(f"trained in {time.monotonic() - started:.1f} s, "
              f"{sum(p.numel() for p in model.parameters())} parameters")
        export(model, args.out)
        (args.out.with_suffix("").with_suffix(".labels.txt")).write_text("\n".join(LABELS) + "\n")
        print(f"wrote {args.out} ({args.out.stat().st_size} bytes) and {args.heldout}")
    model_path = args.eval_only or args.out
    print(json.dumps(evaluate(model_path, args.heldout), indent=2))


if __name__ == "__main__":
    main()
