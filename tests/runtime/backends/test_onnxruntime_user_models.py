"""The onnxruntime backend on users' own models: a Git LFS pointer and a custom-domain operator are named."""

from __future__ import annotations

import pytest

from lepton_edge.core.errors import ModelError
from lepton_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from tests.support.user_models import custom_op_model, lfs_pointer


def test_a_git_lfs_pointer_is_recognised(tmp_path):
    path = lfs_pointer(tmp_path / "model.onnx")
    with pytest.raises(ModelError, match="this is a Git LFS pointer, not the model: run `git lfs pull`") as err:
        OnnxRuntimeBackend(path).load()
    assert str(err.value).startswith(f"{path}: ")


def test_a_custom_domain_operator_is_named(tmp_path):
    path = custom_op_model(tmp_path / "custom.onnx")
    with pytest.raises(ModelError, match=r"custom operator com.example::MyOp \(domain com.example\): onnxruntime "
                                         "has no kernel for it") as err:
        OnnxRuntimeBackend(path).load()
    assert "complete ONNX file" not in str(err.value)
