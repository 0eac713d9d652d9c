"""The small interface every inference backend implements (onnxruntime, TensorRT).

Lifecycle: construct (cheap) -> ``load()`` -> ``infer()`` any number of times -> ``close()``.
Backends are context managers; ``infer`` checks its feeds against the declared inputs.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from lepton_edge.core.errors import ModelError
from lepton_edge.core.tensors import TensorSpec


class Backend(abc.ABC):
    """Runs a model. Subclasses implement ``_load``, ``_infer`` and ``_close``."""

    name: str = "backend"

    def __init__(self) -> None:
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.metadata: dict[str, str] = {}
        self._loaded = False

    def load(self) -> Backend:
        """Load the model; fills ``inputs``, ``outputs`` and ``metadata``. Raises ModelError."""
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one inference; returns outputs in ``self.outputs`` order."""
        if not self._loaded:
            raise RuntimeError(f"{self.name} backend used before load()")
        if feeds.keys() != {s.name for s in self.inputs}:
            raise ModelError(
                f"{self.name}: model inputs are {[s.name for s in self.inputs]}, got feeds {sorted(feeds)}"
            )
        for spec in self.inputs:
            problem = spec.accepts(feeds[spec.name])
            if problem:
                raise ModelError(f"{self.name}: {problem}")
        return self._infer(feeds)

    def warmup(self, runs: int) -> None:
        """Run ``runs`` inferences on zero tensors (dynamic dims as 1) so first-frame latency is normal."""
        feeds = {
            s.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in s.shape], s.dtype)
            for s in self.inputs
        }
        for _ in range(runs):
            self._infer(feeds)

    def describe(self) -> dict[str, Any]:
        """What is loaded, for logs, telemetry and ``inspect``."""
        return {
            "backend": self.name,
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)} for s in self.inputs],
            "outputs": [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)} for s in self.outputs],
        }

    def close(self) -> None:
        """Release the model and its memory. Safe to call twice."""
        if self._loaded:
            self._loaded = False
            self._close()

    def __enter__(self) -> Backend:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    @abc.abstractmethod
    def _close(self) -> None: ...
