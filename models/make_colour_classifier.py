"""Writes models/colour_classifier.onnx: a hand-made (not trained) classifier of a crop's dominant colour, the
secondary model of the demo's cascade (shapes detector -> colour), and measures it on synthetic scenes.

No torch and no weights to learn: the graph is a fixed formula written with onnx.helper.

1. Each pixel is weighted by its saturation (max - min of its R, G, B): the saturated shape counts, the muted
   background of the synthetic scene and grey pixels hardly at all.
2. The weighted mean colour of the crop, minus its smallest channel, is its chroma: a direction in RGB.
3. The cosine of that direction with six hue prototypes (red, yellow, green, cyan, blue, magenta: the primaries and
   their pairwise mixes) times 20, through a softmax, gives the scores; the top one is the nearest hue.

Input ``images`` float32 [batch, 3, 32, 32] RGB in 0..1 (pixel / 255, stretched to 32x32), output ``output0``
[batch, 6]. Metadata: ``lepton.task`` classify, ``lepton.labels``, ``lepton.preprocess``.

    .venv/bin/python models/make_colour_classifier.py            # writes the model and prints its accuracy
    .venv/bin/python models/make_colour_classifier.py --eval-only models/colour_classifier.onnx

The accuracy is measured through the runtime's own path (Preprocessor from the model's metadata, the classify
postprocessor) on ground-truth crops of ``random_sample`` scenes, against the nearest hue of the colour the scene
drew each shape in. The file is deterministic: a rerun writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OUT = HERE / "colour_classifier.onnx"
LABELS = ("red", "yellow", "green", "cyan", "blue", "magenta")
PROTOTYPES = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]], np.float32)
"""One RGB direction per label, in the order of LABELS."""
SIZE = 32
SHARPNESS = 20.0
"""Cosines times this before the softmax: a crop halfway between two hues scores about 0.5 / 0.5."""
EVAL_SEEDS = range(2_000_000, 2_000_200)


def build() -> onnx.ModelProto:
    prototypes = PROTOTYPES / np.linalg.norm(PROTOTYPES, axis=1, keepdims=True)
    initializers = [
        numpy_helper.from_array((prototypes.T * SHARPNESS).astype(np.float32), "prototypes"),  # [3, 6]
        numpy_helper.from_array(np.array([1], np.int64), "channel_axis"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "pixel_axes"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
    ]
    node = helper.make_node
    nodes = [
        node("ReduceMax", ["images", "channel_axis"], ["brightest"], keepdims=1),  # [N, 1, H, W]
        node("ReduceMin", ["images", "channel_axis"], ["darkest"], keepdims=1),
        node("Sub", ["brightest", "darkest"], ["saturation"]),
        node("Mul", ["images", "saturation"], ["weighted"]),  # [N, 3, H, W]
        node("ReduceSum", ["weighted", "pixel_axes"], ["colour_sum"], keepdims=0),  # [N, 3]
        node("ReduceSum", ["saturation", "pixel_axes"], ["weight_sum"], keepdims=0),  # [N, 1]
        node("Add", ["weight_sum", "eps"], ["weight"]),
        node("Div", ["colour_sum", "weight"], ["colour"]),  # saturation-weighted mean colour
        node("ReduceMin", ["colour", "channel_axis"], ["floor"], keepdims=1),
        node("Sub", ["colour", "floor"], ["chroma"]),
        node("ReduceL2", ["chroma", "channel_axis"], ["length"], keepdims=1),
        node("Add", ["length", "eps"], ["norm"]),
        node("Div", ["chroma", "norm"], ["direction"]),
        node("MatMul", ["direction", "prototypes"], ["logits"]),  # [N, 6]
        node("Softmax", ["logits"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "colour_classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="lepton-edge models/make_colour_classifier.py")
    model.ir_version = 8
    model.doc_string = ("Hand-made classifier of a crop's dominant colour (saturation-weighted mean colour, nearest "
                        "of six hues); not trained. For the demo cascade.")
    helper.set_model_props(model, {
        "lepton.task": "classify",
        "lepton.labels": json.dumps(list(LABELS)),
        "lepton.preprocess": json.dumps({"size": [SIZE, SIZE], "resize": "stretch", "color": "rgb",
                                         "scale": 1 / 255}),
        "lepton.dataset": "synthetic://shapes (crops; hand-made, not trained)",
    })
    onnx.checker.check_model(model, full_check=True)
    return model


def nearest_hue(bgr: tuple[int, int, int]) -> int:
    """The label index of the colour a scene drew (BGR, as OpenCV draws it)."""
    rgb = np.array(bgr[::-1], np.float64)
    chroma = rgb - rgb.min()
    if not chroma.any():
        return -1
    cosines = (PROTOTYPES / np.linalg.norm(PROTOTYPES, axis=1, keepdims=True)) @ (chroma / np.linalg.norm(chroma))
    return int(np.argmax(cosines))


def evaluate(path: Path) -> dict[str, float]:
    """Top-1 accuracy on ground-truth crops of held-out scenes, through the runtime's own cascade path
    (``make_cascade_classifier``: preprocessing from the model's metadata, the classify postprocessor)."""
    from lepton_edge.config.workloads import InlineCascadeConfig
    from lepton_edge.runtime.assembly import make_cascade_classifier
    from lepton_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from lepton_edge.runtime.sources.shapes import ShapesScene

    backend = OnnxRuntimeBackend(path).load()
    classifier = make_cascade_classifier(
        InlineCascadeConfig(name="colour", model={"path": path, "task": "classify"}), backend)  # type: ignore[arg-type]
    confusion = np.zeros((len(LABELS), len(LABELS)), np.int64)
    for seed in EVAL_SEEDS:
        scene = ShapesScene(640, 480, count=(1, 8), seed=seed)
        image = scene.render()
        boxes, _ = scene.boxes()
        crops, wanted = [], []
        for shape, box in zip(scene.shapes, boxes, strict=True):
            x0, y0, x1, y1 = (round(float(v)) for v in box)
            if nearest_hue(shape.color) >= 0 and x1 > x0 and y1 > y0:
                crops.append(image[y0:y1, x0:x1])
                wanted.append(nearest_hue(shape.color))
        for want, answer in zip(wanted, classifier.classify(crops), strict=True):
            confusion[want, int(answer.class_ids[0])] += 1
    total = int(confusion.sum())
    print("confusion (rows: nearest hue of the drawn colour; columns: the answer):", ", ".join(LABELS))
    print(confusion)
    return {"crops": total, "top1": round(float(np.trace(confusion)) / max(total, 1), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-only", type=Path, help="measure this model instead of writing one")
    args = parser.parse_args(argv)
    path = args.eval_only
    if path is None:
        onnx.save(build(), str(OUT))
        path = OUT
        print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    print(json.dumps(evaluate(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
