"""Object-detection decoders for the output layouts people actually export.

* ``yolov8``: Ultralytics YOLOv8/v11, one output ``[1, 4+C, A]`` (cx, cy, w, h, then C class scores).
* ``yolov5``: one output ``[1, A, 5+C]`` (cx, cy, w, h, objectness, C class probabilities).
* ``nms``: boxes already selected in the graph, either four outputs ``num_dets [1, 1]``,
  ``boxes [1, N, 4]`` (xyxy), ``scores [1, N]``, ``classes [1, N]`` (TensorRT EfficientNMS style), or
  one output ``[1, N, 6]`` = x1, y1, x2, y2, score, class (Ultralytics end2end, YOLOv10). Rows under
  conf are dropped: Ultralytics ``nms=True`` leaves unused rows at zero, end-to-end exports fill every row.
* ``rtdetr``: Ultralytics RT-DETR, one output ``[1, N, 6]`` = cx, cy, w, h normalised to 0..1, score, class
  (an in-graph top-k), or ``[1, N, 4+C]`` = normalised cx, cy, w, h then C class scores. No NMS.

The layout comes from the config, else the model's metadata (``lepton.layout``; Ultralytics ``head``
``RTDETRDecoder``, ``end2end``, ``args`` ``nms``), else the output shapes.

Box coordinates are in model-input pixels; decoders return them mapped to source pixels.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lepton_edge.config.pipeline import BoxDecodeConfig, DetectConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.results import Detections
from lepton_edge.core.tensors import Dim, TensorSpec
from lepton_edge.runtime.postprocess.nms import nms
from lepton_edge.runtime.preprocess import Transform, is_rtdetr

log = logging.getLogger(__name__)

Layout = Literal["yolov8", "yolov5", "nms", "rtdetr"]
LAYOUTS: tuple[Layout, ...] = ("yolov8", "yolov5", "nms", "rtdetr")
LAYOUT_KEY = "lepton.layout"
"""Model metadata key that names the layout, overriding shape-based detection."""

_SUPPORTED = (
    "yolov8 [1, 4+C, A]; yolov5 [1, A, 5+C]; nms as [1, N, 6] (x1, y1, x2, y2, score, class) or four "
    "outputs num_dets [1, 1], boxes [1, N, 4], scores [1, N], classes [1, N]; rtdetr [1, N, 6] (normalised cx, "
    "cy, w, h, score, class) or [1, N, 4+C]"
)
ULTRALYTICS_DETECT_HEAD = "Detect"
_NMS_IN_ARGS = re.compile(r"['\"]nms['\"]\s*:\s*True\b")
"""Ultralytics ``args`` metadata is a Python dict repr; it is matched, never evaluated."""


def cxcywh_to_xyxy(cxcywh: np.ndarray) -> np.ndarray:
    cxcywh = cxcywh.astype(np.float32, copy=False)  # float16 models: do the arithmetic in float32
    out = np.empty(cxcywh.shape, dtype=np.float32)
    half_w = cxcywh[:, 2] * 0.5
    half_h = cxcywh[:, 3] * 0.5
    out[:, 0] = cxcywh[:, 0] - half_w
    out[:, 1] = cxcywh[:, 1] - half_h
    out[:, 2] = cxcywh[:, 0] + half_w
    out[:, 3] = cxcywh[:, 1] + half_h
    return out


def first_image(output: np.ndarray, layout: str, rank: int) -> np.ndarray:
    """The batch-0 slice of ``output``, checking its rank."""
    if output.ndim != rank or output.shape[0] < 1:
        raise ModelError(
            f"{layout} decoder expects a rank-{rank} output with batch first, got shape {output.shape}"
        )
    return output[0]


@dataclass(frozen=True, slots=True)
class Candidates:
    """Boxes that passed conf, before NMS: the 4 box values as the output gives them (cx, cy, w, h for one-to-many
    heads, x1, y1, x2, y2 for end-to-end rows), their scores and classes, ``rows`` (their anchor or row indices)
    and ``extras``, the values after the classes (mask coefficients, keypoints, angle), one row each."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    rows: np.ndarray
    extras: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def yolov8_candidates(output: np.ndarray, conf: float, num_classes: int | None = None) -> Candidates:
    """Anchors of a one-to-many head ``[1, 4+C+E, A]`` whose best class score reaches ``conf``; the ``E`` rows
    after the ``num_classes`` (default: all rows after the box) class rows are the extras."""
    pred = first_image(output, "yolov8", 3)  # (4+C+E, A): one column per anchor
    nc = pred.shape[0] - 4 if num_classes is None else num_classes
    if nc < 1 or pred.shape[0] < 4 + nc:
        raise ModelError(f"yolov8 output needs 4 box rows and {max(nc, 1)} class rows, got shape {output.shape}")
    class_scores = pred[4:4 + nc]
    best = class_scores.max(axis=0)
    rows = np.flatnonzero(best >= conf)
    return Candidates(
        pred[:4, rows].T.astype(np.float32), best[rows].astype(np.float32),
        class_scores[:, rows].argmax(axis=0).astype(np.int64), rows, pred[4 + nc:, rows].T.astype(np.float32),
    )


