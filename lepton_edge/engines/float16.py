"""fp16 ONNX models (Ultralytics ``half=True``, onnxconverter's float16 pass) as fp32, for int8 builds.

Calibration measures fp32 activations and onnxruntime's quantizer writes fp32 scales: on an fp16 graph it makes
Q/DQ nodes that mix fp16 and fp32 and a model onnxruntime refuses to load. Every fp16 tensor becomes fp32
(weights, constants, casts, inputs, outputs, declared types), which computes what the fp16 model computes with
more precision, so the int8 engine is calibrated and judged against the same weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lepton_edge.core.errors import ModelError

_DTYPE_ATTRIBUTES = ("to", "dtype")
"""Integer attributes that name an element type (Cast, RandomNormal, EyeLike, ...)."""


def _graphs(graph) -> Iterator:  # graph: onnx.GraphProto
    """``graph`` and every subgraph (If, Loop, Scan bodies), depth first."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _upcast_tensor(tensor) -> bool:  # tensor: onnx.TensorProto
    import onnx
    from onnx import numpy_helper

    if tensor.data_type != onnx.TensorProto.FLOAT16:
        return False
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
    return True


def upcast_float16(model):  # model: onnx.ModelProto -> int
    """Rewrite ``model`` in place with every fp16 tensor and type as fp32; returns how many things changed."""
    import onnx

    float16, float32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    changed = 0
    for graph in _graphs(model.graph):
        changed += sum(_upcast_tensor(t) for t in graph.initializer)
        for value in (*graph.input, *graph.output, *graph.value_info):
            tensor_type = value.type.tensor_type
            if tensor_type.elem_type == float16:
                tensor_type.elem_type = float32
                changed += 1
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    changed += _upcast_tensor(attr.t)
                elif attr.type == onnx.AttributeProto.INT and attr.name in _DTYPE_ATTRIBUTES and attr.i == float16:
                    attr.i = float32
                    changed += 1
    return changed


def write_float32_copy(source: Path, dest: Path) -> bool:
    """Write ``source`` with its fp16 parts as fp32 to ``dest``; False (nothing written) when it has none."""
    import onnx

    model = onnx.load(str(source), load_external_data=True)
    if not upcast_float16(model):
        return False
    try:
        onnx.save(model, str(dest))
    except ValueError as e:  # protobuf's 2 GiB limit
        raise ModelError(f"{source}: its fp32 copy for int8 calibration is over 2 GiB ({e}); export the model "
                         "in fp32 and build int8 from that") from None
    return True
