"""Files the package ships: the bundled demo models (the detector, its batched copy, the classifiers) and labels,
the demo config, and the generator of the YOLOv8n-sized benchmark model (the module
:mod:`lepton_edge.data.yolov8n_sized`). In a checkout they are links into ``models/`` and ``deploy/`` (one copy in
git); wheels and sdists hold copies of the files (pyproject.toml's
package data), so ``lepton-edge demo`` and ``bench`` work without a checkout (tests/test_packaging.py)."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
DEMO_MODEL = DATA_DIR / "shapes_detector.onnx"
DEMO_CLASSIFIER = DATA_DIR / "digits_classifier.onnx"
DEMO_BATCHED_MODEL = DATA_DIR / "shapes_detector_batched.onnx"
"""The demo detector with a dynamic batch axis (models/make_shapes_detector_batched.py): the demo's two streams."""
DEMO_COLOUR_CLASSIFIER = DATA_DIR / "colour_classifier.onnx"
"""The demo cascade's hand-made dominant-colour classifier (models/colour_classifier.md)."""
DEMO_CONFIG = DATA_DIR / "demo.yaml"
