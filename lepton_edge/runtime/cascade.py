"""Cascades: a classifier run on crops of a workload's detections (detector -> classifier / attribute), its top class
attached to each detection it classified (:class:`~lepton_edge.core.results.Attributes`, under the cascade's name).

The cascade runs in the workload's postprocess thread, after decoding and before tracking, on the full-resolution
source frame. A frame's crops go through the classifier as one batch when its batch axis is dynamic, else one by one.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lepton_edge.config.workloads import CascadeSelection
from lepton_edge.core.errors import ConfigError
from lepton_edge.core.results import Attributes, Classification, Detections
from lepton_edge.runtime.backends.base import Backend
from lepton_edge.runtime.preprocess import Preprocessor, Transform

_CLASSIFIERS: weakref.WeakSet[CascadeClassifier] = weakref.WeakSet()


@atexit.register
def _close_classifiers_at_exit() -> None:
    """As the batcher's runners: no postprocess thread may be inside a classifier when the interpreter exits."""
    for classifier in list(_CLASSIFIERS):
        with contextlib.suppress(Exception):
            classifier.close()


class CascadeClassifier:
    """A loaded classifier for cascades, shared by every cascade that names it (one lock: one frame's crops at a
    time)."""

    def __init__(self, name: str, backend: Backend, preprocessor: Preprocessor,
                 postprocessor: Callable[[list[np.ndarray], Transform], Any]) -> None:
        if len(backend.inputs) != 1:
            raise ConfigError(f"cascade model {name!r} has {len(backend.inputs)} inputs; a cascade classifier takes "
                              "one image input")
        self.name = name
        self.backend = backend
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.input_name = backend.inputs[0].name
        batch = backend.inputs[0].shape[0] if backend.inputs[0].shape else 1
        self.batches = not (isinstance(batch, int) and batch > 0)
        """True when the batch axis is dynamic: a frame's crops run in one inference."""
        self._lock = threading.Lock()
        self._closed = False
        _CLASSIFIERS.add(self)

    def classify(self, crops: Sequence[np.ndarray]) -> list[Classification]:
        """The classifier's answer for each crop (BGR images of any size); none once closed (a frame that was
        already in the postprocess thread when its workload's cascade was swapped)."""
        if not crops:
            return []
        shape = tuple(self.preprocessor.shape)
        tensors = np.empty((len(crops), *shape[1:]), self.preprocessor.dtype)
        transforms = [self.preprocessor(crop, tensors[i:i + 1]) for i, crop in enumerate(crops)]
        with self._lock:
            if self._closed:
                return []
            if self.batches:
                outputs = self.backend.infer({self.input_name: tensors})
                per_crop = [[out[i:i + 1] for out in outputs] for i in range(len(crops))]
            else:
                per_crop = [self.backend.infer({self.input_name: tensors[i:i + 1]}) for i in range(len(crops))]
        answers = [self.postprocessor(outputs, t) for outputs, t in zip(per_crop, transforms, strict=True)]
        for answer in answers:
            if not isinstance(answer, Classification):
                raise ConfigError(f"cascade model {self.name!r} is not a classifier (it decodes to "
                                  f"{type(answer).__name__}); a cascade runs a classifier on the crops")
        return answers

    def close(self) -> None:
        """Close the backend once the frame being classified (if any) is done."""
        with self._lock:
            self._closed = True
            self.backend.close()


@dataclass(frozen=True, slots=True)
class CascadeStep:
    """One cascade: which detections, the classifier, and the name its answers go under."""

    name: str
    selection: CascadeSelection
    classifier: CascadeClassifier

    def chosen(self, detections: Detections) -> np.ndarray:
        """Indices of the detections to classify: the classes asked, big and sure enough, best scores first."""
        sel = self.selection
        boxes = detections.boxes
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = (sides >= sel.min_size) & (detections.scores >= sel.min_confidence)
        if sel.classes is not None:
            wanted = {c for c in sel.classes if isinstance(c, int)}
            wanted |= {i for i, label in enumerate(detections.labels) if label in sel.classes}
            keep &= np.isin(detections.class_ids, list(wanted))
        candidates = np.flatnonzero(keep)
        order = np.argsort(-detections.scores[candidates], kind="stable")
        return candidates[order][: sel.max_crops]


class CascadeStage:
    """Runs every cascade of a workload on a frame's detections."""

    def __init__(self, steps: Sequence[CascadeStep]) -> None:
        self.steps = list(steps)

    def __call__(self, output: Any, image: Any) -> Any:
        """``output`` with each cascade's answers attached (unchanged when it is not detections or the frame is not an
        image)."""
        if not isinstance(output, Detections) or not len(output) or not isinstance(image, np.ndarray) \
                or image.ndim != 3:
            return output
        attributes = dict(output.attributes)
        for step in self.steps:
            chosen = step.chosen(output)
            class_ids = np.full(len(output), -1, np.int64)
            scores = np.zeros(len(output), np.float32)
            answers = step.classifier.classify([crop(image, output.boxes[i], step.selection.padding) for i in chosen])
            labels: tuple[str, ...] = ()
            for i, answer in zip(chosen, answers, strict=False):  # no answers from a classifier closed meanwhile
                if len(answer):
                    class_ids[i], scores[i] = answer.class_ids[0], answer.scores[0]
                    labels = labels or answer.labels
            attributes[step.name] = Attributes(class_ids, scores, labels)
        return replace(output, attributes=attributes)


def crop(image: np.ndarray, box: np.ndarray, padding: float = 0.0) -> np.ndarray:
    """The part of ``image`` inside ``box`` (xyxy, source pixels) grown by ``padding`` of its size on every side,
    clipped to the image; at least one pixel."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    px, py = (x2 - x1) * padding, (y2 - y1) * padding
    left, top = int(np.clip(np.floor(x1 - px), 0, w - 1)), int(np.clip(np.floor(y1 - py), 0, h - 1))
    right, bottom = int(np.clip(np.ceil(x2 + px), left + 1, w)), int(np.clip(np.ceil(y2 + py), top + 1, h))
    return np.ascontiguousarray(image[top:bottom, left:right])
