"""Frame to tensor: resize or letterbox, colour order, normalisation, layout and dtype, into reused buffers.

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


def default_resize(config: PreprocessConfig, metadata: Mapping[str, str] | None) -> PreprocessConfig:
    """``config`` with ``resize: stretch`` when it leaves resize unset and the model is RT-DETR, as Ultralytics
    feeds it; an explicit ``resize`` always wins."""
    if "resize" in config.model_fields_set or not is_rtdetr(metadata):
        return config
    return config.model_copy(update={"resize": "stretch"})


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


class Preprocessor:
    """Turns BGR uint8 frames into the tensor one model input expects.

    Call it with a frame and a buffer from :meth:`new_buffer`; it fills the buffer and returns the
    :class:`Transform`. No allocation happens per frame once the frame size is stable. The input size is
    resolved by :func:`~lepton_edge.runtime.input_size.resolve_input_size` (``config.size``, the model's fixed
    dimensions, then ``metadata``). An unset ``resize`` is ``stretch`` for Ultralytics RT-DETR models.
    """

    def __init__(self, spec: TensorSpec, config: PreprocessConfig | None = None, *,
                 metadata: Mapping[str, str] | None = None) -> None:
        cfg = default_resize(config or PreprocessConfig(), metadata)
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

    def new_buffer(self) -> np.ndarray:
        """A tensor buffer of the model input's shape and dtype, to be reused across frames."""
        return np.zeros(self.shape, self.dtype)

    def _set_geometry(self, w: int, h: int) -> None:
        cfg = self.config
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
        else:
            if (w, h) != (self.width, self.height):
                raise ModelError(
                    f"preprocess.resize is 'none' but the frame is {w}x{h} and the model wants "
                    f"{self.width}x{self.height}"
                )
            self._transform = Transform.identity(w, h)
            self._roi = (0, 0, w, h)
        self._geometry = (w, h)

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
        if (nw, nh) == (w, h) and (left, top) == (0, 0):
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