def end2end_candidates(output: np.ndarray, conf: float, width: int = 6) -> Candidates:
    """Rows of an end-to-end (or NMS-in-graph) output ``[1, N, 6+E]`` (box, score, class, extras) whose score
    reaches ``conf``; ``width`` is the least row width the caller needs."""
    pred = first_image(output, "nms", 3)
    if pred.shape[1] < width:
        raise ModelError(
            f"end-to-end output needs rows of at least {width} values (box, score, class, ...), "
            f"got shape {output.shape}"
        )
    rows = np.flatnonzero(pred[:, 4] >= conf)
    picked = pred[rows]
    return Candidates(picked[:, :4].astype(np.float32), picked[:, 4].astype(np.float32),
                      np.rint(picked[:, 5]).astype(np.int64), rows, picked[:, 6:].astype(np.float32))


def keep_boxes(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, config: BoxDecodeConfig, *, suppress: bool
) -> np.ndarray:
    """Indices kept: NMS on xyxy ``boxes`` (when ``suppress``) or the best by score, at most max_detections."""
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    if suppress:
        return nms(boxes, scores, config.iou_threshold, class_ids=None if config.class_agnostic else class_ids,
                   max_detections=config.max_detections)
    return np.argsort(-scores, kind="stable")[: config.max_detections]


def _finish(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    transform: Transform,
    config: BoxDecodeConfig,
    labels: tuple[str, ...],
    *,
    suppress: bool,
) -> Detections:
    """NMS (when ``suppress``) or top-k by score, then map boxes to source pixels."""
    if len(scores) == 0:
        return Detections.empty(labels)
    keep = keep_boxes(boxes, scores, class_ids, config, suppress=suppress)
    return Detections(transform.to_source(boxes[keep]), scores[keep], class_ids[keep], labels)


def decode_yolov8(
    output: np.ndarray, transform: Transform, config: DetectConfig, labels: tuple[str, ...] = ()
) -> Detections:
    """Decode an Ultralytics YOLOv8/v11 output ``[1, 4+C, A]`` (class scores already sigmoided)."""
    if output.ndim == 3 and output.shape[1] < 5:
        raise ModelError(f"yolov8 output needs at least 5 rows (4 box + classes), got shape {output.shape}")
    found = yolov8_candidates(output, config.conf_threshold)
    if len(found) == 0:
        return Detections.empty(labels)
    return _finish(cxcywh_to_xyxy(found.boxes), found.scores, found.class_ids, transform, config, labels,
                   suppress=True)


def decode_yolov5(
    output: np.ndarray, transform: Transform, config: DetectConfig, labels: tuple[str, ...] = ()
) -> Detections:
    """Decode a YOLOv5 output ``[1, A, 5+C]``; the score of a box is objectness times class probability."""
    pred = first_image(output, "yolov5", 3)  # (A, 5+C): one row per anchor
    if pred.shape[1] < 6:
        raise ModelError(
            f"yolov5 output needs at least 6 columns (4 box, objectness, classes), got shape {output.shape}"
        )
    # score = obj * cls <= obj, so anchors with low objectness can never pass.
    pred = pred[pred[:, 4] >= config.conf_threshold]
    if len(pred) == 0:
        return Detections.empty(labels)
    class_scores = pred[:, 5:] * pred[:, 4:5]
    class_ids = class_scores.argmax(axis=1)
    scores = np.take_along_axis(class_scores, class_ids[:, None], axis=1)[:, 0]
    passed = scores >= config.conf_threshold
    boxes = cxcywh_to_xyxy(pred[passed, :4])
    return _finish(boxes, scores[passed].astype(np.float32), class_ids[passed], transform, config, labels,
                   suppress=True)


