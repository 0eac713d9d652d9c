"""The device's loaded models: one :class:`ModelRunner` per distinct model, shared by the workloads that run it, and
one :class:`CascadeClassifier` per distinct cascade classifier, shared by the cascades that name it.

Two workloads run the same model when their model sections agree on everything that needs the model loaded again
(path, artifact, precision, inputs, batching: labels and task only change decoding) and on the backend. The first
workload that asks loads it; the last one that lets go closes it. A runner that failed (its backend raised) is
not handed out again: the next workload that asks loads the model anew.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

from lepton_edge.config.device import DeviceConfig
from lepton_edge.config.pipeline import ModelConfig, PreprocessConfig
from lepton_edge.config.workloads import InlineCascadeConfig
from lepton_edge.engines.engine_cache import load_backend, open_model
from lepton_edge.runtime.assembly import make_cascade_classifier
from lepton_edge.runtime.batcher import ModelRunner
from lepton_edge.runtime.cascade import CascadeClassifier

log = logging.getLogger(__name__)

RELOAD_MODEL_FIELDS = frozenset(ModelConfig.model_fields) - {"labels", "task"}
"""Model fields whose change needs the model loaded again (labels and task only change postprocessing)."""


def model_key(config: DeviceConfig, source_kind: str) -> str:
    """What makes two workloads' models one loaded model (``config`` is a workload's single-form view)."""
    assert config.model is not None
    model = config.model.model_dump(mode="json", include=set(RELOAD_MODEL_FIELDS))
    built = config.model.precision != "as-is"  # an engine built for the workload's input size
    key = {"model": model, "backend": config.backend.model_dump(mode="json"), "source": source_kind,
           "size": list(config.preprocess.size) if built and config.preprocess.size else None}
    return json.dumps(key, sort_keys=True)


@dataclass(slots=True)
class _Entry:
    runner: ModelRunner
    users: int = 0


@dataclass(slots=True)
class _ClassifierEntry:
    classifier: CascadeClassifier
    users: int = 0


class ModelRegistry:
    """Loads each distinct model once and counts the workloads using it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._classifiers: dict[str, _ClassifierEntry] = {}

    def acquire(self, config: DeviceConfig, source_kind: str) -> ModelRunner:
        """The runner of ``config``'s model (a workload's view), loaded if no workload runs it yet. Raises what
        loading raises (ConfigError, ModelError)."""
        assert config.model is not None
        key = model_key(config, source_kind)
        with self._lock:  # loads are rare and one config is applied at a time: no need to load outside the lock
            entry = self._entries.get(key)
            if entry is None or entry.runner.error is not None:
                backend = load_backend(config)
                try:
                    runner = ModelRunner(
                        backend, inputs=config.model.inputs, source=source_kind,
                        max_batch=config.model.batch.max_batch, batch_timeout_ms=config.model.batch.timeout_ms,
                        name=config.model.path.stem)
                except BaseException:
                    backend.close()
                    raise
                entry = self._entries[key] = _Entry(runner)
                log.info("model %s loaded: %s", runner.name, "frames one at a time" if runner.mode == "single" else
                         f"{runner.mode} batch, up to {runner.max_batch} frames per inference")
            entry.users += 1
            return entry.runner

    def release(self, runner: ModelRunner) -> None:
        """One workload less on ``runner``; the last one closes it."""
        with self._lock:
            key = next((k for k, e in self._entries.items() if e.runner is runner), None)
            if key is None:  # failed and replaced: nobody else holds it
                close = True
            else:
                entry = self._entries[key]
                entry.users -= 1
                close = entry.users <= 0
                if close:
                    del self._entries[key]
        if close:
            runner.close(quiet=True)

    def acquire_classifiers(self, config: DeviceConfig) -> dict[str, CascadeClassifier]:
        """The classifiers of ``config``'s cascades by cascade name, loaded if no cascade runs them yet."""
        loaded: dict[str, CascadeClassifier] = {}
        try:
            for cascade in config.cascade:
                loaded[cascade.name] = self._acquire_classifier(cascade)
        except BaseException:
            self.release_classifiers(loaded)
            raise
        return loaded

    def _acquire_classifier(self, cascade: InlineCascadeConfig) -> CascadeClassifier:
        key = json.dumps({"name": cascade.name, "model": cascade.model.model_dump(mode="json")}, sort_keys=True)
        with self._lock:
            entry = self._classifiers.get(key)
            if entry is None:
                backend = open_model(cascade.model, cascade.model.backend, preprocess=PreprocessConfig())
                try:
                    entry = self._classifiers[key] = _ClassifierEntry(make_cascade_classifier(cascade, backend))
                except BaseException:
                    backend.close()
                    raise
            entry.users += 1
            return entry.classifier

    def release_classifiers(self, classifiers: dict[str, CascadeClassifier]) -> None:
        """One cascade less on each of ``classifiers``; the last one closes it."""
        closing = []
        with self._lock:
            for classifier in classifiers.values():
                key = next((k for k, e in self._classifiers.items() if e.classifier is classifier), None)
                if key is None:
                    continue
                self._classifiers[key].users -= 1
                if self._classifiers[key].users <= 0:
                    closing.append(self._classifiers.pop(key).classifier)
        for classifier in closing:
            classifier.close()

    def runners(self) -> list[ModelRunner]:
        """The loaded runners."""
        with self._lock:
            return [e.runner for e in self._entries.values()]
