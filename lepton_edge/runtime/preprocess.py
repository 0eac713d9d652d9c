"""Frame to tensor: resize, letterbox or centre crop, colour order, normalisation, layout and dtype, into
reused buffers.

The :class:`Transform` returned with each tensor maps model-input pixels back to source pixels, so
results are always reported in the coordinates of the frame that was captured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from lepton_edge.config.pipeline import PreprocessConfig
from lepton_edge.core.errors import ModelError
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.input_size import image_axes, image_layout, image_shape, resolve_input_size

RTDETR_HEAD = "RTDETRDecoder"
"""Ultralytics ``head`` metadata of RT-DETR models, which are fed stretched frames, not letterboxed ones."""


def is_rtdetr(metadata: Mapping[str, str] | None) -> bool:
    """True for an Ultralytics RT-DETR export (its ``head`` metadata names the RT-DETR decoder)."""
    return (metadata or {}).get("head", "").strip() == RTDETR_HEAD


def is_ultralytics(metadata: Mapping[str, str] | None) -> bool:
    """True for a model exported by Ultralytics (its ``author`` metadata, or ``imgsz`` next to ``names``)."""
    metadata = metadata or {}
    return metadata.get("author", "").strip() == "Ultralytics" or ("imgsz" in metadata and "names" in metadata)


def is_ultralytics_classifier(metadata: Mapping[str, str] | None) -> bool:
    """True for an Ultralytics classification export (``task: classify`` next to Ultralytics' ``imgsz``)."""
    metadata = metadata or {}
    return metadata.get("task", "").strip() == "classify" and "imgsz" in metadata


def model_defaults(config: PreprocessConfig, metadata: Mapping[str, str] | None) -> PreprocessConfig:
    """``config`` with what the model's exporter feeds it where ``config`` leaves it unset.

    Ultralytics models: bilinear resampling (its letterbox and stretch use it; area resampling moves scores
    enough to change which boxes pass the threshold), ``stretch`` for RT-DETR and ``center-crop`` for
    classifiers. Explicit settings always win.
    """
    updates: dict[str, str] = {}
    if "interpolation" not in config.model_fields_set and is_ultralytics(metadata):
        updates["interpolation"] = "linear"
    if "resize" not in config.model_fields_set:
        if is_ultralytics_classifier(metadata):
            updates["resize"] = "center-crop"
        elif is_rtdetr(metadata):
            updates["resize"] = "stretch"
    return config.model_copy(update=updates) if updates else config


@dataclass(frozen=True, slots=True)
class Transform:
    """Source -> model input geometry: ``input = source * scale + pad``."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    source_width: int
    source_height: int

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map xyxy boxes from model-input pixels to source pixels, clipped to the source image."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, 0::2] = (boxes[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (boxes[:, 1::2] - self.pad_y) / self.scale_y
        np.clip(out[:, 0::2], 0, self.source_width, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.source_height, out=out[:, 1::2])
        return out

    @classmethod
    def identity(cls, width: int, height: int) -> Transform:
        return cls(1.0, 1.0, 0.0, 0.0, width, height)


def cover_size(w: int, h: int, width: int, height: int) -> tuple[int, int]:
    """The size a ``w`` x ``h`` frame is resized to, aspect kept, so it covers ``width`` x ``height``.

    The side that limits is set exactly; the other is truncated to an integer, as torchvision's ``Resize`` does.
    """
    if w * height <= h * width:
        return width, max(height, int(width * h / w))
    return max(width, int(height * w / h)), height


RESAMPLE_BITS = 22
"""Fixed-point precision of the resample weights, Pillow's for 8-bit images (its results are matched exactly)."""


@dataclass(frozen=True, slots=True)
class Taps:
    """An antialiased bilinear (triangle filter) resample along one axis: ``index``/``weight`` ``[taps, n]``,
    the weights in fixed point (``RESAMPLE_BITS``)."""

    index: np.ndarray
    weight: np.ndarray


def triangle_taps(source: int, resized: int, first: int, count: int) -> Taps:
    """Taps of output pixels ``first .. first + count`` of ``source`` resized to ``resized`` pixels.

    The filter Pillow's ``BILINEAR`` uses (what torchvision's ``Resize`` calls on images): a triangle widened by
    the downscale factor, pixel centres at ``+ 0.5``, weights normalised per output pixel then rounded to fixed
    point.
    """
    scale = source / resized
    support = max(scale, 1.0)
    centres = (np.arange(first, first + count) + 0.5) * scale
    lo = np.maximum((centres - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((centres + support + 0.5).astype(np.int64), source)
    index = lo + np.arange(int((hi - lo).max()))[:, None]
    weight = np.clip(1.0 - np.abs((index - centres + 0.5) * (1.0 / support)), 0.0, None) * (index < hi)
    weight /= weight.sum(axis=0, keepdims=True)
    fixed = np.floor(0.5 + weight * (1 << RESAMPLE_BITS)).astype(np.int32)
    return Taps(np.minimum(index, source - 1), fixed)


class AntialiasedCrop:
    """Resize a frame to ``resized`` (w, h) with Pillow's antialiased bilinear filter and keep ``crop``
    (left, top, width, height) of it, into reused buffers: only the kept pixels are computed.

    Like Pillow, the horizontal pass comes first and is rounded to uint8 before the vertical one.
    """

    def __init__(self, source: tuple[int, int], resized: tuple[int, int], crop: tuple[int, int, int, int]) -> None:
        (w, h), (nw, nh), (left, top, width, height) = source, resized, crop
        self.columns = triangle_taps(w, nw, left, width)
        self.rows = triangle_taps(h, nh, top, height)
        self._gather_x = np.empty((h, width, 3), np.uint8)
        self._sum_x = np.empty((h, width, 3), np.int32)
        self._term_x = np.empty((h, width, 3), np.int32)
        self._narrow = np.empty((h, width, 3), np.uint8)
        self._gather_y = np.empty((height, width, 3), np.uint8)
        self._sum_y = np.empty((height, width, 3), np.int32)
        self._term_y = np.empty((height, width, 3), np.int32)
        self.out = np.empty((height, width, 3), np.uint8)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self._pass(image, self.columns, 1, self._gather_x, self._term_x, self._sum_x, self._narrow)
        self._pass(self._narrow, self.rows, 0, self._gather_y, self._term_y, self._sum_y, self.out)
        return self.out

    @staticmethod
    def _pass(src: np.ndarray, taps: Taps, axis: int, gather: np.ndarray, term: np.ndarray, total: np.ndarray,
              out: np.ndarray) -> None:
        shape = (1, -1, 1) if axis == 1 else (-1, 1, 1)
        total.fill(1 << (RESAMPLE_BITS - 1))  # rounds half up when shifted below
        for index, weight in zip(taps.index, taps.weight, strict=True):
            np.take(src, index, axis=axis, out=gather)
            np.multiply(gather, weight.reshape(shape), out=term)
            total += term
        total >>= RESAMPLE_BITS
        np.clip(total, 0, 255, out=total)
        np.copyto(out, total, casting="unsafe")


class Preprocessor:
    """Turns BGR uint8 frames into the tensor one model input expects.

    Call it with a frame and a buffer from :meth:`new_buffer`; it fills the buffer and returns the
    :class:`Transform`. No allocation happens per frame once the frame size is stable. The input size is
    resolved by :func:`~lepton_edge.runtime.input_size.resolve_input_size` (``config.size``, the model's fixed
    dimensions, then ``metadata``). Unset settings follow the model's exporter (:func:`model_defaults`).
    """

    def __init__(self, spec: TensorSpec, config: PreprocessConfig | None = None, *,
                 metadata: Mapping[str, str] | None = None) -> None:
        cfg = model_defaults(config or PreprocessConfig(), metadata)
        self.config = cfg
        self.layout = cfg.layout or image_layout(spec)
        self.dtype = np.dtype(cfg.dtype) if cfg.dtype else spec.dtype
        if self.dtype not in (np.float32, np.float16, np.uint8):
            raise ModelError(f"input {spec.name!r} has dtype {spec.dtype}; images need float32, float16 or uint8")
        c_axis = image_axes(self.layout)[0]
        self.channels = 1 if cfg.color == "gray" else 3
        model_c = spec.shape[c_axis] if len(spec.shape) == 4 else None
        if isinstance(model_c, int) and model_c != self.channels:
            raise ModelError(
                f"input {spec.name!r} {spec.shape_str} has {model_c} channel(s) but preprocess.color is "
                f"{cfg.color!r} ({self.channels}); fix preprocess.color or preprocess.layout"
            )
        self.size = resolve_input_size(spec, size=cfg.size, metadata=metadata, layout=self.layout)
        self.width, self.height = self.size.width, self.size.height
        self.shape = image_shape(self.size, self.layout, self.channels)
        mean = np.broadcast_to(np.asarray(cfg.mean, np.float64), (3,))
        std = np.broadcast_to(np.asarray(cfg.std, np.float64), (3,))
        # (x * scale - mean) / std  ==  x * gain - offset, per channel (RGB order of the config).
        self._gain = (cfg.scale / std).astype(np.float32)
        self._offset = (mean / std).astype(np.float32)
        self._identity_norm = bool(np.all(self._gain == 1) and np.all(self._offset == 0))
        self._canvas = np.full((self.height, self.width, 3), cfg.pad_value, np.uint8)
        self._geometry: tuple[int, int] | None = None
        self._transform: Transform | None = None
        self._roi: tuple[int, int, int, int] = (0, 0, self.width, self.height)
        self._crop: AntialiasedCrop | None = None

    def new_buffer(self) -> np.ndarray:
        """A tensor buffer of the model input's shape and dtype, to be reused across frames."""
        return np.zeros(self.shape, self.dtype)

    def _set_geometry(self, w: int, h: int) -> None:
        cfg = self.config
        self._crop = None
        if cfg.resize == "letterbox":
            r = min(self.width / w, self.height / h)
            nw, nh = round(w * r), round(h * r)
            left, top = (self.width - nw) // 2, (self.height - nh) // 2
            self._transform = Transform(nw / w, nh / h, float(left), float(top), w, h)
            self._roi = (left, top, nw, nh)
            self._canvas[:] = cfg.pad_value
        elif cfg.resize == "stretch":
            self._transform = Transform(self.width / w, self.height / h, 0.0, 0.0, w, h)
            self._roi = (0, 0, self.width, self.height)
        elif cfg.resize == "center-crop":
            self._set_center_crop(w, h)
        else:
            if (w, h) != (self.width, self.height):
                raise ModelError(
                    f"preprocess.resize is 'none' but the frame is {w}x{h} and the model wants "
                    f"{self.width}x{self.height}"
                )
            self._transform = Transform.identity(w, h)
            self._roi = (0, 0, w, h)
        self._geometry = (w, h)

    def _set_center_crop(self, w: int, h: int) -> None:
        """Resize so the frame covers the input (the short side to the input's), then take the centre.

        Ultralytics' classification transform for a square input: torchvision ``Resize(imgsz)`` (long side
        truncated to an integer, Pillow's antialiased bilinear filter) then ``CenterCrop(imgsz)`` (offset rounded
        half to even).
        """
        nw, nh = cover_size(w, h, self.width, self.height)
        left, top = round((nw - self.width) / 2), round((nh - self.height) / 2)
        self._transform = Transform(nw / w, nh / h, float(-left), float(-top), w, h)
        self._roi = (0, 0, self.width, self.height)
        self._crop = AntialiasedCrop((w, h), (nw, nh), (left, top, self.width, self.height))

    def __call__(self, image: np.ndarray, out: np.ndarray) -> Transform:
        import cv2

        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        if self._geometry != (w, h):
            self._set_geometry(w, h)
        left, top, nw, nh = self._roi
        if self._crop is not None:
            canvas = self._crop(image)
        elif (nw, nh) == (w, h) and (left, top) == (0, 0):
            canvas = image
        else:
            roi = self._canvas[top : top + nh, left : left + nw]
            interp = cv2.INTER_AREA if self._shrinks_with_area(nw, w) else cv2.INTER_LINEAR
            resized = cv2.resize(image, (nw, nh), dst=roi, interpolation=interp)
            if resized is not roi and not np.shares_memory(resized, roi):
                roi[...] = resized
            canvas = self._canvas
        self._write_tensor(canvas, out)
        assert self._transform is not None
        return self._transform

    def _shrinks_with_area(self, new_width: int, width: int) -> bool:
        """Area resampling: always for ``interpolation: area``, when shrinking for ``auto``, never for linear."""
        mode = self.config.interpolation
        return mode == "area" or (mode == "auto" and new_width < width)

    def _write_tensor(self, canvas: np.ndarray, out: np.ndarray) -> None:
        import cv2

        color = self.config.color
        if color == "gray":
            gray = cv2.cvtColor(canvas, cv2.COLOR_BGR2GRAY)
            dst = out[0, 0] if self.layout == "nchw" else out[0, :, :, 0]
            self._normalise(gray, dst, 0)
            return
        # Config channel i (in the model's colour order) comes from BGR channel src[i].
        src = (2, 1, 0) if color == "rgb" else (0, 1, 2)
        if self.layout == "nchw":
            for i, s in enumerate(src):
                self._normalise(canvas[:, :, s], out[0, i], i)
        else:
            ordered = canvas[:, :, ::-1] if color == "rgb" else canvas
            if self.dtype == np.uint8 or self._identity_norm:
                np.copyto(out[0], ordered, casting="unsafe")
            else:
                np.multiply(ordered, self._gain, out=out[0], casting="unsafe")
                out[0] -= self._offset

    def _normalise(self, plane: np.ndarray, dst: np.ndarray, channel: int) -> None:
        if self.dtype == np.uint8 or self._identity_norm:
            np.copyto(dst, plane, casting="unsafe")
            return
        np.multiply(plane, self._gain[channel], out=dst, casting="unsafe")
        if self._offset[channel]:
            dst -= self._offset[channel]