def decode_nms_single(
    output: np.ndarray, transform: Transform, config: DetectConfig, labels: tuple[str, ...] = ()
) -> Detections:
    """Decode NMS-in-graph output ``[1, N, 6]`` rows of x1, y1, x2, y2, score, class (no NMS applied here)."""
    found = end2end_candidates(output, config.conf_threshold)
    return _finish(found.boxes, found.scores, found.class_ids, transform, config, labels, suppress=False)


def decode_rtdetr(
    output: np.ndarray, transform: Transform, config: DetectConfig, labels: tuple[str, ...] = ()
) -> Detections:
    """Decode Ultralytics RT-DETR: boxes are cx, cy, w, h normalised to the model input (no NMS applied here).

    ``[1, N, 6]`` rows end in score, class; wider rows end in one score per class. With exactly two classes
    the two forms have the same shape; ``[1, N, 6]`` is read as score, class, what Ultralytics 8.4 exports.
    """
    rows = first_image(output, "rtdetr", 3)
    if rows.shape[1] < 5:
        raise ModelError(f"rtdetr output needs 4 box columns and scores, got shape {output.shape}")
    if rows.shape[1] == 6:
        scores, class_ids = rows[:, 4], np.rint(rows[:, 5]).astype(np.int64)
    else:
        class_ids = rows[:, 4:].argmax(axis=1)
        scores = np.take_along_axis(rows[:, 4:], class_ids[:, None], axis=1)[:, 0]
    passed = scores >= config.conf_threshold
    boxes = cxcywh_to_xyxy(rows[passed, :4]) * _input_extent(transform)
    return _finish(boxes, scores[passed].astype(np.float32), class_ids[passed], transform, config, labels,
                   suppress=False)


def _input_extent(transform: Transform) -> np.ndarray:
    """Model-input width and height as an xyxy multiplier, from the geometry that filled the input.

    Exact for stretch and no resize; a letterbox with an odd padding total is one pixel short of the input.
    """
    width = transform.source_width * transform.scale_x + 2 * transform.pad_x
    height = transform.source_height * transform.scale_y + 2 * transform.pad_y
    return np.array([width, height, width, height], dtype=np.float32)


def decode_nms_split(
    num_dets: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    transform: Transform,
    config: DetectConfig,
    labels: tuple[str, ...] = (),
) -> Detections:
    """Decode four NMS-in-graph outputs; only the first ``num_dets`` entries are valid (no NMS here)."""
    boxes = first_image(boxes, "nms", 3)
    scores, classes = _first_row(scores, "scores"), _first_row(classes, "classes")
    if np.size(num_dets) < 1:
        raise ModelError(f"nms num_dets output is empty (shape {np.shape(num_dets)})")
    n = min(max(int(np.asarray(num_dets).reshape(-1)[0]), 0), len(boxes), len(scores), len(classes))
    scores = scores[:n].astype(np.float32)
    passed = scores >= config.conf_threshold
    return _finish(
        boxes[:n][passed].astype(np.float32), scores[passed], np.rint(classes[:n][passed]).astype(np.int64),
        transform, config, labels, suppress=False,
    )


def _first_row(values: np.ndarray, role: str) -> np.ndarray:
    """Batch 0 of a ``[1, N]`` output (a ``[N]`` one is taken whole)."""
    if values.ndim == 1:
        return values
    if values.ndim != 2 or values.shape[0] < 1:
        raise ModelError(f"nms {role} output must be [1, N], got shape {values.shape}")
    return values[0]


