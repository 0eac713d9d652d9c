"""ONNX models as users bring them: fp16 exports, Git LFS pointers, custom-domain operators (built with onnx.helper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n")


def save(graph: onnx.GraphProto, path: Path, domains: tuple[str, ...] = ()) -> Path:
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def _fp16_weights() -> list[onnx.TensorProto]:
    rng = np.random.default_rng(0)
    return [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float16), "w"),
            numpy_helper.from_array(np.zeros(4, np.float16), "b")]


def fp16_io_model(path: Path) -> Path:
    """fp16 weights, input and output (an Ultralytics ``half=True`` export on a GPU)."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["c"], ["output"])], "half",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT16, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT16, [1, 4, 8, 8])], _fp16_weights(),
    )
    return save(graph, path)


def fp16_cast_model(path: Path) -> Path:
    """fp16 weights behind fp32 input/output casts, the input cast last in the node list, as fp16 converters
    (``convert_float_to_float16(keep_io_types=True)``, Ultralytics ``half=True`` on a CPU) write it."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images_fp16", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["c"], ["s"]),
         helper.make_node("Cast", ["s"], ["output"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["images"], ["images_fp16"], to=TensorProto.FLOAT16)], "half_casts",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])], _fp16_weights(),
    )
    return save(graph, path)


def custom_op_model(path: Path, op: str = "MyOp", domain: str = "com.example") -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node(op, ["r"], ["y"], domain=domain)], "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
    )
    return save(graph, path, (domain,))


def lfs_pointer(path: Path) -> Path:
    path.write_bytes(LFS_POINTER)
    return path
