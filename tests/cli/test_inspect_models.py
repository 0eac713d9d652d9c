"""`lepton-edge inspect` on users' own models: fp16 exports, LFS pointers, custom operators, warnings, exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from lepton_edge.cli import main
from tests.support.user_models import custom_op_model, fp16_cast_model, lfs_pointer, save

REPO = Path(__file__).resolve().parents[2]


def test_an_fp16_export_is_inspected(tmp_path, capsys):
    assert main(["inspect", str(fp16_cast_model(tmp_path / "half.onnx"))]) == 0
    out = capsys.readouterr().out
    assert "truncated" not in out
    assert "onnxruntime: all operators supported" in out


def test_a_git_lfs_pointer_exits_nonzero_with_what_to_do(tmp_path, capsys):
    path = lfs_pointer(tmp_path / "model.onnx")
    assert main(["inspect", str(path)]) != 0
    assert f"{path}: this is a Git LFS pointer, not the model: run `git lfs pull`" in capsys.readouterr().err


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_custom_operator_is_named_and_exits_1(tmp_path, capsys, json_flag):
    path = custom_op_model(tmp_path / "custom.onnx")
    assert main(["inspect", str(path), *json_flag]) == 1
    out = capsys.readouterr().out
    if json_flag:
        assert json.loads(out)["unsupported_ops"] == {"onnxruntime-cpu": ["com.example:MyOp"]}
    else:
        assert "custom operator com.example::MyOp (domain com.example): onnxruntime has no kernel for it" in out


def test_a_kernel_missing_for_the_element_type_exits_1(tmp_path, capsys):
    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["y"])], "det",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [])],
    )
    assert main(["inspect", str(save(graph, tmp_path / "det.onnx"))]) == 1
    assert "onnxruntime: cannot run Det" in capsys.readouterr().out


def test_several_inputs_and_undecodable_outputs_are_warned_about(tmp_path, capsys):
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])], "two_inputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 5, 7]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 5, 7])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [1, 3, 5, 7])],
    )
    path = save(graph, tmp_path / "two.onnx")
    assert main(["inspect", str(path)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert "2 inputs (a, b)" in warnings[0] and "cannot decode these outputs" in warnings[1]
    assert main(["inspect", str(path), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["warnings"]) == 2


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_inspect_says_whether_a_model_batches_and_names_the_node_that_stops_it(capsys, json_flag):
    assert main(["inspect", str(REPO / "models" / "shapes_detector.onnx"), *json_flag]) == 0
    out = capsys.readouterr().out
    if json_flag:
        batching = json.loads(out)["batching"]
        assert (batching["kind"], batching["max_batch"], batching["fault"]) == ("single", 1, "/Reshape")
    else:
        assert "batching:    no, 1 frame per call: input 'images' [1, 3, 320, 320] has a fixed batch of 1, and the " \
            "graph hard-codes it: Reshape node '/Reshape'" in out
    dynamic = REPO / "models" / "ultralytics" / "detect" / "yolo11t-detect_dynamic.onnx"
    assert main(["inspect", str(dynamic), *json_flag]) == 0
    out = capsys.readouterr().out
    if json_flag:
        assert json.loads(out)["batching"]["kind"] == "dynamic"
    else:
        assert "batching:    dynamic (input images: any batch size)" in out
