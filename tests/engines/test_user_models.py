"""Users' own models: fp16 exports, Git LFS pointers, custom operators and what the runtime cannot decode."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx import TensorProto, helper

from lepton_edge.core.errors import ModelError
from lepton_edge.engines.builder import build_artifact
from lepton_edge.engines.calibration import calibrate
from lepton_edge.engines.evaluation.compare import compare
from lepton_edge.engines.onnx_tools import inspect_onnx, runtime_warnings, unsupported_ops
from lepton_edge.engines.options import BuildOptions
from tests.support.fake_cuda import FakeGpu, block_pycuda, install_cuda_python
from tests.support.fake_tensorrt import install_tensorrt
from tests.support.user_models import custom_op_model, fp16_cast_model, fp16_io_model, lfs_pointer, save

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits_classifier.onnx"
DIGITS_HELDOUT = REPO / "models" / "digits_heldout.npz"


# -- fp16 ------------------------------------------------------------------------------------------------

def test_an_fp16_export_with_its_casts_last_is_inspected_not_called_truncated(tmp_path):
    info = inspect_onnx(fp16_cast_model(tmp_path / "half.onnx"))
    assert [(s.name, str(s.dtype)) for s in info.inputs] == [("images", "float32")]
    assert info.ops == {"Conv": 1, "Sigmoid": 1, "Cast": 2}
    assert unsupported_ops(info, "onnxruntime-cpu") == []


def test_an_fp16_io_export_is_inspected_with_fp16_tensors(tmp_path):
    info = inspect_onnx(fp16_io_model(tmp_path / "half.onnx"))
    assert [(s.name, str(s.dtype)) for s in info.inputs] == [("images", "float16")]
    assert [(s.name, str(s.dtype)) for s in info.outputs] == [("output", "float16")]


def test_a_graph_out_of_order_that_is_invalid_anyway_is_still_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["t"], ["y"]), helper.make_node("Relu", ["nowhere"], ["t"])], "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(ModelError, match="checker rejects"):
        inspect_onnx(save(graph, tmp_path / "bad.onnx"))


@pytest.mark.parametrize("make", [fp16_cast_model, fp16_io_model])
def test_fp16_exports_build_fp32_for_onnxruntime(tmp_path, make):
    model = make(tmp_path / "half.onnx")
    manifest = build_artifact(model, tmp_path / "fp32", BuildOptions(precision="fp32"), progress=False)
    assert manifest.precision == "fp32"
    assert (tmp_path / "fp32" / manifest.engine.file).read_bytes() == model.read_bytes()


@pytest.fixture
def fake_trt(monkeypatch):
    gpu = FakeGpu()
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    return install_tensorrt(monkeypatch, "10.3.0", gpu)


@pytest.mark.parametrize("make", [fp16_cast_model, fp16_io_model])
def test_fp16_exports_build_fp16_for_tensorrt(tmp_path, fake_trt, make):
    manifest = build_artifact(make(tmp_path / "half.onnx"), tmp_path / "fp16",
                              BuildOptions(target="tensorrt", precision="fp16"), progress=False)
    assert manifest.precision == "fp16" and "FP16" in manifest.builder.builder_flags


def test_int8_from_an_fp16_model_is_calibrated_and_quantized_from_its_fp32_copy(tmp_path):
    half = REPO / "models" / "ultralytics" / "detect" / "yolo11t-detect_fp16.onnx"
    options = BuildOptions(precision="int8", calibration_data=str(REPO / "calibration" / "shapes"),
                           calibration_options={"samples": 16}, fidelity=False)
    manifest = build_artifact(half, tmp_path / "int8", options, progress=False)
    source = inspect_onnx(half)
    assert (manifest.source_model.name, manifest.source_model.sha256) == (half.name, source.sha256)
    engine = inspect_onnx(tmp_path / "int8" / manifest.engine.file)
    assert engine.has_qdq and [str(s.dtype) for s in engine.inputs] == ["float32"]
    assert manifest.calibration is not None and manifest.calibration.samples == 16


# -- Git LFS pointers ------------------------------------------------------------------------------------

LFS_MESSAGE = "this is a Git LFS pointer, not the model: run `git lfs pull`"


def test_inspect_recognises_a_git_lfs_pointer(tmp_path):
    path = lfs_pointer(tmp_path / "model.onnx")
    with pytest.raises(ModelError, match=LFS_MESSAGE.replace("(", r"\(")) as err:
        inspect_onnx(path)
    assert str(err.value).startswith(f"{path}: ")


def test_build_and_calibrate_recognise_a_git_lfs_pointer(tmp_path):
    path = lfs_pointer(tmp_path / "model.onnx")
    with pytest.raises(ModelError, match="Git LFS pointer"):
        build_artifact(path, tmp_path / "out", progress=False)
    with pytest.raises(ModelError, match="Git LFS pointer"):
        calibrate(path, DIGITS_HELDOUT, progress=False)


def test_compare_recognises_a_git_lfs_pointer_on_either_side(tmp_path):
    path = lfs_pointer(tmp_path / "model.onnx")
    with pytest.raises(ModelError, match="Git LFS pointer"):
        compare(path, DIGITS, DIGITS_HELDOUT, samples=4)
    with pytest.raises(ModelError, match="Git LFS pointer"):
        compare(DIGITS, path, DIGITS_HELDOUT, samples=4)


# -- custom-domain operators -----------------------------------------------------------------------------

@pytest.mark.parametrize("op, domain", [("MyOp", "com.example"), ("EfficientNMS_TRT", "TRT")])
def test_a_build_names_a_custom_domain_operator(tmp_path, op, domain):
    model = custom_op_model(tmp_path / "custom.onnx", op, domain)
    with pytest.raises(ModelError, match=f"custom operator {domain}::{op} \\(domain {domain}\\): onnxruntime has "
                                         "no kernel for it"):
        build_artifact(model, tmp_path / "out", progress=False)


# -- what the runtime does not decode ----------------------------------------------------------------------

def test_runtime_warnings_name_several_inputs_and_undecodable_outputs(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])], "two_inputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 5, 7]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 5, 7])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [1, 3, 5, 7])],
    )
    warnings = runtime_warnings(inspect_onnx(save(graph, tmp_path / "two.onnx")))
    assert len(warnings) == 2
    assert "2 inputs (a, b)" in warnings[0]
    assert "cannot decode these outputs (sum [1, 3, 5, 7])" in warnings[1]


def test_a_classifier_has_no_runtime_warnings():
    assert runtime_warnings(inspect_onnx(DIGITS)) == []
