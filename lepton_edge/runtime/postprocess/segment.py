"""Instance segmentation: Ultralytics -seg heads (YOLOv8/11 ``[1, 4+C+M, A]``, YOLO26 end-to-end ``[1, N, 6+M]``)
with a prototype output ``[1, M, H, W]`` at a fraction (1/4) of the model input.

A detection's mask is its M coefficients times the prototypes (logits), resized bilinearly to the model input,
cropped to its box there, and thresholded at the logit of ``mask_threshold`` (0 for 0.5): what Ultralytics
8.4's ``predict`` gives as ``Results.masks`` (checked pixel for pixel on its committed references). The letterbox
is then undone as Ultralytics' ``scale_masks`` does: the image part of the binary input mask resized to the source
(bilinear) and kept above 0.5. (Resizing the logits instead gives smoother edges but, on fragmented masks, moves
a tenth of the pixels away from what Ultralytics reports.)

Each mask is computed only over the input pixels of its box and the source pixels they reach, and stored as that
crop (:class:`Masks`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lepton_edge.config.pipeline import SegmentConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.results import Detections, Masks
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.postprocess.detect import cxcywh_to_xyxy, first_image, keep_boxes, static_dim
from lepton_edge.runtime.postprocess.heads import check_head, find_outputs, head_candidates, head_layout
from lepton_edge.runtime.preprocess import Transform

_EXPECTED = "a box output [1, 4+C+M, A] or [1, N, 6+M] and a prototype output [1, M, H, W]"


@dataclass(frozen=True, slots=True)
class Taps:
    """Bilinear resampling along one axis: output pixel ``j`` is ``(1 - frac[j]) * in[low[j]] + frac[j] *
    in[high[j]]`` (half-pixel centres, edges clamped: OpenCV's ``INTER_LINEAR``, torch's ``align_corners=False``
    without antialiasing)."""

    low: np.ndarray
    high: np.ndarray
    frac: np.ndarray

    @classmethod
    def linear(cls, size_out: int, size_in: int, start: int = 0) -> Taps:
        """``size_in`` pixels from ``start`` resized to ``size_out``; indices include ``start``."""
        coords = np.clip((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0, size_in - 1)
        low = np.floor(coords).astype(np.int64)
        frac = (coords - low).astype(np.float32)
        return cls(low + start, np.minimum(low + 1, size_in - 1) + start, frac)

    def apply(self, values: np.ndarray, axis: int) -> np.ndarray:
        """Resample ``values`` along ``axis`` (0: rows, 1: columns) with these taps."""
        if axis == 0:
            return values[self.low] * (1 - self.frac)[:, None] + values[self.high] * self.frac[:, None]
        return values[:, self.low] * (1 - self.frac) + values[:, self.high] * self.frac

    def reaching(self, first: int, stop: int) -> tuple[int, int]:
        """The output pixels ``[a, b)`` whose taps touch input pixels ``first .. stop - 1``."""
        touches = (self.high >= first) & (self.low < stop)
        hits = np.flatnonzero(touches)
        return (int(hits[0]), int(hits[-1]) + 1) if hits.size else (0, 0)

    def window(self, a: int, b: int, first: int, stop: int) -> Taps:
        """Taps of outputs ``a .. b - 1`` relative to a window of inputs ``first .. stop - 1`` padded by one zero
        pixel each side (index 0 and ``stop - first + 1``): inputs outside the window read zero."""
        def shift(index: np.ndarray) -> np.ndarray:
            return np.clip(index, first - 1, stop) - first + 1

        return Taps(shift(self.low[a:b]), shift(self.high[a:b]), self.frac[a:b])


@dataclass(frozen=True, slots=True)
class Geometry:
    """The resamplings of one frame geometry, per axis: prototypes -> model input, model input -> source."""

    input_rows: Taps
    input_cols: Taps
    source_rows: Taps
    source_cols: Taps
    input_height: int
    input_width: int


@functools.lru_cache(maxsize=16)
def geometry(source: tuple[int, int], image: tuple[int, int, int, int], prototypes: tuple[int, int],
             input_size: tuple[int, int]) -> Geometry:
    """Taps for a ``source`` (w, h) frame letterboxed into ``image`` (left, top, w, h) of an ``input_size`` (w, h)
    model input whose prototypes are ``prototypes`` (w, h)."""
    (sw, sh), (left, top, iw, ih), (pw, ph), (w, h) = source, image, prototypes, input_size
    return Geometry(Taps.linear(h, ph), Taps.linear(w, pw), Taps.linear(sh, ih, top), Taps.linear(sw, iw, left),
                    h, w)


class MaskDecoder:
    """Masks of kept detections, in source pixels, from prototypes and coefficients."""

    def __init__(self, threshold: float, mask_format: str) -> None:
        self.logit_threshold = math.log(threshold / (1.0 - threshold))
        self.format = mask_format

    def __call__(self, protos: np.ndarray, coefficients: np.ndarray, boxes: np.ndarray, transform: Transform) -> Masks:
        """``protos`` ``(M, H, W)``, ``coefficients`` ``(N, M)``, ``boxes`` ``(N, 4)`` xyxy in input pixels."""
        m, ph, pw = protos.shape
        geo = _geometry(transform, ph, pw)
        logits = (coefficients.astype(np.float32) @ protos.reshape(m, -1).astype(np.float32)).reshape(-1, ph, pw)
        crops, origins = [], []
        for logit, box in zip(logits, boxes, strict=True):
            crop, origin = self._one(logit - np.float32(self.logit_threshold), box, geo)
            crops.append(crop)
            origins.append(origin)
        corners = np.asarray(origins, dtype=np.int64).reshape(-1, 2)
        polygons = None
        if self.format == "polygon":
            polygons = tuple(mask_polygons(c, o) for c, o in zip(crops, corners, strict=True))
        return Masks(tuple(crops), corners, transform.source_height, transform.source_width, self.format,  # type: ignore[arg-type]
                     polygons)

    @staticmethod
    def _one(logit: np.ndarray, box: np.ndarray, geo: Geometry) -> tuple[np.ndarray, tuple[int, int]]:
        """One mask: the input pixels ``x1 <= x < x2``, ``y1 <= y < y2`` of the box (Ultralytics' crop), resized
        to the source pixels they reach. Empty when the box holds no whole pixel."""
        x0, y0 = (max(0, math.ceil(float(v))) for v in box[:2])
        x1 = min(geo.input_width, math.ceil(float(box[2])))
        y1 = min(geo.input_height, math.ceil(float(box[3])))
        r0, r1 = geo.source_rows.reaching(y0, y1)
        c0, c1 = geo.source_cols.reaching(x0, x1)
        if x1 <= x0 or y1 <= y0 or r1 <= r0 or c1 <= c0:
            return np.zeros((0, 0), dtype=bool), (0, 0)
        rows = Taps(geo.input_rows.low[y0:y1], geo.input_rows.high[y0:y1], geo.input_rows.frac[y0:y1])
        cols = Taps(geo.input_cols.low[x0:x1], geo.input_cols.high[x0:x1], geo.input_cols.frac[x0:x1])
        inside = cols.apply(rows.apply(logit, 0), 1) > 0  # the box's input pixels, thresholded
        padded = np.pad(inside.astype(np.float32), 1)  # nothing around: the crop
        to_rows = geo.source_rows.window(r0, r1, y0, y1)
        values = geo.source_cols.window(c0, c1, x0, x1).apply(to_rows.apply(padded, 0), 1)
        return values > 0.5, (c0, r0)


def _geometry(transform: Transform, ph: int, pw: int) -> Geometry:
    """The geometry of ``transform`` for prototypes ``ph`` x ``pw``. The model input is the prototypes times their
    stride (4 for Ultralytics), the stride read from the letterbox (which may be a pixel short of the input)."""
    extent_w = transform.source_width * transform.scale_x + 2 * transform.pad_x
    extent_h = transform.source_height * transform.scale_y + 2 * transform.pad_y
    input_h, input_w = ph * max(1, round(extent_h / ph)), pw * max(1, round(extent_w / pw))
    left, top = max(0, round(transform.pad_x)), max(0, round(transform.pad_y))
    image_w = min(round(transform.source_width * transform.scale_x), input_w - left)
    image_h = min(round(transform.source_height * transform.scale_y), input_h - top)
    if image_w < 1 or image_h < 1:
        raise ModelError(f"segment: the image does not cover the {input_w}x{input_h} model input ({transform})")
    return geometry((transform.source_width, transform.source_height), (left, top, image_w, image_h), (pw, ph),
                    (input_w, input_h))


def mask_polygons(crop: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, ...]:
    """The outer contours of a mask crop as ``(P, 2)`` float32 x, y arrays in source pixels (OpenCV)."""
    import cv2

    if crop.size == 0 or not crop.any():
        return ()
    contours, _ = cv2.findContours(crop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return tuple(c.reshape(-1, 2).astype(np.float32) + origin.astype(np.float32) for c in contours)


class SegmentationPostprocessor:
    """Turns a segmentation model's outputs into :class:`Detections` with :class:`Masks`, in source pixels."""

    def __init__(
        self,
        config: SegmentConfig,
        outputs: Sequence[TensorSpec],
        metadata: dict[str, str] | None = None,
        labels: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.labels = labels
        if len(outputs) != 2:
            raise ModelError(f"segment decoder expects {_EXPECTED}, got outputs "
                             f"{', '.join(f'{s.name} {s.shape_str}' for s in outputs) or '(none)'}")
        self._boxes, self._protos = find_outputs(outputs, (3, 4), "segment", _EXPECTED)
        self.layout = head_layout(config, outputs[self._boxes], metadata or {}, "segment")
        check_head(self.layout, outputs[self._boxes], static_dim(outputs[self._protos].shape[1]), "segment",
                   "mask coefficients")
        self.masks = MaskDecoder(config.mask_threshold, config.mask_format)

    def __call__(self, outputs: list[np.ndarray], transform: Transform) -> Detections:
        protos = first_image(outputs[self._protos], "segment prototypes", 4)
        found = head_candidates(self.layout, outputs[self._boxes], self.config.conf_threshold, protos.shape[0],
                                "segment")
        boxes = cxcywh_to_xyxy(found.boxes) if self.layout == "yolov8" else found.boxes
        keep = keep_boxes(boxes, found.scores, found.class_ids, self.config, suppress=self.layout == "yolov8")
        if keep.size == 0:
            return _empty(self.labels, transform, self.config.mask_format)
        masks = self.masks(protos, found.extras[keep], boxes[keep], transform)
        detections = Detections(transform.to_source(boxes[keep]), found.scores[keep], found.class_ids[keep],
                                self.labels, masks=masks)
        return detections.select(masks.areas() > 0)  # as Ultralytics: a detection without mask pixels is dropped


def _empty(labels: tuple[str, ...], transform: Transform, mask_format: str) -> Detections:
    empty = Detections.empty(labels)
    empty.masks = Masks.empty(transform.source_height, transform.source_width, mask_format)  # type: ignore[arg-type]
    return empty
