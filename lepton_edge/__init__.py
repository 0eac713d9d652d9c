"""lepton-edge: a low-latency edge inference runtime.

The pipeline runs ``source -> preprocess -> backend -> postprocess -> sinks``. Heavy or optional
dependencies (numpy, OpenCV, TensorRT, CUDA bindings, torch) are imported only where they are used, so
``import lepton_edge`` works on any machine with the core dependencies and costs nothing.
The layers are sub-packages: ``core``, ``config``, ``runtime``, ``fleet``, ``engines``, ``device``,
``scheduler``, ``tools`` and ``cli`` (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "lepton_edge.core.errors",
    "LeptonError": "lepton_edge.core.errors",
    "ModelError": "lepton_edge.core.errors",
    "SourceError": "lepton_edge.core.errors",
    "Classification": "lepton_edge.core.results",
    "Detections": "lepton_edge.core.results",
    "Frame": "lepton_edge.core.results",
    "Result": "lepton_edge.core.results",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lepton_edge' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