def static_dim(d: Dim) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def describe_outputs(outputs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{s.name} {s.shape_str}" for s in outputs) or "(no outputs)"


def is_ultralytics_end2end(metadata: dict[str, str]) -> bool:
    return metadata.get("end2end", "").strip().lower() == "true"


def is_ultralytics_nms_export(metadata: dict[str, str]) -> bool:
    """Exported with ``nms=True`` (an ONNX NonMaxSuppression in the graph): Ultralytics ``args`` say so."""
    return bool(_NMS_IN_ARGS.search(metadata.get("args", "")))


def _layout_from_metadata(outputs: Sequence[TensorSpec], metadata: dict[str, str]) -> Layout | None:
    """The layout Ultralytics metadata settles: RT-DETR's head; an end-to-end or ``nms=True`` export whose
    single output has the ``[1, N, 6]`` rows (other end-to-end heads, e.g. pose, are left to the shapes); a
    plain ``Detect`` head."""
    if is_rtdetr(metadata):
        return "rtdetr"
    if len(outputs) != 1 or len(outputs[0].shape) != 3:
        return None
    if is_ultralytics_end2end(metadata) or is_ultralytics_nms_export(metadata):
        return "nms" if static_dim(outputs[0].shape[2]) in (6, None) else None
    if metadata.get("task") == "detect" and metadata.get("head") == ULTRALYTICS_DETECT_HEAD:
        return "yolov8"  # a one-to-many Detect head: [1, 4+C, A], even when a dynamic export names its dims
    return None


def split_nms_roles(outputs: Sequence[TensorSpec]) -> tuple[int, int, int, int] | None:
    """Indices of (num_dets, boxes, scores, classes) among four outputs, or None when they do not fit.

    Names decide when each output's name contains exactly one of num/box/score/class; otherwise
    shapes do: num_dets has one element, boxes end in 4, and of the two ``[1, N]`` outputs an
    integer one is the classes, else they are taken in the conventional order scores, classes.
    """
    if len(outputs) != 4:
        return None
    keywords = (("num",), ("box",), ("score",), ("class", "label"))
    by_name: list[int | None] = [None] * 4
    for i, spec in enumerate(outputs):
        name = spec.name.lower()
        roles = [r for r, words in enumerate(keywords) if any(w in name for w in words)]
        if len(roles) == 1 and by_name[roles[0]] is None:
            by_name[roles[0]] = i
    if None not in by_name and _fits_roles(outputs, by_name):  # type: ignore[arg-type]
        return tuple(by_name)  # type: ignore[return-value]

    def size_one(s: TensorSpec) -> bool:
        return all(static_dim(d) == 1 for d in s.shape)

    nums = [i for i, s in enumerate(outputs) if size_one(s)]
    box_idx = [i for i, s in enumerate(outputs) if len(s.shape) == 3 and static_dim(s.shape[2]) == 4]
    if len(nums) != 1 or len(box_idx) != 1:
        return None
    rest = [i for i in range(4) if i not in (nums[0], box_idx[0])]
    if any(len(outputs[i].shape) not in (1, 2) for i in rest):
        return None
    scores, classes = rest
    def integer(i: int) -> bool:
        return np.issubdtype(outputs[i].dtype, np.integer)

    if integer(scores) and not integer(classes):
        scores, classes = classes, scores
    return nums[0], box_idx[0], scores, classes


def _fits_roles(outputs: Sequence[TensorSpec], roles: list[int]) -> bool:
    num, boxes, scores, classes = (outputs[i] for i in roles)
    box_last = boxes.shape[-1] if boxes.shape else None
    return (
        len(boxes.shape) == 3 and static_dim(box_last) in (4, None)
        and all(static_dim(d) in (1, None) for d in num.shape)
        and len(scores.shape) in (1, 2) and len(classes.shape) in (1, 2)
    )


def detect_layout(outputs: Sequence[TensorSpec], metadata: dict[str, str] | None = None) -> Layout:
    """The layout of a detection model from metadata (``lepton.layout``, Ultralytics ``head``, ``end2end``,
    ``args`` ``nms``), else shapes.

    Raises ModelError naming the shapes found when no layout fits or several could.
    """
    metadata = metadata or {}
    named = metadata.get(LAYOUT_KEY)
    if named is not None:
        if named not in LAYOUTS:
            raise ModelError(
                f"model metadata {LAYOUT_KEY}={named!r} is not a known layout; use one of "
                f"{', '.join(LAYOUTS)} or set postprocess.layout"
            )
        return named  # type: ignore[return-value]
    from_metadata = _layout_from_metadata(outputs, metadata)
    if from_metadata is not None:
        return from_metadata
    layout, reason = _layout_fromdescribe_outputs(outputs, metadata)
    if layout is not None:
        return layout
    raise ModelError(
        f"cannot decode detections from outputs {describe_outputs(outputs)}: {reason}. "
        f"Supported layouts: {_SUPPORTED}. "
        "Set postprocess.layout (yolov8, yolov5, nms or rtdetr) in the config, or postprocess.type: raw."
    )


def looks_like_detection(outputs: Sequence[TensorSpec], metadata: dict[str, str] | None = None) -> bool:
    """True when the outputs match a detection layout, even one that needs postprocess.layout to choose."""
    if LAYOUT_KEY in (metadata or {}) or _layout_from_metadata(outputs, metadata or {}) is not None:
        return True
    layout, _ = _layout_fromdescribe_outputs(outputs, metadata or {})
    return layout is not None or (
        len(outputs) == 1 and len(outputs[0].shape) == 3 and static_dim(outputs[0].shape[2]) == 6
    )


def _layout_fromdescribe_outputs(outputs: Sequence[TensorSpec], metadata: dict[str, str]) -> tuple[Layout | None, str]:
    """The layout the shapes show, or None and the reason none was chosen."""
    unknown = "no supported detection layout matches"
    if len(outputs) == 4:
        return ("nms", "") if split_nms_roles(outputs) is not None else (None, unknown)
    if len(outputs) != 1 or len(outputs[0].shape) != 3:
        return None, unknown
    batch, d1, d2 = (static_dim(d) for d in outputs[0].shape)
    if batch not in (1, None):
        return None, f"batch size {batch} is not supported (export the model with batch 1)"
    if is_ultralytics_end2end(metadata):
        return ("nms", "") if d2 in (6, None) else (None, unknown)
    if d2 == 6 and d1 != 6:
        return None, "[1, N, 6] is both the end2end NMS layout and YOLOv5 with one class"
    if d1 is not None and d1 >= 5 and (d2 is None or d1 < d2):
        return "yolov8", ""
    if d2 is not None and d2 >= 7 and (d1 is None or d1 > d2):
        return "yolov5", ""
    return None, unknown


def _check_layout(layout: Layout, outputs: Sequence[TensorSpec], origin: str) -> None:
    """Fail early, naming the shapes, when a configured layout cannot fit the outputs."""
    if layout == "nms" and len(outputs) == 4:
        if split_nms_roles(outputs) is None:
            raise ModelError(
                f"{origin} is nms but the four outputs {describe_outputs(outputs)} are not num_dets [1, 1], "
                "boxes [1, N, 4], scores [1, N] and classes [1, N]"
            )
        return
    if len(outputs) != 1 or len(outputs[0].shape) != 3:
        raise ModelError(
            f"{origin} is {layout} but the model has outputs {describe_outputs(outputs)}; "
            f"{layout} needs a single rank-3 output. Supported layouts: {_SUPPORTED}"
        )
    _, d1, d2 = (static_dim(d) for d in outputs[0].shape)
    got, need, what = {
        "yolov8": (d1, 5, "4+C rows"),
        "rtdetr": (d2, 5, "at least 5 columns"),
    }.get(layout, (d2, 6, "at least 6 columns"))
    if got is not None and got < need:
        raise ModelError(f"{origin} is {layout} but output {describe_outputs(outputs)} does not have {what}")


class DetectionPostprocessor:
    """Turns the outputs of a detection model into :class:`Detections` in source pixels."""

    def __init__(
        self,
        config: DetectConfig,
        outputs: Sequence[TensorSpec],
        metadata: dict[str, str] | None = None,
        labels: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.labels = labels
        if config.layout == "auto":
            self.layout: Layout = detect_layout(outputs, metadata)
            origin = "the detected layout"
            if metadata and LAYOUT_KEY in metadata:
                origin = f"model metadata {LAYOUT_KEY}"
            elif metadata and _layout_from_metadata(outputs, metadata) is not None:
                origin = "the model's Ultralytics metadata"
        else:
            self.layout, origin = config.layout, "postprocess.layout"
        _check_layout(self.layout, outputs, origin)
        self._nms_roles = split_nms_roles(outputs) if self.layout == "nms" and len(outputs) == 4 else None
        self._warn_label_count(outputs)

    def _warn_label_count(self, outputs: Sequence[TensorSpec]) -> None:
        if not self.labels or len(outputs) != 1 or len(outputs[0].shape) != 3:
            return
        _, d1, d2 = (static_dim(d) for d in outputs[0].shape)
        classes = {"yolov8": d1 and d1 - 4, "yolov5": d2 and d2 - 5}.get(self.layout)
        if classes and classes != len(self.labels):
            log.warning(
                "%d labels but the %s output %s has %d classes; check model.labels",
                len(self.labels), self.layout, describe_outputs(outputs), classes,
            )

    def __call__(self, outputs: list[np.ndarray], transform: Transform) -> Detections:
        cfg, labels = self.config, self.labels
        if self._nms_roles is not None:
            num, boxes, scores, classes = (outputs[i] for i in self._nms_roles)
            return decode_nms_split(num, boxes, scores, classes, transform, cfg, labels)
        if self.layout == "yolov8":
            return decode_yolov8(outputs[0], transform, cfg, labels)
        if self.layout == "yolov5":
            return decode_yolov5(outputs[0], transform, cfg, labels)
        if self.layout == "rtdetr":
            return decode_rtdetr(outputs[0], transform, cfg, labels)
        return decode_nms_single(outputs[0], transform, cfg, labels)
