"""Inference backends behind one interface. Optional ones (TensorRT) are imported only when chosen."""

from __future__ import annotations

from pathlib import Path

from lepton_edge.config.pipeline import BackendConfig, OnnxRuntimeBackendConfig
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.backends.base import Backend
from lepton_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from lepton_edge.runtime.backends.tensorrt import TensorRTBackend


def create_backend(model_path: str | Path, config: BackendConfig | None = None, *,
                   in_pipeline: bool = False) -> Backend:
    """A backend for ``model_path`` (not yet loaded: call ``load()``)."""
    config = config or OnnxRuntimeBackendConfig()
    if config.type == "tensorrt":
        return TensorRTBackend(model_path, config)

    return OnnxRuntimeBackend(model_path, config, in_pipeline=in_pipeline)


__all__ = ["Backend", "TensorSpec", "create_backend"]
