"""The size of a model's image input, resolved in one place for the preprocessor, the buffers and warm-up.

Order, per spatial dimension: the size the user gives (``preprocess.size``), a fixed dimension of the model
(a static model is never resized to anything else), then the metadata: the size a built artifact records
(``lepton.artifact.preprocess``, added by ``engines.artifacts.open_artifact``: what the engine was calibrated
and built for), the project's own ``lepton.preprocess`` JSON (``size`` as ``[width, height]``), then
Ultralytics' ``imgsz`` (``"[height, width]"`` or ``"640"``). A dynamic batch stays dynamic: warm-up and
inference feed batch 1.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from lepton_edge.config.pipeline import MAX_IMAGE_SIDE
from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.core.tensors import TensorSpec

log = logging.getLogger(__name__)

ARTIFACT_PREPROCESS_KEY = "lepton.artifact.preprocess"
"""Backend metadata key holding the preprocessing (JSON, PreprocessConfig fields with ``size``) an artifact was
calibrated and built for; it ranks below the user's config and above the model's own metadata."""

_IMGSZ = re.compile(r"^\s*[\[(]?\s*(\d+)\s*(?:,\s*(\d+)\s*)?[\])]?\s*$")


class MissingInputSize(ConfigError):
    """A dynamic height or width with no size anywhere: not in the config, the artifact or the model's metadata."""


@dataclass(frozen=True, slots=True)
class InputSize:
    """Width and height an image input is fed at, and where they came from (for messages)."""

    width: int
    height: int
    source: str


def _fixed(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def image_layout(spec: TensorSpec) -> str:
    """``nchw`` or ``nhwc`` from a 4-D image input's channel axis; ModelError when it cannot be told."""
    shape = spec.shape
    if len(shape) != 4:
        raise ModelError(f"image input {spec.name!r} must be 4-D (NCHW or NHWC), got {spec.shape_str}")
    if shape[1] in (1, 3):
        return "nchw"
    if shape[3] in (1, 3):
        return "nhwc"
    raise ModelError(f"cannot tell layout of input {spec.name!r} {spec.shape_str}; set preprocess.layout")


def image_axes(layout: str) -> tuple[int, int, int]:
    """(channel, height, width) axes of a 4-D tensor in ``layout``."""
    return (1, 2, 3) if layout == "nchw" else (3, 1, 2)


def _side(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_IMAGE_SIDE else None


def _lepton_size(raw: str) -> tuple[int, int] | None:
    try:
        hints = json.loads(raw)
    except ValueError:
        return None  # preprocess_from_metadata already warns about unreadable hints
    size = hints.get("size") if isinstance(hints, dict) else None
    if isinstance(size, list | tuple) and len(size) == 2:
        width, height = _side(size[0]), _side(size[1])
        if width and height:
            return width, height
    return None


def _ultralytics_imgsz(raw: str) -> tuple[int, int] | None:
    match = _IMGSZ.match(raw)
    if match is None:
        return None
    height = _side(int(match[1]))
    width = _side(int(match[2] or match[1]))
    return (width, height) if width and height else None


def size_from_metadata(metadata: Mapping[str, str] | None) -> tuple[tuple[int, int], str] | None:
    """``((width, height), key)`` from the model's metadata, or None when it gives no usable size."""
    metadata = metadata or {}
    for key in (ARTIFACT_PREPROCESS_KEY, "lepton.preprocess"):
        raw = metadata.get(key)
        if raw and (size := _lepton_size(raw)):
            return size, key
    raw = metadata.get("imgsz")
    if raw:
        size = _ultralytics_imgsz(raw)
        if size:
            return size, "imgsz"
        log.warning("ignoring the model's imgsz metadata %r: not a size like [640, 640] within 1..%d",
                    raw[:100], MAX_IMAGE_SIDE)
    return None


def _stride(metadata: Mapping[str, str] | None) -> int | None:
    raw = (metadata or {}).get("stride", "").strip()
    return int(raw) if raw.isdigit() and 0 < int(raw) <= MAX_IMAGE_SIDE else None


def resolve_input_size(spec: TensorSpec, *, size: tuple[int, int] | None = None,
                       metadata: Mapping[str, str] | None = None, layout: str | None = None) -> InputSize:
    """The width and height ``spec`` is fed at: ``size`` (the user's ``preprocess.size``), else the model's fixed
    dimensions, its dynamic ones from the metadata.

    Raises ModelError when ``size`` contradicts a fixed dimension, ConfigError when a dynamic dimension has no size
    anywhere or the size is not a multiple of the model's stride (Ultralytics metadata).
    """
    _, h_axis, w_axis = image_axes(layout or image_layout(spec))
    fixed_h, fixed_w = _fixed(spec.shape[h_axis]), _fixed(spec.shape[w_axis])
    if size is not None:
        width, height = size
        if (fixed_w or width) != width or (fixed_h or height) != height:
            raise ModelError(f"preprocess.size {width}x{height} does not match input {spec.name!r} {spec.shape_str}")
        resolved = InputSize(width, height, "preprocess.size")
    elif fixed_h and fixed_w:
        return InputSize(fixed_w, fixed_h, "model")
    else:
        found = size_from_metadata(metadata)
        if found is None:
            raise MissingInputSize(
                f"input {spec.name!r} has dynamic spatial size {spec.shape_str} and the model's metadata gives no "
                "size (no imgsz or lepton.preprocess size); set preprocess.size: [width, height] in the config, or "
                "pass --size WIDTHxHEIGHT"
            )
        (width, height), key = found
        where = "the artifact's record" if key == ARTIFACT_PREPROCESS_KEY else f"model metadata {key}"
        resolved = InputSize(fixed_w or width, fixed_h or height, where)
    stride = _stride(metadata)
    dynamic = fixed_h is None or fixed_w is None
    if dynamic and stride and (resolved.width % stride or resolved.height % stride):
        raise ConfigError(
            f"input {spec.name!r} {spec.shape_str}: {resolved.source} {resolved.width}x{resolved.height} is not a "
            f"multiple of the model's stride {stride}; set preprocess.size to multiples of {stride}"
        )
    return resolved


def image_shape(size: InputSize, layout: str, channels: int) -> tuple[int, int, int, int]:
    """The 4-D tensor the pipeline feeds an image input: one frame (batch 1) of ``size`` in ``layout``."""
    if layout == "nchw":
        return (1, channels, size.height, size.width)
    return (1, size.height, size.width, channels)


def feed_shape(spec: TensorSpec, metadata: Mapping[str, str] | None = None) -> tuple[int, ...] | None:
    """The shape to feed ``spec`` when nothing but the model is known (warm-up at load, recorded tensors).

    Static inputs keep their shape. A 4-D image input gets batch 1 and its spatial size from
    :func:`resolve_input_size` (the metadata); None when that gives none (the pipeline, which knows
    ``preprocess.size``, decides). Other dynamic dimensions are 1.
    """
    if spec.is_static:
        return tuple(spec.shape)  # type: ignore[arg-type]
    fallback = tuple(_fixed(d) or 1 for d in spec.shape)
    if len(spec.shape) != 4:
        return fallback
    try:
        layout = image_layout(spec)
    except ModelError:
        return None
    _, h_axis, w_axis = image_axes(layout)
    if _fixed(spec.shape[h_axis]) and _fixed(spec.shape[w_axis]):
        return fallback  # only the batch (or channels) is dynamic
    try:
        size = resolve_input_size(spec, metadata=metadata, layout=layout)
    except ConfigError:
        return None
    shape = list(fallback)
    shape[h_axis], shape[w_axis] = size.height, size.width
    return tuple(shape)
