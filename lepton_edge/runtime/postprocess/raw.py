"""Raw outputs: model outputs passed through as :class:`RawOutputs`, written with their values up to a size limit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lepton_edge.config.pipeline import RawConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.results import RawOutputs
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.preprocess import Transform

DEFAULT_MAX_VALUES: int = RawConfig.model_fields["max_values"].default


class RawPostprocessor:
    """Passes outputs through as :class:`RawOutputs`, keyed by output name (``config.outputs``: only those)."""

    def __init__(self, outputs: Sequence[TensorSpec], config: RawConfig | None = None) -> None:
        self.names = [spec.name for spec in outputs]
        self.max_values = config.max_values if config is not None else DEFAULT_MAX_VALUES
        wanted = config.outputs if config is not None and config.outputs is not None else self.names
        unknown = [name for name in wanted if name not in self.names]
        if unknown:
            raise ModelError(f"postprocess.outputs names {unknown}, which the model does not have; its outputs are "
                             f"{self.names}")
        self.kept = [i for i, name in enumerate(self.names) if name in wanted]

    def __call__(self, outputs: list[np.ndarray], transform: Transform) -> RawOutputs:
        if len(outputs) != len(self.names):
            raise ModelError(f"raw postprocessor expects outputs {self.names}, got {len(outputs)} array(s)")
        # Copies, because a backend may reuse its output buffers while sinks still hold the result.
        return RawOutputs({self.names[i]: np.array(outputs[i], copy=True) for i in self.kept}, self.max_values)
