"""Files the package ships: the bundled demo models and their labels, the demo config, the generator of the
YOLOv8n-sized benchmark model. In a checkout they are links into ``models/`` and ``deploy/``; a wheel holds copies,
so ``lepton-edge demo`` and ``bench`` work without a checkout."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
DEMO_MODEL = DATA_DIR / "shapes_detector.onnx"
DEMO_CLASSIFIER = DATA_DIR / "digits_classifier.onnx"
DEMO_CONFIG = DATA_DIR / "demo.yaml"
YOLOV8N_SIZED_GENERATOR = DATA_DIR / "yolov8n_sized.py"
