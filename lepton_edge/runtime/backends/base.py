"""The small interface every inference backend implements (onnxruntime, TensorRT).

Lifecycle: construct (cheap) -> ``load()`` -> ``infer()`` any number of times -> ``close()``.
Backends are context managers; ``infer`` checks its feeds against the declared inputs.
"""

from __future__ import annotations

import abc
import logging
from typing import Any

import numpy as np

from lepton_edge.core.errors import LeptonError, ModelError
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.input_size import feed_shape

log = logging.getLogger(__name__)

Shapes = dict[str, tuple[int, ...]]
"""Input name -> the shape fed to it."""


class Backend(abc.ABC):
    """Runs a model. Subclasses implement ``_load``, ``_infer`` and ``_close``."""

    name: str = "backend"

    def __init__(self) -> None:
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.metadata: dict[str, str] = {}
        self.warmup_runs = 0
        self.warmed_shapes: Shapes | None = None
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

    def warmup_shapes(self) -> Shapes | None:
        """The shapes warm-up feeds when the caller gives none: static inputs as declared, dynamic image inputs at
        the size in the model's metadata (batch 1), other dynamic dims 1; None when an image input's size is
        unknown until the pipeline resolves ``preprocess.size`` (see :mod:`lepton_edge.runtime.input_size`)."""
        shapes = {}
        for spec in self.inputs:
            shape = feed_shape(spec, self.metadata)
            if shape is None or (len(spec.shape) != 4 and any(
                    not (isinstance(d, int) and d > 0) for d in spec.shape[1:])):
                return None  # a sensor input whose length (audio samples, tokens) only the data tells
            shapes[spec.name] = shape
        return shapes

    def warmup(self, runs: int, shapes: Shapes | None = None, values: dict[str, np.ndarray] | None = None) -> None:
        """Run ``runs`` inferences on zero tensors of ``shapes`` (default :meth:`warmup_shapes`) so that first-frame
        latency is normal; ``values`` replaces the zeros of some inputs (constants such as a sample rate). Without
        shapes to use it remembers ``runs`` for :meth:`warm_for` and runs nothing."""
        self.warmup_runs = runs
        shapes = shapes if shapes is not None else self.warmup_shapes()
        if shapes is None:
            log.debug("%s: warm-up waits for the input size the pipeline feeds", self.name)
            return
        if not runs:
            return
        feeds = {s.name: np.zeros(shapes[s.name], s.dtype) for s in self.inputs}
        feeds.update(values or {})
        try:
            for _ in range(runs):
                self._infer(feeds)
        except LeptonError:
            raise
        except Exception as e:  # runtimes raise their own types for shape errors
            fed = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
            raise ModelError(
                f"{self.name}: warm-up with inputs {fed} failed: {str(e).strip()[:500]}\n"
                "Check that preprocess.size (or the model's imgsz metadata) is a size this model accepts."
            ) from None
        self.warmed_shapes = dict(shapes)

    def warm_for(self, shapes: Shapes, values: dict[str, np.ndarray] | None = None) -> None:
        """Warm up at ``shapes``, the shapes the pipeline will feed, unless load already warmed up at them."""
        if self.warmup_runs and shapes != self.warmed_shapes:
            self.warmup(self.warmup_runs, shapes, values)

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
