"""Probation of a new model: its first frames run guarded, and a health check decides whether it stays.

While on probation, an exception in its preprocessing, inference or postprocessing is recorded as a
health-check failure instead of stopping the pipeline, so that the previous model can be swapped back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from lepton_edge.config.device import DeviceConfig
from lepton_edge.core.errors import error_text
from lepton_edge.core.results import RawOutputs
from lepton_edge.runtime.pipeline import ModelBundle, Pipeline


class _FailedOutputs(list):
    """Stands for the outputs of a frame whose inference failed while a new model is on probation."""


class Probation:
    """Watches a newly swapped-in model: counts its results and catches its errors instead of letting
    them stop the pipeline, so a bad model can be swapped back. Removed once the model has passed."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.results = 0
        self.errors: list[str] = []
        self._backend = bundle.backend
        self._preprocessor = bundle.preprocessor
        self._postprocessor = bundle.postprocessor
        self._guarded_post = self._post
        guarded: Any = _Guarded(bundle.backend, self, "inference", _FailedOutputs)
        bundle.backend = guarded
        if bundle.preprocessor is not None:
            guarded = _Guarded(bundle.preprocessor, self, "preprocessing", lambda: None)
            bundle.preprocessor = guarded
        bundle.postprocessor = self._guarded_post

    def fail(self, message: str) -> None:
        if len(self.errors) < 10:
            self.errors.append(message)

    def _post(self, outputs: list[Any], transform: Any) -> Any:
        if isinstance(outputs, _FailedOutputs):
            return RawOutputs({})
        try:
            output = self._postprocessor(outputs, transform)
        except Exception as e:
            self.fail(f"health check: postprocessing failed: {error_text(e)}")
            return RawOutputs({})
        self.results += 1
        return output

    def end(self) -> None:
        """The model passed: run it without the guards from the next frame on."""
        self.bundle.backend = self._backend
        self.bundle.preprocessor = self._preprocessor
        if self.bundle.postprocessor is self._guarded_post:
            self.bundle.postprocessor = self._postprocessor


class _Guarded:
    """Wraps a backend (``infer``) or a preprocessor (call) of a model on probation: an exception is
    recorded as a health-check failure and replaced by ``fallback()`` instead of stopping the pipeline."""

    def __init__(self, target: Any, probation: Probation, stage: str, fallback: Callable[[], Any]) -> None:
        self._target = target
        self._probation = probation
        self._stage = stage
        self._fallback = fallback

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:
            self._probation.fail(f"health check: {self._stage} failed: {error_text(e)}")
            return self._fallback()

    def infer(self, feeds: dict[str, Any]) -> list[Any]:
        return self._guard(self._target.infer, feeds)

    def __call__(self, *args: Any) -> Any:
        return self._guard(self._target, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def health_check(
    probation: Probation, pipeline: Pipeline, config: DeviceConfig, stopping: threading.Event
) -> list[str]:
    """Watch a model on probation for ``agent.health_check.window_s`` (until ``stopping`` is set); returns the
    errors found."""
    check = config.agent.health_check if config.agent else None
    window_s = check.window_s if check else 5.0
    min_frames = check.min_frames if check else 5
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline and not probation.errors and not stopping.is_set():
        if pipeline.stop_event.is_set():
            break
        stopping.wait(min(0.05, max(0.0, deadline - time.monotonic())))
    errors = list(probation.errors)
    if stopping.is_set() or pipeline.stop_event.is_set():
        errors = errors or ["health check interrupted: the pipeline is stopping"]
    elif not errors and probation.results < min_frames:
        errors.append(
            f"health check: the new model produced {probation.results} result(s) in {window_s:g} s, "
            f"fewer than agent.health_check.min_frames={min_frames} (is the source delivering frames?)"
        )
    return errors
