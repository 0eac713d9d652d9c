"""ONNX inspection and the refusal of unusable models, on real model files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.core.fileio import sha256_file
from lepton_edge.engines.onnx_tools import inspect_onnx, unsupported_ops

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits_classifier.onnx"


def save(graph: onnx.GraphProto, path: Path, opsets: tuple[tuple[str, int], ...] = (("", 17),)) -> Path:
    """Write the model's bytes as they are (no checking, no external-data rewriting)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def unary(op: str, dtype: int = TensorProto.FLOAT, domain: str = "") -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], domain=domain)], "unary",
        [helper.make_tensor_value_info("x", dtype, [2, 2])], [helper.make_tensor_value_info("y", dtype, [2, 2])],
    )


def external_model(folder: Path, name: str = "model.onnx") -> Path:
    """A MatMul model whose weight lives in ``weights.bin`` next to it."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / name), save_as_external_data=True, location="weights.bin", size_threshold=0)
    return folder / name


def with_location(model_path: Path, location: str) -> Path:
    """Rewrite the external-data location of every tensor (without touching any data file)."""
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    model_path.write_bytes(model.SerializeToString())
    return model_path


def test_inspect_digits_model():
    info = inspect_onnx(DIGITS)
    assert info.sha256 == sha256_file(DIGITS)
    assert info.opset == 17 and info.opsets == {"": 17}
    assert info.ir_version == 8
    assert info.producer.startswith("lepton-edge models/train_digits_classifier.py")
    assert [(s.name, s.shape, str(s.dtype)) for s in info.inputs] == [("input", ("batch", 1, 8, 8), "float32")]
    assert [(s.name, s.shape) for s in info.outputs] == [("logits", ("batch", 10))]
    assert info.metadata["lepton.task"] == "classify"
    # op counts of the exported graph: three conv blocks (Conv + SiLU as Sigmoid*Mul) and a linear head
    assert {k: info.ops[k] for k in ("Conv", "Sigmoid", "Mul", "MaxPool", "Gemm")} == {
        "Conv": 3, "Sigmoid": 3, "Mul": 3, "MaxPool": 2, "Gemm": 1}
    assert info.has_qdq is False
    assert info.external_data == []
    assert info.size_bytes == DIGITS.stat().st_size
    assert unsupported_ops(info, "onnxruntime-cpu") == []


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        inspect_onnx(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="is a folder"):
        inspect_onnx(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello, this is a text file\n", bytes(range(256)) * 4])
def test_a_file_that_is_not_onnx_is_refused(tmp_path, content):
    path = tmp_path / "notes.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="not an ONNX model") as err:
        inspect_onnx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.9, 0.999])
def test_a_truncated_model_is_refused(tmp_path, keep):
    data = DIGITS.read_bytes()
    path = tmp_path / "partial.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelError, match="truncated") as err:
        inspect_onnx(path)
    assert "again" in str(err.value)  # says what to do


def test_a_parseable_but_incomplete_model_fails_the_checker(tmp_path):
    # Without its last node the graph output is never produced: the file parses but is not a valid model.
    model = onnx.load(str(DIGITS))
    del model.graph.node[-1]
    path = tmp_path / "cut.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="checker rejects"):
        inspect_onnx(path)


@pytest.mark.parametrize("opset", [9, 10, 22])
def test_an_opset_outside_11_to_21_is_refused_by_number(tmp_path, opset):
    path = save(unary("Relu"), tmp_path / "old.onnx", (("", opset),))
    with pytest.raises(ModelError, match=f"opset {opset} is not supported .*11..21"):
        inspect_onnx(path)


@pytest.mark.parametrize("opset", [11, 21])
def test_opsets_at_the_edges_are_accepted(tmp_path, opset):
    assert inspect_onnx(save(unary("Relu"), tmp_path / "m.onnx", (("", opset),))).opset == opset


def test_graphs_without_inputs_or_outputs_are_refused(tmp_path):
    constant = helper.make_node("Constant", [], ["y"], value=helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0]))
    no_inputs = helper.make_graph([constant], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ModelError, match="no inputs"):
        inspect_onnx(save(no_inputs, tmp_path / "a.onnx"))
    no_outputs = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [])
    with pytest.raises(ModelError, match="no outputs"):
        inspect_onnx(save(no_outputs, tmp_path / "b.onnx"))


def test_external_data_inside_the_folder_is_hashed_with_the_model(tmp_path):
    path = external_model(tmp_path / "m")
    info = inspect_onnx(path)
    assert info.external_data == ["weights.bin"]
    assert info.size_bytes == path.stat().st_size + (path.parent / "weights.bin").stat().st_size
    assert info.sha256 != sha256_file(path)
    # Changing only the weights changes the fingerprint.
    data = bytearray((path.parent / "weights.bin").read_bytes())
    data[100] ^= 0xFF
    (path.parent / "weights.bin").write_bytes(bytes(data))
    assert inspect_onnx(path).sha256 != info.sha256


def test_missing_external_data_is_refused(tmp_path):
    path = external_model(tmp_path / "m")
    (path.parent / "weights.bin").unlink()
    with pytest.raises(ModelError, match=r"weights\.bin.*missing"):
        inspect_onnx(path)


def test_truncated_external_data_is_refused(tmp_path):
    path = external_model(tmp_path / "m")
    weights = path.parent / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match="truncated"):
        inspect_onnx(path)


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "ABSOLUTE"])
def test_external_data_outside_the_folder_is_refused_as_path_traversal(tmp_path, location):
    path = external_model(tmp_path / "m")
    secret = tmp_path / "secret.bin"  # exists, so only the location check can refuse it
    secret.write_bytes((path.parent / "weights.bin").read_bytes())
    with_location(path, str(secret) if location == "ABSOLUTE" else location)
    with pytest.raises(ModelError, match="path traversal"):
        inspect_onnx(path)


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path):
    path = external_model(tmp_path / "m")
    outside = tmp_path / "elsewhere.bin"
    os.replace(path.parent / "weights.bin", outside)
    (path.parent / "weights.bin").symlink_to(outside)
    with pytest.raises(ModelError, match=r"symbolic link.*path traversal"):
        inspect_onnx(path)


def test_quantized_models_are_recognised(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z")],
    )
    info = inspect_onnx(save(graph, tmp_path / "q.onnx"))
    assert info.has_qdq is True
    assert info.ops == {"QuantizeLinear": 1, "DequantizeLinear": 1}


def test_unsupported_ops_names_custom_domain_ops(tmp_path):
    path = save(unary("FancyOp", domain="my.ops"), tmp_path / "c.onnx", (("", 17), ("my.ops", 1)))
    info = inspect_onnx(path)
    assert info.ops == {"my.ops:FancyOp": 1}
    assert unsupported_ops(info, "onnxruntime-cpu") == ["my.ops:FancyOp"]


def test_unsupported_ops_finds_a_kernel_missing_for_the_element_type(tmp_path):
    # Det has a CPU kernel, but not for double: only creating a session reveals it.
    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["y"])], "det",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [])],
    )
    info = inspect_onnx(save(graph, tmp_path / "det.onnx"))
    assert unsupported_ops(info, "onnxruntime-cpu") == ["Det"]
    assert unsupported_ops(inspect_onnx(save(unary("Relu"), tmp_path / "r.onnx")), "onnxruntime-cpu") == []


def test_unsupported_ops_refuses_an_unknown_target():
    with pytest.raises(ConfigError, match="unknown target 'tpu'"):
        unsupported_ops(inspect_onnx(DIGITS), "tpu")
