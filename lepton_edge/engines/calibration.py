"""INT8 calibration: activation ranges measured on a data set, kept in a versioned table.

``calibrate`` runs the fp32 model over a deterministic sample of a data set (an image folder, a video,
or a .npy/.npz tensor recording), read by the runtime's own sources and turned into tensors by the
runtime's own :class:`~lepton_edge.runtime.preprocess.Preprocessor`, and records a (min, max) range for every
float activation tensor (model inputs and outputs included). Ranges come from the true min/max
(``minmax``), from the clipping threshold that minimises the KL divergence between the activation
histogram and its 128-level quantization (``entropy``, TensorRT's method), or from a percentile of the
absolute values (``percentile``).

The table is then exported as a TensorRT calibration cache (:func:`write_tensorrt_cache`) or baked
into a QDQ ONNX model for onnxruntime (:func:`quantize_qdq`), both from the same ranges.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import inspect
import json
import logging
import math
import os
import re
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lepton_edge import __version__
from lepton_edge.config.base import format_validation_error
from lepton_edge.config.device import load_config
from lepton_edge.config.pipeline import PreprocessConfig, SourceConfig
from lepton_edge.core.errors import ConfigError, LeptonError, ModelError, SourceError
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.engines.onnx_tools import inspect_onnx, sha256_file
from lepton_edge.runtime.assembly import preprocess_from_metadata
from lepton_edge.runtime.preprocess import Preprocessor
from lepton_edge.runtime.sources import create_source
from lepton_edge.runtime.sources.images import IMAGE_SUFFIXES
from lepton_edge.runtime.sources.tensors import TENSOR_SUFFIXES, parse_npy_uri

log = logging.getLogger(__name__)

Method = Literal["minmax", "entropy", "percentile"]
METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
FORMAT_VERSION = 1
"""Version of the table's JSON layout; :func:`load_table` refuses any other."""

HISTOGRAM_BINS = 4096
"""Bins of the absolute-value histogram per tensor. Its range doubles (merging bin pairs) when a larger
value arrives, so at least half the bins always cover the observed range."""
QUANTIZED_BINS = 128
"""Levels of one sign of int8: the entropy search compares the histogram with its 128-level quantization."""
MIN_AMAX = 1e-8
"""Smallest absolute range written to a TensorRT cache (a tensor that was always zero)."""

_LIVE_SCHEMES = re.compile(r"^(rtsps?|https?|v4l2|csi|synthetic|gst):", re.I)


