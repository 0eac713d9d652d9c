"""lepton-edge: a low-latency edge inference runtime.

The pipeline runs ``source -> preprocess -> backend -> postprocess -> sinks``. Heavy or optional
dependencies (OpenCV, TensorRT, CUDA bindings, torch) are imported only where they are used, so
``import lepton_edge`` works on any machine with the core dependencies.
"""

__version__ = "0.1.0"

from lepton_edge.errors import ConfigError, LeptonError, ModelError, SourceError
from lepton_edge.results import Classification, Detections, Frame, Result

__all__ = [
    "Classification",
    "ConfigError",
    "Detections",
    "Frame",
    "LeptonError",
    "ModelError",
    "Result",
    "SourceError",
    "__version__",
]
