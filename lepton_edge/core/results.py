"""The data types every stage shares: the input :class:`Frame` and the typed :class:`Result`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def now() -> float:
    """The monotonic clock every timestamp in the pipeline uses (seconds)."""
    return time.monotonic()


@dataclass(slots=True)
class Frame:
    """One captured image (HxWx3 BGR uint8) or sensor tensor, with where and when it came from."""

    data: np.ndarray
    seq: int
    source_id: str
    capture_ts: float = field(default_factory=now)
    """Monotonic capture time (seconds), the origin of every latency figure."""
    wall_time: float = field(default_factory=time.time)
    """Unix time of capture, for humans and for correlating devices."""


@dataclass(slots=True)
class Detections:
    """Detections as parallel arrays: boxes ``(N, 4)`` xyxy in source pixels, scores ``(N,)``, class ids ``(N,)``."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: tuple[str, ...] = ()
    """Label names indexed by class id (may be empty)."""

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        n = len(self.boxes)
        if len(self.scores) != n or len(self.class_ids) != n:
            raise ValueError(
                f"Detections arrays disagree in length: boxes {n}, scores {len(self.scores)}, "
                f"class_ids {len(self.class_ids)}"
            )

    @classmethod
    def empty(cls, labels: tuple[str, ...] = ()) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), labels)

    def __len__(self) -> int:
        return len(self.boxes)

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else str(class_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "detections": [
                {
                    "label": self.label(int(c)),
                    "class_id": int(c),
                    "score": round(float(s), 4),
                    "box": [round(float(v), 1) for v in b],
                }
                for b, s, c in zip(self.boxes, self.scores, self.class_ids, strict=True)
            ]
        }


@dataclass(slots=True)
class Classification:
    """Top-k classes, best first."""

    class_ids: np.ndarray
    scores: np.ndarray
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(self.class_ids) != len(self.scores):
            raise ValueError("Classification class_ids and scores disagree in length")

    def __len__(self) -> int:
        return len(self.class_ids)

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else str(class_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [
                {"label": self.label(int(c)), "class_id": int(c), "score": round(float(s), 4)}
                for c, s in zip(self.class_ids, self.scores, strict=True)
            ]
        }


@dataclass(slots=True)
class RawOutputs:
    """Model outputs passed through unchanged, for models without a postprocessor.

    ``to_dict`` writes each output's values (nested lists, non-finite numbers as null) when it holds at most
    ``max_values`` numbers, else a summary: shape, dtype, min, max, mean and ``values_omitted``.
    """

    outputs: dict[str, np.ndarray]
    max_values: int = 4096

    def __len__(self) -> int:
        return len(self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {"outputs": {k: raw_values(v, self.max_values) for k, v in self.outputs.items()}}


def raw_values(array: np.ndarray, max_values: int) -> dict[str, Any]:
    """One raw output for a result line: its values up to ``max_values`` numbers, else a summary of them."""
    array = np.asarray(array)
    info: dict[str, Any] = {"shape": list(array.shape), "dtype": str(array.dtype)}
    numeric = array.dtype.kind in "biuf"
    if array.size <= max_values and numeric:
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            info["values"] = np.where(np.isfinite(array), array, None).tolist()  # JSON has no NaN or inf
        else:
            info["values"] = array.tolist()
        return info
    info.update(size=int(array.size), values_omitted=True)
    if not numeric:
        return info
    finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
    if finite.size:
        info.update(min=float(finite.min()), max=float(finite.max()), mean=float(finite.mean(dtype=np.float64)))
    if finite.size != array.size:
        info["nonfinite"] = int(array.size - finite.size)
    return info


Output = Detections | Classification | RawOutputs


@dataclass(slots=True)
class Result:
    """What the pipeline delivers to sinks: the postprocessed output, its frame's identity and timing."""

    output: Output
    seq: int
    source_id: str
    capture_ts: float
    wall_time: float
    stage_ms: dict[str, float]
    """Milliseconds spent in each stage (source, queue, preprocess, infer, postprocess)."""
    done_ts: float = 0.0
    """Monotonic time when postprocessing finished."""
    age_ms: float = 0.0
    """Age of the frame when inference started (capture to infer start)."""
    image: np.ndarray | None = None
    """The source frame, kept only when a sink needs pixels (annotated video)."""

    @property
    def latency_ms(self) -> float:
        """End-to-end latency: capture to postprocessed result."""
        return (self.done_ts - self.capture_ts) * 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "source": self.source_id,
            "time": round(self.wall_time, 6),
            "latency_ms": round(self.latency_ms, 3),
            "age_ms": round(self.age_ms, 3),
            "stage_ms": {k: round(v, 3) for k, v in self.stage_ms.items()},
            **self.output.to_dict(),
        }
