"""Files the package ships: the bundled demo models and their labels, the demo config, and the generator of the
YOLOv8n-sized benchmark model (the module :mod:`lepton_edge.data.yolov8n_sized`). In a checkout they are links into
``models/`` and ``deploy/`` (one copy in git); wheels and sdists hold copies of the files (pyproject.toml's
package data), so ``lepton-edge demo`` and ``bench`` work without a checkout (tests/test_packaging.py)."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
DEMO_MODEL = DATA_DIR / "shapes_detector.onnx"
DEMO_CLASSIFIER = DATA_DIR / "digits_classifier.onnx"
DEMO_CONFIG = DATA_DIR / "demo.yaml"
