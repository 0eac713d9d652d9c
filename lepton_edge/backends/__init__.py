"""Inference backends behind one interface. Optional ones (TensorRT) are imported only when chosen."""

from __future__ import annotations

from pathlib import Path

from lepton_edge.backends.base import Backend, TensorSpec
from lepton_edge.config import BackendConfig, OnnxRuntimeBackendConfig


def create_backend(model_path: str | Path, config: BackendConfig | None = None, *,
                   in_pipeline: bool = False) -> Backend:
    """A backend for ``model_path`` (not yet loaded: call ``load()``)."""
    config = config or OnnxRuntimeBackendConfig()
    if config.type == "tensorrt":
        from lepton_edge.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(model_path, config)
    from lepton_edge.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model_path, config, in_pipeline=in_pipeline)


__all__ = ["Backend", "TensorSpec", "create_backend"]
