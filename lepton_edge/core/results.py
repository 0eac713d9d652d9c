"""The data types every stage shares: the input :class:`Frame` and the typed :class:`Result`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pycocotools import mask as coco_mask


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


MaskFormat = Literal["rle", "polygon"]

COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9), (8, 10),
    (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)
"""Lines between the 17 COCO person keypoints (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles)."""


@dataclass(slots=True)
class Masks:
    """Instance masks in source pixels, stored compactly: mask ``i`` is the bool array ``crops[i]`` placed at
    ``origins[i]`` (x, y) in a ``height`` x ``width`` frame, all false elsewhere.

    ``format`` is what :meth:`encode` writes: ``rle`` (COCO run-length encoding of the full-frame mask) or
    ``polygon`` (``polygons[i]``: the mask's outer contours as ``(P, 2)`` x, y arrays, made by the decoder).
    """

    crops: tuple[np.ndarray, ...]
    origins: np.ndarray
    height: int
    width: int
    format: MaskFormat = "rle"
    polygons: tuple[tuple[np.ndarray, ...], ...] | None = None

    def __post_init__(self) -> None:
        self.crops = tuple(np.asarray(c, dtype=bool) for c in self.crops)
        self.origins = np.asarray(self.origins, dtype=np.int64).reshape(-1, 2)
        if len(self.origins) != len(self.crops):
            raise ValueError(f"Masks: {len(self.crops)} crops but {len(self.origins)} origins")
        for crop, (x, y) in zip(self.crops, self.origins, strict=True):
            h, w = crop.shape if crop.ndim == 2 else (-1, -1)
            if h < 0 or x < 0 or y < 0 or x + w > self.width or y + h > self.height:
                raise ValueError(f"Masks: a {crop.shape} crop at ({x}, {y}) is outside the "
                                 f"{self.width}x{self.height} frame")
        if self.format == "polygon" and (self.polygons is None or len(self.polygons) != len(self.crops)):
            raise ValueError("Masks: the polygon format needs one tuple of polygons per mask")

    @classmethod
    def empty(cls, height: int, width: int, format: MaskFormat = "rle") -> Masks:
        return cls((), np.zeros((0, 2), np.int64), height, width, format, () if format == "polygon" else None)

    def __len__(self) -> int:
        return len(self.crops)

    def dense(self, i: int) -> np.ndarray:
        """Mask ``i`` as a ``(height, width)`` bool array."""
        out = np.zeros((self.height, self.width), dtype=bool)
        (x, y), crop = self.origins[i], self.crops[i]
        out[y:y + crop.shape[0], x:x + crop.shape[1]] = crop
        return out

    def areas(self) -> np.ndarray:
        """Pixels in each mask."""
        return np.array([int(c.sum()) for c in self.crops], dtype=np.int64)

    def select(self, keep: np.ndarray) -> Masks:
        """The masks at the indices ``keep``, in that order."""
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        polygons = None if self.polygons is None else tuple(self.polygons[i] for i in keep)
        return Masks(tuple(self.crops[i] for i in keep), self.origins[keep], self.height, self.width, self.format,
                     polygons)

    def rle(self, i: int) -> dict[str, Any]:
        """COCO run-length encoding of mask ``i`` (pycocotools' compressed counts string).

        The runs (column by column, zeros first) are counted over the columns the crop spans only; the columns
        around it add to the first and last runs of zeros."""
        crop, (x, y) = self.crops[i], self.origins[i]
        band = np.zeros((self.height, crop.shape[1]), dtype=bool)
        band[y:y + crop.shape[0]] = crop
        flat = band.T.reshape(-1)
        edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist() if flat.size else [0]
        if flat.size and flat[0]:
            runs.insert(0, 0)
        runs[0] += int(x) * self.height
        after = (self.width - int(x) - crop.shape[1]) * self.height
        if len(runs) % 2:  # ends with zeros
            runs[-1] += after
        elif after:
            runs.append(after)
        size = [self.height, self.width]
        encoded = coco_mask.frPyObjects({"size": size, "counts": runs}, self.height, self.width)
        return {"size": size, "counts": encoded["counts"].decode("ascii")}

    def encode(self, i: int) -> dict[str, Any]:
        """Mask ``i`` as results write it: ``{"rle": ...}`` or ``{"polygons": [[x, y, x, y, ...], ...]}``."""
        if self.format == "polygon":
            assert self.polygons is not None
            return {"polygons": [[round(float(v), 1) for v in poly.reshape(-1)] for poly in self.polygons[i]]}
        return {"rle": self.rle(i)}


@dataclass(slots=True)
class Keypoints:
    """Keypoints per detection, ``(N, K, D)`` in source pixels: x, y and, when ``D`` is 3, a confidence (0..1).

    ``skeleton`` lists the keypoint index pairs joined by lines when drawn.
    """

    data: np.ndarray
    skeleton: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data, dtype=np.float32)
        if self.data.ndim != 3 or self.data.shape[2] not in (2, 3):
            raise ValueError(f"Keypoints data must be (N, K, 2 or 3), got {self.data.shape}")
        self.skeleton = tuple((int(a), int(b)) for a, b in self.skeleton)
        k = self.data.shape[1]
        if any(not (0 <= a < k and 0 <= b < k) for a, b in self.skeleton):
            raise ValueError(f"Keypoints skeleton {self.skeleton} names keypoints outside 0..{k - 1}")

    def __len__(self) -> int:
        return len(self.data)

    def select(self, keep: np.ndarray) -> Keypoints:
        return Keypoints(self.data[np.asarray(keep, dtype=np.int64)], self.skeleton)


@dataclass(slots=True)
class RotatedBoxes:
    """Oriented boxes ``(N, 5)``: centre x, y, width, height in source pixels and the angle in radians
    (clockwise in image coordinates, y down)."""

    xywhr: np.ndarray

    def __post_init__(self) -> None:
        self.xywhr = np.asarray(self.xywhr, dtype=np.float32).reshape(-1, 5)

    def __len__(self) -> int:
        return len(self.xywhr)

    def corners(self) -> np.ndarray:
        """The four corners of each box, ``(N, 4, 2)``: centre +/- half the width along the angle, +/- half the
        height across it."""
        cx, cy, w, h, angle = (self.xywhr[:, i].astype(np.float64) for i in range(5))
        cos, sin = np.cos(angle), np.sin(angle)
        along = np.stack([w / 2 * cos, w / 2 * sin], axis=-1)
        across = np.stack([-h / 2 * sin, h / 2 * cos], axis=-1)
        centre = np.stack([cx, cy], axis=-1)
        corners = [centre + along + across, centre + along - across, centre - along - across,
                   centre - along + across]
        return np.stack(corners, axis=1).astype(np.float32)

    def select(self, keep: np.ndarray) -> RotatedBoxes:
        return RotatedBoxes(self.xywhr[np.asarray(keep, dtype=np.int64)])


@dataclass(slots=True)
class Tracks:
    """What a tracker adds to each detection: its track id (-1: not on a confirmed track), the track's age in
    seconds of capture time and its velocity ``(N, 2)`` in source pixels per second. ``smoothed`` ``(N, 4)`` are
    the tracker's estimates of the boxes (xyxy, less jitter than the detections; analytics decides on them)."""

    ids: np.ndarray
    ages_s: np.ndarray
    velocities: np.ndarray
    smoothed: np.ndarray

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        self.ages_s = np.asarray(self.ages_s, dtype=np.float32).reshape(-1)
        self.velocities = np.asarray(self.velocities, dtype=np.float32).reshape(-1, 2)
        self.smoothed = np.asarray(self.smoothed, dtype=np.float32).reshape(-1, 4)
        if not len(self.ids) == len(self.ages_s) == len(self.velocities) == len(self.smoothed):
            raise ValueError(f"Tracks arrays disagree in length: ids {len(self.ids)}, ages_s {len(self.ages_s)}, "
                             f"velocities {len(self.velocities)}, smoothed {len(self.smoothed)}")

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, keep: np.ndarray) -> Tracks:
        keep = np.asarray(keep, dtype=np.int64)
        return Tracks(self.ids[keep], self.ages_s[keep], self.velocities[keep], self.smoothed[keep])


@dataclass(slots=True)
class Attributes:
    """One cascade classifier's answer per detection: its top class and score; class id -1 where the detection was
    not classified (too small, too unsure, not of the classes asked, or beyond the crops per frame)."""

    class_ids: np.ndarray
    scores: np.ndarray
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(self.class_ids) != len(self.scores):
            raise ValueError("Attributes class_ids and scores disagree in length")

    def __len__(self) -> int:
        return len(self.class_ids)

    def select(self, keep: np.ndarray) -> Attributes:
        return Attributes(self.class_ids[keep], self.scores[keep], self.labels)

    def item(self, i: int) -> dict[str, Any] | None:
        """Detection ``i``'s answer as a protocol class score; None when it was not classified."""
        c = int(self.class_ids[i])
        if c < 0:
            return None
        return {"label": self.labels[c] if c < len(self.labels) else str(c), "class_id": c,
                "score": round(float(self.scores[i]), 4)}


@dataclass(slots=True)
class Detections:
    """Detections as parallel arrays: boxes ``(N, 4)`` xyxy in source pixels, scores ``(N,)``, class ids ``(N,)``.

    Segmentation, pose and oriented-box models add one entry per detection in ``masks``, ``keypoints`` or
    ``rotated`` (``boxes`` is then the axis-aligned box around it). A tracker adds ``tracks``; cascades add
    ``attributes`` (one :class:`Attributes` per cascade classifier, by its model name).
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: tuple[str, ...] = ()
    """Label names indexed by class id (may be empty)."""
    masks: Masks | None = None
    keypoints: Keypoints | None = None
    rotated: RotatedBoxes | None = None
    tracks: Tracks | None = None
    attributes: dict[str, Attributes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        n = len(self.boxes)
        lengths = {"scores": len(self.scores), "class_ids": len(self.class_ids)}
        lengths |= {name: len(part) for name, part in self._parts().items()}
        lengths |= {f"attributes.{name}": len(part) for name, part in self.attributes.items()}
        if any(length != n for length in lengths.values()):
            raise ValueError(
                f"Detections arrays disagree in length: boxes {n}, "
                + ", ".join(f"{name} {length}" for name, length in lengths.items())
            )

    def _parts(self) -> dict[str, Masks | Keypoints | RotatedBoxes | Tracks]:
        parts = {"masks": self.masks, "keypoints": self.keypoints, "rotated": self.rotated, "tracks": self.tracks}
        return {name: part for name, part in parts.items() if part is not None}

    @classmethod
    def empty(cls, labels: tuple[str, ...] = ()) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), labels)

    def __len__(self) -> int:
        return len(self.boxes)

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else str(class_id)

    def select(self, keep: Sequence[int] | np.ndarray) -> Detections:
        """The detections at the indices (or where the bool mask) ``keep``, with their masks, keypoints and
        rotated boxes."""
        keep = np.asarray(keep)
        keep = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64).reshape(-1)
        return Detections(
            self.boxes[keep], self.scores[keep], self.class_ids[keep], self.labels,
            masks=None if self.masks is None else self.masks.select(keep),
            keypoints=None if self.keypoints is None else self.keypoints.select(keep),
            rotated=None if self.rotated is None else self.rotated.select(keep),
            tracks=None if self.tracks is None else self.tracks.select(keep),
            attributes={name: part.select(keep) for name, part in self.attributes.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        items = [
            {
                "label": self.label(int(c)),
                "class_id": int(c),
                "score": round(float(s), 4),
                "box": [round(float(v), 1) for v in b],
            }
            for b, s, c in zip(self.boxes, self.scores, self.class_ids, strict=True)
        ]
        if self.rotated is not None:
            corners = self.rotated.corners()
            for i, (item, (cx, cy, w, h, angle)) in enumerate(zip(items, self.rotated.xywhr, strict=True)):
                item["rotated_box"] = {"cx": round(float(cx), 1), "cy": round(float(cy), 1), "w": round(float(w), 1),
                                       "h": round(float(h), 1), "angle": round(float(angle), 4)}
                item["corners"] = [[round(float(x), 1), round(float(y), 1)] for x, y in corners[i]]
        if self.keypoints is not None:
            digits = (1, 1, 3)
            for item, points in zip(items, self.keypoints.data, strict=True):
                item["keypoints"] = [[round(float(v), d) for v, d in zip(p, digits, strict=False)] for p in points]
        if self.masks is not None:
            for i, item in enumerate(items):
                item["mask"] = self.masks.encode(i)
        if self.tracks is not None:
            for item, tid, age, (vx, vy) in zip(items, self.tracks.ids, self.tracks.ages_s, self.tracks.velocities,
                                                strict=True):
                item["track_id"] = int(tid)
                item["track_age_s"] = round(float(age), 3)
                item["velocity"] = [round(float(vx), 1), round(float(vy), 1)]
        for name, part in self.attributes.items():
            for i, item in enumerate(items):
                answer = part.item(i)
                if answer is not None:
                    item.setdefault("attributes", {})[name] = answer
        return {"detections": items}


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


class Annotations(Protocol):
    """Whatever a stage after postprocessing adds to a result (analytics: events and counts)."""

    def to_dict(self) -> dict[str, Any]: ...


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
    analytics: Annotations | None = None
    """Zone and line events and counts for this frame, when analytics is configured."""

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
            **(self.analytics.to_dict() if self.analytics is not None else {}),
        }
