"""INT8 calibration: activation ranges measured on a data set, kept in a versioned table.

:func:`calibrate` runs the fp32 model over a deterministic sample of a data set (``samples``), records
statistics of every float activation tensor (``statistics``) and turns them into a (min, max) range per
tensor with the chosen method (``methods``: minmax, entropy, percentile), except that bounded activations
(Sigmoid, Softmax, ...) and the graph outputs keep their observed range and far clipping is reported
(``choice``). The table (``table``) is then exported as a TensorRT calibration cache (``tensorrt_cache``) or
baked into a QDQ ONNX model for onnxruntime (``qdq``), both from the same ranges.
"""

from lepton_edge.engines.calibration.measure import activation_tensors, calibrate
from lepton_edge.engines.calibration.qdq import quantize_qdq
from lepton_edge.engines.calibration.samples import dataset_manifest
from lepton_edge.engines.calibration.table import METHODS, CalibrationTable, Method, load_table, write_table
from lepton_edge.engines.calibration.tensorrt_cache import (
    read_tensorrt_cache,
    tensorrt_algorithm,
    trt_version_code,
    write_tensorrt_cache,
)

__all__ = [
    "METHODS",
    "CalibrationTable",
    "Method",
    "activation_tensors",
    "calibrate",
    "dataset_manifest",
    "load_table",
    "quantize_qdq",
    "read_tensorrt_cache",
    "tensorrt_algorithm",
    "trt_version_code",
    "write_table",
    "write_tensorrt_cache",
]
