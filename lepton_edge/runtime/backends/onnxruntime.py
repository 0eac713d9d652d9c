"""The onnxruntime backend: the default, runs everywhere."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from lepton_edge.config.pipeline import OnnxRuntimeBackendConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.fileio import refuse_lfs_pointer
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime import platform  # the module, not names: platform imports this package
from lepton_edge.runtime.backends.base import Backend

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}

_UNREGISTERED_OP = re.compile(r"([\w.\-]+):(\w+)\(-?\d+\) is not a registered function/op")
"""onnxruntime's load error for a node in a domain it has no kernels for (``com.example:MyOp(-1) is ...``)."""


def custom_op_reason(domain: str, op: str) -> str:
    """Why onnxruntime cannot run the custom operator ``domain::op``, and what to do."""
    return (f"custom operator {domain}::{op} (domain {domain}): onnxruntime has no kernel for it; it needs the "
            "runtime or plugin library it was written for (e.g. a TensorRT plugin: build for tensorrt), or "
            "re-export the model with standard ONNX operators only")


def load_error(model_path: Path, error: Exception) -> ModelError:
    """The ModelError for an onnxruntime session that could not be created from ``model_path``."""
    text = str(error).strip()
    custom = _UNREGISTERED_OP.search(text)
    if custom:
        return ModelError(f"{model_path}: onnxruntime cannot load this model: {custom_op_reason(*custom.groups())}")
    return ModelError(
        f"{model_path}: onnxruntime cannot load this model: {text[:500]}\n"
        "Check that it is a complete ONNX file (re-export it) and that its opset is supported."
    )


def _spec(arg: object) -> TensorSpec:
    dtype = _ORT_TYPES.get(arg.type)  # type: ignore[attr-defined]
    if dtype is None:
        raise ModelError(f"tensor {arg.name!r} has unsupported element type {arg.type}")  # type: ignore[attr-defined]
    shape = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else None)
                  for d in arg.shape)  # type: ignore[attr-defined]
    return TensorSpec(arg.name, shape, np.dtype(dtype))  # type: ignore[attr-defined]


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX model with onnxruntime's ``InferenceSession``."""

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, config: OnnxRuntimeBackendConfig | None = None,
                 *, in_pipeline: bool = False) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        self.config = config or OnnxRuntimeBackendConfig()
        self.in_pipeline = in_pipeline
        self.session = None
        self.providers: list[str] = []

    def session_options(self):  # -> onnxruntime.SessionOptions
        import onnxruntime as ort

        cfg = self.config
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.intra_op_threads or platform.physical_cores()
        opts.inter_op_num_threads = cfg.inter_op_threads
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[cfg.graph_optimization])
        opts.log_severity_level = 3
        spinning = cfg.allow_spinning if cfg.allow_spinning is not None else not self.in_pipeline
        # Spinning threads burn the cores the pipeline's other stages need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
        return opts

    def _load(self) -> None:
        import onnxruntime as ort

        if not self.model_path.is_file():
            raise ModelError(f"{self.model_path}: model file not found")
        refuse_lfs_pointer(self.model_path)
        available = ort.get_available_providers()
        providers = [p for p in self.config.providers if p in available]
        for p in self.config.providers:
            if p not in available:
                log.warning("execution provider %s is not available here (available: %s); skipping",
                            p, ", ".join(available))
        if not providers:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.model_path), self.session_options(), providers=providers)
        except Exception as e:  # onnxruntime raises several unrelated types for bad models
            raise load_error(self.model_path, e) from None
        self.providers = self.session.get_providers()
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._output_names = [s.name for s in self.outputs]
        self.warmup(self.config.warmup_runs)

    def _infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self._output_names, feeds)  # type: ignore[union-attr]

    def describe(self) -> dict:
        info = super().describe()
        info["providers"] = self.providers
        info["model"] = str(self.model_path)
        return info

    def _close(self) -> None:
        self.session = None