class CalibrationTable(BaseModel):
    """Activation ranges of one model, measured on one data set with one method (a versioned JSON file)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: int = Field(FORMAT_VERSION, description="Layout version of this file.")
    lepton_edge_version: str = Field(description="lepton-edge version that wrote the table.")
    created_at: str = Field(description="When the table was written (ISO 8601, UTC).")
    model_sha256: str = Field(description="Fingerprint of the calibrated model (ModelInfo.sha256).")
    model_name: str = Field(description="File name of the calibrated model.")
    method: Method = Field(description="How ranges were chosen: minmax, entropy or percentile.")
    percentile: float | None = Field(
        None, description="Percentile of absolute values kept (method percentile only)."
    )
    samples: int = Field(ge=1, description="Number of data-set items the model ran on.")
    seed: int = Field(description="Seed of the random sample of data-set items.")
    dataset: str = Field(description="The data set as given: folder, video or .npy/.npz path.")
    dataset_sha256: str = Field(description="sha256 of the data set's manifest (names, sizes, file hashes).")
    preprocess: dict[str, Any] = Field(
        description="Effective preprocessing used (PreprocessConfig); empty when the data set held "
        "model-input tensors that went in unchanged."
    )
    input_shapes: dict[str, list[int]] = Field(description="Shape of each model input during calibration.")
    ranges: dict[str, tuple[float, float]] = Field(
        description="Per tensor name: the (min, max) activation range, float32 values."
    )

    @field_validator("ranges")
    @classmethod
    def _ranges_ordered(cls, ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (lo, hi) in ranges.items():
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise ValueError(f"tensor {name!r}: range ({lo}, {hi}) must be finite with min <= max")
        return ranges


# ---------------------------------------------------------------------------------------------------------
# Data sets


def _dataset_path(dataset: str | Path) -> tuple[str, Path]:
    """(kind, path) of a calibration data set; raises SourceError/ConfigError for unusable ones."""
    text = str(dataset).strip()
    if not text:
        raise ConfigError("the calibration data set is empty; give an image folder, a video or a .npy/.npz file")
    if text.lower().startswith("npy://"):
        text = parse_npy_uri(text)[0]
    elif text.lower().startswith("file://"):
        text = unquote(text[len("file://"):])
    elif _LIVE_SCHEMES.match(text) or text.startswith("/dev/video"):
        raise ConfigError(
            f"{text}: calibration needs a fixed data set that can be hashed and read again (an image folder, a "
            "video file or a .npy/.npz recording), not a live source; record some frames to a folder first"
        )
    path = Path(text).expanduser()
    if not path.exists():
        raise SourceError(f"calibration data set not found: {path}: no such file or folder")
    if path.is_dir():
        return "folder", path
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image", path
    if suffix in TENSOR_SUFFIXES:
        return "tensors", path
    return "video", path


def _folder_images(path: Path) -> list[Path]:
    """The images a folder source reads, in its order (name order; same rule as ImageSource)."""
    files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.name)
    if not files:
        raise SourceError(
            f"{path}: the calibration folder has no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return files


def dataset_manifest(dataset: str | Path) -> dict:
    """What a data set is made of: ``{"kind", "files": [{"name", "size", "sha256"}], "sha256"}``.

    ``kind`` is folder, image, video or tensors; ``files`` lists the files a calibration reads, in
    reading order (a folder's images by name); ``sha256`` hashes that list, so renaming, adding, removing
    or changing any file changes it.
    """
    kind, path = _dataset_path(dataset)
    paths = _folder_images(path) if kind == "folder" else [path]
    files = []
    for p in paths:
        try:
            files.append({"name": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)})
        except OSError as e:
            raise SourceError(f"{p}: cannot read this calibration file: {e}") from None
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":")).encode()
    return {"kind": kind, "files": files, "sha256": hashlib.sha256(canonical).hexdigest()}


def _open_source(uri: str):  # -> Source

    source = create_source(SourceConfig(uri=uri, live=False))
    source.open()
    return source


def _read_all(uri: str) -> Iterator[np.ndarray]:
    source = _open_source(uri)
    try:
        while (item := source.read()) is not None:
            yield item
    finally:
        source.close()


def _select(total: int, samples: int, seed: int) -> np.ndarray:
    """Sorted indices of ``samples`` items out of ``total`` (all of them when there are fewer)."""
    if samples >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=samples, replace=False))


class _Feeds:
    """Model feeds for the selected items of a data set, built the way the runtime builds them."""

    def __init__(self, kind: str, path: Path, inputs: list[TensorSpec], metadata: dict[str, str],
                 preprocess: PreprocessConfig | None) -> None:
        self.kind, self.path, self.inputs = kind, path, inputs
        self.preprocess_requested = preprocess
        self.metadata = metadata
        self.preprocessor = None
        self.arrays: dict[str, np.ndarray] | None = None
        if kind == "tensors":
            self._plan_tensors()
        else:
            self._require_one_input("image data sets")
            self._make_preprocessor()
        if kind == "folder":
            self.files = _folder_images(path)
            self.total = len(self.files)
        elif kind == "image":
            self.files, self.total = [path], 1
        elif kind == "video":
            self.total = sum(1 for _ in _read_all(str(path)))
        if self.total == 0:
            raise SourceError(f"{path}: the calibration data set holds no items")

    # -- planning --------------------------------------------------------------------------------------

    def _require_one_input(self, what: str) -> None:
        if len(self.inputs) != 1:
            raise ConfigError(
                f"{self.path}: {what} feed one input, but the model has {len(self.inputs)}: "
                f"{[s.name for s in self.inputs]}; record a .npz with one array per input name "
                "(np.savez(path, **{name: array}))"
            )

    def _make_preprocessor(self) -> None:
        config = preprocess_from_metadata(self.preprocess_requested or PreprocessConfig(), self.metadata)
        self.preprocessor = Preprocessor(self.inputs[0], config)
        self.buffer = self.preprocessor.new_buffer()

    def _plan_tensors(self) -> None:
        """Decide how a recording maps to the inputs: one array per input name (a .npz), or one array for
        a one-input model, read by the runtime's tensor source (``frames``, or the only array)."""
        import zipfile

        names = [s.name for s in self.inputs]
        if self.path.suffix.lower() == ".npz":
            try:
                with np.load(self.path, allow_pickle=False) as archive:
                    stored = list(archive.files)
                    if set(names) <= set(stored) and (len(names) > 1 or "frames" not in stored):
                        self.arrays = {name: archive[name] for name in names}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise SourceError(f"{self.path}: cannot load it as a NumPy .npz file ({e})") from None
            if self.arrays is None and len(names) > 1:
                raise ConfigError(
                    f"{self.path}: holds arrays {stored}, but the model's inputs are {names}; save one array "
                    "per input name: np.savez(path, **{input_name: array_of_samples})"
                )
        if self.arrays is not None:
            for name, array in self.arrays.items():
                if array.ndim == 0:
                    raise ConfigError(f"{self.path}: array {name!r} holds a single value; stack the samples "
                                      "along the first axis")
            lengths = {name: len(a) for name, a in self.arrays.items()}
            if len(set(lengths.values())) != 1:
                raise ConfigError(f"{self.path}: the arrays hold different numbers of samples: {lengths}; "
                                  "each must hold one entry per sample along the first axis")
            self.total = next(iter(lengths.values()))
            self.modes = {name: self._tensor_mode(name, a.shape[1:], a.dtype) for name, a in self.arrays.items()}
            return
        self._require_one_input("single-array recordings")
        source = _open_source(str(self.path))
        try:
            described = source.describe()
        finally:
            source.close()
        self.total = int(described["frames"])
        dtype = np.dtype(described["dtype"])
        self.modes = {names[0]: self._tensor_mode(names[0], tuple(described["frame_shape"]), dtype)}

    def _tensor_mode(self, name: str, item: tuple[int, ...], dtype: np.dtype) -> str:
        """``tensor`` (goes in unchanged, like the pipeline's tensor_into) or ``image`` (uint8 HxW or
        HxWx3 frames, preprocessed like camera frames)."""
        spec = next(s for s in self.inputs if s.name == name)
        rank = len(spec.shape)
        if len(item) in (rank - 1, rank):
            dims = item if len(item) == rank else (1, *item)
            if all(not (isinstance(w, int) and w > 0) or w == g for w, g in zip(spec.shape, dims, strict=True)):
                if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
                    raise ConfigError(f"{self.path}: array {name!r} has dtype {dtype}; expected numbers")
                return "tensor"
        image_like = dtype == np.uint8 and (len(item) == 2 or (len(item) == 3 and item[2] in (1, 3)))
        if image_like and rank == 4 and len(self.inputs) == 1:
            if self.preprocessor is None:
                self._make_preprocessor()
            return "image"
        raise ConfigError(
            f"{self.path}: samples of array {name!r} have shape {list(item)} ({dtype}), which does not fit "
            f"model input {spec.name!r} {spec.shape_str} ({spec.dtype}); record tensors of the input's shape "
            "(with or without the batch axis), or uint8 images (HxW or HxWx3)"
        )

    # -- feeding ---------------------------------------------------------------------------------------

    def _image_feed(self, image: np.ndarray, where: str) -> dict[str, np.ndarray]:
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        try:
            self.preprocessor(np.ascontiguousarray(image), self.buffer)
        except ValueError as e:
            raise ConfigError(f"{where}: cannot preprocess this item: {e}") from None
        return {self.inputs[0].name: self.buffer}

    def feeds(self, indices: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        """The feeds of the items at ``indices`` (sorted), in order."""
        if self.kind in ("folder", "image"):
            for i in indices:
                file = self.files[int(i)]
                try:
                    images = list(_read_all(str(file)))
                except SourceError as e:
                    raise SourceError(f"calibration image {file}: {e}; remove it from the data set") from None
                yield self._image_feed(images[0], str(file))
        elif self.arrays is not None:
            for i in indices:
                yield {name: self._tensor_feed(name, self.arrays[name][int(i)], int(i)) for name in self.arrays}
        else:
            name = self.inputs[0].name
            for n, item in self._pick(indices):
                if self.kind == "video":
                    yield self._image_feed(item, f"{self.path} frame {n}")
                else:
                    yield {name: self._tensor_feed(name, item, n)}

    def _pick(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(index, item) for the items at ``indices`` of a video or recording, read in one pass."""
        wanted = iter(indices.tolist())
        target = next(wanted, None)
        with contextlib.closing(_read_all(str(self.path))) as items:
            for n, item in enumerate(items):
                if n == target:
                    yield n, item
                    target = next(wanted, None)
                    if target is None:
                        return
        if target is not None:
            raise SourceError(f"{self.path}: the data set ended before item {target} on the second reading; "
                              "it reads differently each time (a damaged file?)")

    def _tensor_feed(self, name: str, item: np.ndarray, i: int) -> np.ndarray:
        item = np.asarray(item)
        if self.modes[name] == "image":
            return self._image_feed(item, f"{self.path} item {i}")[name]
        spec = next(s for s in self.inputs if s.name == name)
        if item.ndim == len(spec.shape) - 1:
            item = item[None]
        return np.ascontiguousarray(item, dtype=spec.dtype)

    def effective_preprocess(self) -> dict[str, Any]:
        if self.preprocessor is None:
            return {}
        return self.preprocessor.config.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------------------
# Statistics


class _TensorStats:
    """Running min/max of one tensor and, for entropy/percentile, a histogram of absolute values."""

    __slots__ = ("hi", "hist", "lo", "nonfinite", "top")

    def __init__(self, histogram: bool) -> None:
        self.lo, self.hi = math.inf, -math.inf
        self.nonfinite = 0
        self.hist = np.zeros(HISTOGRAM_BINS, np.int64) if histogram else None
        self.top = 0.0
        """Upper edge of the histogram's range (0 until a non-zero value arrives)."""

    def update(self, value: np.ndarray) -> None:
        a = np.asarray(value)
        if a.size == 0:
            return
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        lo, hi = a.min(), a.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            finite = np.isfinite(a)
            self.nonfinite += int(a.size - np.count_nonzero(finite))
            a = a[finite]
            if a.size == 0:
                return
            lo, hi = a.min(), a.max()
        self.lo, self.hi = min(self.lo, float(lo)), max(self.hi, float(hi))
        if self.hist is not None:
            self._histogram(a, max(-float(lo), float(hi)))

    def _histogram(self, a: np.ndarray, amax: float) -> None:
        hist = self.hist
        assert hist is not None
        if amax <= 0:
            hist[0] += a.size
            return
        if self.top == 0:
            self.top = amax
        while self.top < amax:
            merged = hist.reshape(-1, 2).sum(axis=1)
            hist[: merged.size] = merged
            hist[merged.size:] = 0
            self.top *= 2
        index = (np.abs(a) * np.float32(HISTOGRAM_BINS / self.top)).astype(np.intp).ravel()
        np.minimum(index, HISTOGRAM_BINS - 1, out=index)
        hist += np.bincount(index, minlength=HISTOGRAM_BINS)

    def range(self, method: str, percentile: float) -> tuple[float, float]:
        if self.lo > self.hi:  # never saw a value
            return 0.0, 0.0
        if method == "minmax" or self.hist is None or self.top == 0:
            return _f32(self.lo), _f32(self.hi)
        amax = max(-self.lo, self.hi)
        width = self.top / HISTOGRAM_BINS
        if method == "percentile":
            threshold = _percentile_threshold(self.hist, width, percentile)
        else:
            threshold = _entropy_threshold(self.hist, width)
        threshold = min(threshold, amax)
        return _f32(max(self.lo, -threshold)), _f32(min(self.hi, threshold))


def _f32(x: float) -> float:
    """``x`` rounded to float32 (what every consumer stores), as a Python float."""
    return float(np.float32(x))


def _percentile_threshold(hist: np.ndarray, width: float, percentile: float) -> float:
    cdf = np.cumsum(hist)
    k = int(np.searchsorted(cdf, cdf[-1] * (percentile / 100.0)))
    return (min(k, hist.size - 1) + 1) * width


def _entropy_threshold(hist: np.ndarray, width: float) -> float:
    """The clipping threshold whose 128-level quantization loses the least information, searched over
    every bin edge from the 128th on (TensorRT's entropy calibration).

    For a candidate keeping ``i`` bins, P is the histogram cut at bin ``i`` with the cut-off mass added to
    its last bin, and Q is the kept bins merged into 128 levels, each level's mass spread evenly over
    P's non-empty bins in it; the threshold minimises KL(P || Q). All candidates are evaluated at once
    from prefix sums.
    """
    nonzero = np.flatnonzero(hist)
    if nonzero.size == 0:
        return 0.0
    h = hist[: nonzero[-1] + 1].astype(np.float64)
    n = h.size
    if n <= QUANTIZED_BINS:
        return n * width  # every bin gets its own level: nothing to gain by clipping
    total = h.sum()
    mass = np.concatenate([[0.0], np.cumsum(h)])
    filled = np.concatenate([[0], np.cumsum(h > 0)])
    h_log_h = np.concatenate([[0.0], np.cumsum(_x_log_x(h))])
    best, best_kl = n, math.inf
    for chunk in np.array_split(np.arange(QUANTIZED_BINS, n + 1), max(1, (n - QUANTIZED_BINS) // 1024 + 1)):
        kl = _clipped_kl(chunk, h, total, mass, filled, h_log_h)
        k = int(np.argmin(kl))
        if kl[k] < best_kl:
            best, best_kl = int(chunk[k]), float(kl[k])
    return best * width


def _x_log_x(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def _clipped_kl(keep: np.ndarray, h: np.ndarray, total: float, mass: np.ndarray, filled: np.ndarray,
                h_log_h: np.ndarray) -> np.ndarray:
    """KL(P || Q) for each candidate number of kept bins in ``keep`` (see :func:`_entropy_threshold`).

    ``mass``, ``filled`` and ``h_log_h`` are prefix sums of the histogram, of its non-empty bins and of
    h*log(h); the cut-off mass always ends in the last kept bin, so sum(P) is the histogram's total.
    """
    cut = total - mass[keep]  # mass beyond the kept bins, added to the last kept bin of P
    last = h[keep - 1]
    # sum of P log P over the kept bins, P normalised by the total
    p_log_p = (h_log_h[keep - 1] + _x_log_x(last + cut)) / total - np.log(total)
    merged = (keep // QUANTIZED_BINS)[:, None]
    starts = merged * np.arange(QUANTIZED_BINS)
    ends = starts + merged
    ends[:, -1] = keep  # the last level also takes the remainder bins
    level_mass = mass[ends] - mass[starts]  # Q's mass per level (without the cut-off mass)
    level_bins = (filled[ends] - filled[starts]).astype(np.float64)
    level_bins[:, -1] += (last == 0) & (cut > 0)  # the cut-off mass makes P's last bin non-empty
    p_mass = level_mass.copy()
    p_mass[:, -1] += cut
    q_total = mass[keep][:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q_per_bin = np.where(level_bins > 0, level_mass / level_bins / q_total, 0.0)
    log_q = np.log(np.maximum(q_per_bin, 1e-12))
    p_log_q = np.sum(np.where(p_mass > 0, p_mass / total * log_q, 0.0), axis=1)
    return p_log_p - p_log_q


# ---------------------------------------------------------------------------------------------------------
# Calibration


class _Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label = total, label
        self.enabled = enabled and sys.stderr.isatty()
        self.done = 0
        self._shown = 0.0

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.enabled and (now - self._shown >= 0.1 or self.done == self.total):
            self._shown = now
            filled = int(30 * self.done / max(self.total, 1))
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _load_with_shapes(model_path: Path):  # -> onnx.ModelProto
    """The model with its weights and inferred value types (the same inference the QDQ quantizer runs)."""
    import onnx
    from onnxruntime.quantization.quant_utils import save_and_reload_model_with_shape_infer

    model = onnx.load(str(model_path))
    try:
        return save_and_reload_model_with_shape_infer(model)
    except Exception as e:  # onnx raises several types for models its shape inference cannot handle
        raise ModelError(f"{model_path}: ONNX shape inference failed on this model: {e}") from None


def activation_tensors(model) -> list[str]:  # model: onnx.ModelProto with inferred value_info
    """Float tensors flowing between nodes (inputs and outputs included), weights excluded, in graph order."""
    from onnx import TensorProto

    types = {}
    for vi in (*model.graph.value_info, *model.graph.output, *model.graph.input):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    weights = {t.name for t in model.graph.initializer}
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    names: dict[str, None] = {}
    candidates = [vi.name for vi in model.graph.input]
    for node in model.graph.node:
        candidates += [*node.input, *node.output]
    candidates += [vi.name for vi in model.graph.output]
    for name in candidates:
        if name and name not in weights and types.get(name) in floats:
            names[name] = None
    return list(names)


def _session(model, outputs: list[str], folder: Path):  # -> onnxruntime.InferenceSession
    """A session on ``model`` that also returns every tensor in ``outputs`` (no graph optimisation, so
    every named tensor exists)."""
    import onnx
    import onnxruntime as ort

    graph_outputs = {o.name for o in model.graph.output}
    value_infos = {vi.name: vi for vi in (*model.graph.value_info, *model.graph.output)}
    for name in outputs:
        if name not in graph_outputs:
            model.graph.output.append(value_infos[name])
    path = folder / "augmented.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="augmented.onnx.data", size_threshold=1024)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises several unrelated types for bad models
        raise ModelError(f"onnxruntime cannot load the model for calibration: {str(e).strip()[:500]}") from None


def _check_arguments(method: str, samples: int, percentile: float) -> None:
    if method not in METHODS:
        raise ConfigError(f"calibration method {method!r} is unknown; use one of {', '.join(METHODS)}")
    if not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples must be a whole number of at least 1, got {samples!r}")
    if method == "percentile" and not (0 < percentile <= 100):
        raise ConfigError(f"percentile must be in (0, 100], got {percentile!r} (99.99 is typical)")


def calibrate(
    model_path: Path,
    dataset: str | Path,
    *,
    method: Method = "entropy",
    samples: int = 128,
    seed: int = 0,
    percentile: float = 99.99,
    preprocess: PreprocessConfig | None = None,
    progress: bool = True,
) -> CalibrationTable:
    """Measure activation ranges of ``model_path`` on ``samples`` items of ``dataset``.

    Items are chosen with ``numpy.random.default_rng(seed)`` among all items in reading order, so the
    same inputs give the same table (only ``created_at`` differs). Images and video frames go through
    the runtime's Preprocessor configured as the runtime does (``preprocess`` merged with the model's
    ``lepton.preprocess`` metadata); tensors recorded at the model input go in unchanged. Raises
    ConfigError/SourceError for unusable data sets and ModelError for unusable models.
    """
    _check_arguments(method, samples, percentile)
    model_path = Path(model_path)
    info = inspect_onnx(model_path)
    if info.has_qdq:
        raise ModelError(f"{model_path}: the model is already quantized (it has QuantizeLinear/DequantizeLinear "
                         "nodes); calibrate the fp32 model instead")
    manifest = dataset_manifest(dataset)
    kind, path = _dataset_path(dataset)
    feeds = _Feeds(kind, path, info.inputs, info.metadata, preprocess)
    indices = _select(feeds.total, samples, seed)
    if feeds.total < samples:
        log.warning("%s holds %d item(s), fewer than the %d samples asked for; using all of them",
                    path, feeds.total, samples)

    model = _load_with_shapes(model_path)
    tensors = activation_tensors(model)
    input_names = [s.name for s in info.inputs]
    computed = [t for t in tensors if t not in input_names]
    if not computed:
        raise ModelError(f"{model_path}: the model has no float activations to calibrate")
    stats = {name: _TensorStats(histogram=method != "minmax") for name in tensors}
    input_shapes: dict[str, list[int]] = {}
    bar = _Progress(len(indices), f"calibrating {model_path.name} ({method})", progress)
    with tempfile.TemporaryDirectory(prefix="lepton-calibrate-") as tmp:
        session = _session(model, computed, Path(tmp))
        try:
            for feed in feeds.feeds(indices):
                if not input_shapes:
                    input_shapes = {name: [int(d) for d in array.shape] for name, array in feed.items()}
                try:
                    values = session.run(computed, feed)
                except Exception as e:  # onnxruntime raises several unrelated types
                    raise ConfigError(
                        f"{path}: the model cannot run on this data (input shapes "
                        f"{ {n: list(a.shape) for n, a in feed.items()} }): {str(e).strip()[:300]}"
                    ) from None
                for name, array in feed.items():
                    if name in stats:
                        stats[name].update(array)
                for name, value in zip(computed, values, strict=True):
                    stats[name].update(value)
                bar.step()
        finally:
            bar.close()
            del session
    for name, s in stats.items():
        if s.nonfinite:
            log.warning("tensor %r produced %d NaN/inf value(s) on the calibration data; they were ignored",
                        name, s.nonfinite)
    ranges = {name: stats[name].range(method, percentile) for name in sorted(tensors)}
    return CalibrationTable(
        lepton_edge_version=__version__,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        model_sha256=info.sha256,
        model_name=model_path.name,
        method=method,
        percentile=float(percentile) if method == "percentile" else None,
        samples=len(indices),
        seed=seed,
        dataset=str(dataset),
        dataset_sha256=manifest["sha256"],
        preprocess=feeds.effective_preprocess(),
        input_shapes=input_shapes,
        ranges=ranges,
    )


# ---------------------------------------------------------------------------------------------------------
# Table files


def _atomic_write(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_table(table: CalibrationTable, path: str | Path) -> Path:
    """Write the table as indented JSON (atomically: a reader never sees half a file)."""
    text = json.dumps(table.model_dump(mode="json"), indent=2) + "\n"
    return _atomic_write(Path(path), text.encode())


def _recalibrate_hint() -> str:
    return "create a new one: lepton-edge calibrate --model MODEL --data DATA --out TABLE"


def load_table(path: str | Path, *, model_sha256: str | None = None) -> CalibrationTable:
    """Read a table written by :func:`write_table`; with ``model_sha256``, refuse a table made for another
    model. Raises ConfigError naming the file and the field at fault."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: calibration table not found; {_recalibrate_hint()}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the calibration table: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not a calibration table (invalid JSON: {e}); {_recalibrate_hint()}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a calibration table (expected a JSON object); {_recalibrate_hint()}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        shown = "missing" if version is None else repr(version)
        raise ConfigError(
            f"{path}: format_version: {shown} is not a table format lepton-edge {__version__} reads "
            f"(it reads format {FORMAT_VERSION}); {_recalibrate_hint()}"
        )
    try:
        table = CalibrationTable.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"{path} (calibration table)")) from None
    if model_sha256 is not None and table.model_sha256 != model_sha256:
        raise ConfigError(_other_model(path, table, model_sha256))
    return table


def _other_model(where: Path | str, table: CalibrationTable, model_sha256: str) -> str:
    return (
        f"{where}: model_sha256: the table was made for another model ({table.model_name}, sha256 "
        f"{table.model_sha256[:16]}...), not this one (sha256 {model_sha256[:16]}...); the model changed since "
        f"it was calibrated. Calibrate this model again: lepton-edge calibrate --model MODEL --data "
        f"{table.dataset} --out TABLE"
    )


# ---------------------------------------------------------------------------------------------------------
# TensorRT calibration cache

_TRT_HEADER = re.compile(r"^TRT-(\d+)-(EntropyCalibration2|EntropyCalibration|MinMaxCalibration|LegacyCalibration)$")
_HEX = re.compile(r"^[0-9a-fA-F]{1,8}$")


def tensorrt_algorithm(method: str) -> str:
    """The TensorRT calibrator whose cache header fits ``method``: MinMaxCalibration for minmax,
    EntropyCalibration2 otherwise (the ranges are already chosen; the calibrator only carries them)."""
    return "MinMaxCalibration" if method == "minmax" else "EntropyCalibration2"


def write_tensorrt_cache(table: CalibrationTable, path: str | Path, *, trt_version: int = 8601) -> Path:
    """Write the ranges as a TensorRT calibration cache: a ``TRT-<version>-<algorithm>`` header line, then
    ``tensor: <hex>`` per tensor, the hex being the float32 bits of the scale ``amax / 127`` (symmetric
    int8, ``amax = max(|min|, |max|)``)."""
    lines = [f"TRT-{int(trt_version)}-{tensorrt_algorithm(table.method)}"]
    for name, (lo, hi) in table.ranges.items():
        if "\n" in name:
            raise ModelError(f"tensor name {name!r} contains a line break; it cannot go into a TensorRT cache")
        scale = np.float32(max(abs(lo), abs(hi), MIN_AMAX) / 127.0)
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return _atomic_write(Path(path), ("\n".join(lines) + "\n").encode())


def read_tensorrt_cache(path: str | Path) -> tuple[str, dict[str, float]]:
    """Parse a TensorRT calibration cache: (header line, tensor name -> scale). Raises ConfigError naming
    the line of any malformed entry."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: TensorRT calibration cache not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the TensorRT calibration cache: {e}") from None
    lines = text.splitlines()
    if not lines or not _TRT_HEADER.match(lines[0].strip()):
        first = lines[0][:80] if lines else ""
        raise ConfigError(f"{path}: line 1: expected a header like TRT-8601-EntropyCalibration2, got {first!r}; "
                          "this is not a TensorRT calibration cache")
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        value = value.strip()
        if not sep or not name or not _HEX.match(value):
            raise ConfigError(f"{path}: line {number}: expected 'tensor_name: <8 hex digits>', got {line[:120]!r}")
        scale = struct.unpack(">f", bytes.fromhex(value.zfill(8)))[0]
        if not (math.isfinite(scale) and scale >= 0):
            raise ConfigError(f"{path}: line {number}: scale {scale} of tensor {name!r} is not a finite, "
                              "non-negative number")
        if name in scales:
            raise ConfigError(f"{path}: line {number}: tensor {name!r} appears twice")
        scales[name] = scale
    return lines[0].strip(), scales


# ---------------------------------------------------------------------------------------------------------
# QDQ export


class _DropQuantizerAdvice(logging.Filter):
    """onnxruntime's quantizer logs advice about its own pre-processing tool on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def _opset_13(model, model_path: Path, opset: int):  # onnx.ModelProto -> onnx.ModelProto
    """Per-channel QuantizeLinear/DequantizeLinear (their ``axis``) need opset 13; convert older models.
    The converter keeps tensor names, so the table's ranges still apply."""
    import onnx

    try:
        return onnx.version_converter.convert_version(model, 13)
    except Exception as e:  # the converter raises several types for graphs it cannot convert
        raise ModelError(
            f"{model_path}: per-channel quantization needs opset 13 and converting this opset {opset} "
            f"model failed ({e}); re-export it with opset 13 or newer, or "
            "quantize per tensor (--per-tensor)"
        ) from None


_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def _float_tail(model) -> list[str]:  # model: onnx.ModelProto (nodes named)
    """Names of the nodes after the last weighted layer (Conv, MatMul, ...) that feed none: the decode
    tail (box arithmetic, concatenation of boxes with scores, softmax). Quantizing it gains little time
    and can ruin results, e.g. one uint8 scale for pixel coordinates and 0..1 scores in one tensor."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    feeds_weighted: dict[str, bool] = {}
    for node in reversed(model.graph.node):  # ONNX nodes are topologically sorted
        feeds_weighted[node.name] = any(
            c.op_type in _WEIGHTED_OPS or feeds_weighted.get(c.name, False)
            for out in node.output for c in consumers.get(out, ())
        )
    return [n.name for n in model.graph.node if n.op_type not in _WEIGHTED_OPS and not feeds_weighted[n.name]]


def quantize_qdq(model_path: Path, table: CalibrationTable, out_path: Path, *, per_channel: bool = True,
                 float_tail: bool = True) -> Path:
    """Write a QDQ-quantized copy of ``model_path`` whose activation scales come from ``table``.

    Activations are uint8 (asymmetric), weights int8 (per output channel unless ``per_channel`` is
    False): the fast combination on x86 CPUs with VNNI and on ARM in onnxruntime. The ranges are handed
    to onnxruntime's ``quantize_static`` as its calibration cache, so no second calibration runs. With
    ``float_tail`` the cheap decode nodes after the last weighted layer stay in float.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    model_path, out_path = Path(model_path), Path(out_path)
    info = inspect_onnx(model_path)
    if info.sha256 != table.model_sha256:
        raise ConfigError(_other_model(f"calibration table for {model_path}", table, info.sha256))
    if info.has_qdq:
        raise ModelError(f"{model_path}: the model is already quantized; give the fp32 model")
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise ModelError(
            f"QDQ export needs an onnxruntime whose quantize_static takes calibration_cache_path (installed: "
            f"{ort.__version__}); upgrade it with `pip install -U onnxruntime`"
        )
    ranges = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        for name, (lo, hi) in table.ranges.items()
    })
    model = onnx.load(str(model_path))
    if per_channel and info.opset < 13:
        model = _opset_13(model, model_path, info.opset)
    used = {n.name for n in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:  # nodes are excluded from quantization by name
            name = f"{node.op_type}_{index}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    keep_float = _float_tail(model) if float_tail else []
    out_path.parent.mkdir(parents=True, exist_ok=True)
    advice = _DropQuantizerAdvice()
    root = logging.getLogger()
    with tempfile.TemporaryDirectory(prefix="lepton-qdq-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, cache)
        staged = Path(tmp) / "model.int8.onnx"
        root.addFilter(advice)
        try:
            quantize_static(
                model, str(staged), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                per_channel=per_channel, reduce_range=False, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=cache, nodes_to_exclude=keep_float,
            )
        except LeptonError:
            raise
        except Exception as e:  # the quantizer raises many types for models it cannot handle
            raise ModelError(f"{model_path}: onnxruntime's quantizer failed: {type(e).__name__}: {e}") from None
        finally:
            root.removeFilter(advice)
        quantized = onnx.load(str(staged))
        entry = quantized.metadata_props.add()
        entry.key = "lepton.quantization"
        entry.value = json.dumps({
            "format": "qdq", "activations": "uint8", "weights": "int8 per-channel" if per_channel else "int8",
            "method": table.method, "source_model_sha256": table.model_sha256,
            "dataset_sha256": table.dataset_sha256, "float_nodes": len(keep_float),
        }, sort_keys=True)
        onnx.save(quantized, str(staged))
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            ort.InferenceSession(str(staged), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises several unrelated types
            raise ModelError(f"{model_path}: the quantized model does not load in onnxruntime: {e}") from None
        _atomic_write(out_path, staged.read_bytes())
    return out_path


# ---------------------------------------------------------------------------------------------------------
# Command line

EPILOG_CALIBRATE = """examples:
  lepton-edge calibrate --model models/shapes_detector.onnx --data calibration/shapes --method entropy \\
      --out out/shapes.calib.json --trt-cache out/shapes.calib.cache --qdq out/shapes.int8.onnx
  lepton-edge calibrate --model models/digits_classifier.onnx --data calibration/digits.npy \\
      --method minmax --out out/digits.calib.json --qdq out/digits.int8.onnx
  lepton-edge calibrate --model det.onnx --data video.mp4 --samples 256 --config device.yaml --out det.calib.json

Data sets: an image folder (read in name order), a video file, or a .npy/.npz recording (model-input
tensors, or uint8 images; for several inputs a .npz with one array per input name). Preprocessing is the
runtime's: --config takes it from a device config, else the model's lepton.preprocess metadata applies.
"""


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[xX,](\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 640x640, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibrate`` options, help text and handler to a (sub)parser."""
    parser.description = ("Measure INT8 activation ranges on a data set with the runtime's preprocessing; "
                          "write a versioned table, optionally a TensorRT cache and a QDQ ONNX model.")
    parser.epilog = EPILOG_CALIBRATE
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--model", required=True, type=Path, help="fp32 ONNX model")
    parser.add_argument("--data", required=True, help="image folder, video file, or .npy/.npz recording")
    parser.add_argument("--method", choices=METHODS, default="entropy", help="range method (default entropy)")
    parser.add_argument("--samples", type=int, default=128, help="items used, chosen at random (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice of items (default 0)")
    parser.add_argument("--percentile", type=float, default=99.99,
                        help="with --method percentile: percentile of absolute values kept (default 99.99)")
    parser.add_argument("--config", type=Path, help="device config YAML whose preprocess section to use")
    parser.add_argument("--size", type=_parse_size, metavar="WxH",
                        help="model input size for models with dynamic spatial dimensions")
    parser.add_argument("--out", required=True, type=Path, help="calibration table to write (JSON)")
    parser.add_argument("--trt-cache", type=Path, help="also write a TensorRT calibration cache here")
    parser.add_argument("--trt-version", type=int, default=8601,
                        help="TensorRT version number in the cache header (default 8601 = 8.6.1)")
    parser.add_argument("--qdq", type=Path, help="also write a QDQ int8 ONNX model here (for onnxruntime)")
    parser.add_argument("--per-tensor", action="store_true", help="QDQ weights per tensor, not per channel")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """The ``lepton-edge calibrate`` command."""
    preprocess = None
    if args.config:
        device = load_config(args.config)
        preprocess = device.preprocess
    if args.size:
        base = preprocess.model_dump(exclude_unset=True) if preprocess else {}
        preprocess = PreprocessConfig.model_validate({**base, "size": args.size})
    started = time.monotonic()
    table = calibrate(args.model, args.data, method=args.method, samples=args.samples, seed=args.seed,
                      percentile=args.percentile, preprocess=preprocess, progress=not args.no_progress)
    write_table(table, args.out)
    log.info("wrote %s: %d tensor ranges from %d sample(s), method %s, in %.1f s", args.out,
             len(table.ranges), table.samples, table.method, time.monotonic() - started)
    if args.trt_cache:
        write_tensorrt_cache(table, args.trt_cache, trt_version=args.trt_version)
        log.info("wrote %s (TensorRT calibration cache)", args.trt_cache)
    if args.qdq:
        quantize_qdq(args.model, table, args.qdq, per_channel=not args.per_tensor)
        log.info("wrote %s (QDQ int8 ONNX model)", args.qdq)
    return 0
