"""Calibration data sets: what they hold, their fingerprint, and the model feeds of a sample of them.

A data set is an image folder (read in name order), one image, a video file, or a .npy/.npz recording,
read by the runtime's own sources and turned into tensors by the runtime's own Preprocessor. Models with several
inputs are fed as the runtime feeds them (:mod:`lepton_edge.runtime.inputs`): recorded arrays per input name,
constants, and state fed back from the previous item's outputs; a stateful model's items are a sequence, so its
samples are taken in order from the start (:func:`select_samples` with ``sequence``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

from lepton_edge.config.pipeline import InputsConfig, PreprocessConfig, SourceConfig
from lepton_edge.core.errors import ConfigError, ModelError, SourceError
from lepton_edge.core.fileio import sha256_file
from lepton_edge.core.tensors import TensorSpec
from lepton_edge.runtime.assembly import preprocess_from_metadata
from lepton_edge.runtime.inputs import InputState, plan_inputs
from lepton_edge.runtime.preprocess import Preprocessor
from lepton_edge.runtime.sources import create_source
from lepton_edge.runtime.sources.base import Source
from lepton_edge.runtime.sources.images import IMAGE_SUFFIXES
from lepton_edge.runtime.sources.tensors import TENSOR_SUFFIXES, parse_npy_uri

_LIVE_SCHEMES = re.compile(r"^(rtsps?|https?|v4l2|csi|synthetic|gst):", re.I)


def dataset_path(dataset: str | Path) -> tuple[str, Path]:
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
    kind, path = dataset_path(dataset)
    paths = _folder_images(path) if kind == "folder" else [path]
    files = []
    for p in paths:
        try:
            files.append({"name": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)})
        except OSError as e:
            raise SourceError(f"{p}: cannot read this calibration file: {e}") from None
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":")).encode()
    return {"kind": kind, "files": files, "sha256": hashlib.sha256(canonical).hexdigest()}


def _open_source(uri: str) -> Source:
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


def select_samples(total: int, samples: int, seed: int, *, sequence: bool = False) -> np.ndarray:
    """Sorted indices of ``samples`` items out of ``total`` (all of them when there are fewer): chosen at random
    with ``seed``, or the first ``samples`` for a ``sequence`` (a stateful model, whose state needs every item in
    order)."""
    if samples >= total:
        return np.arange(total)
    if sequence:
        return np.arange(samples)
    return np.sort(np.random.default_rng(seed).choice(total, size=samples, replace=False))


class Feeds:
    """Model feeds for the selected items of a data set, built the way the runtime builds them.

    ``inputs_config`` (``model.inputs``) and the model's ``outputs`` give constants and state: each feed holds every
    model input. For a stateful model the caller runs the feeds in order and hands each item's outputs to
    :meth:`update` before taking the next feed.
    """

    def __init__(self, kind: str, path: Path, inputs: list[TensorSpec], metadata: dict[str, str],
                 preprocess: PreprocessConfig | None, *, inputs_config: InputsConfig | None = None,
                 outputs: list[TensorSpec] | None = None) -> None:
        self.kind, self.path, self.inputs = kind, path, inputs
        self.preprocess_requested = preprocess
        self.metadata = metadata
        self.preprocessor = None
        self.arrays: dict[str, np.ndarray] | None = None
        self.array_names: dict[str, str] = {}
        try:
            self.plan = plan_inputs(inputs, outputs or [], inputs_config,
                                    source="tensor" if kind == "tensors" else "image", where=str(path))
        except ModelError as e:
            if kind == "tensors":
                raise ConfigError(str(e)) from None
            raise ConfigError(f"{path}: image data sets feed one input: {e}") from None
        self.state = InputState(self.plan)
        self.fed = [s for s in inputs if s.name in self.plan.framed]
        """The inputs the data set feeds (the others are constants or state)."""
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

    @property
    def stateful(self) -> bool:
        """True when each item's feed depends on the previous item's outputs (state fed back)."""
        return self.plan.stateful

    def update(self, outputs: dict[str, np.ndarray]) -> None:
        """The outputs of the item just run, by output name: the state outputs feed the next item."""
        if self.plan.state:
            missing = [link.output for link in self.plan.state if link.output not in outputs]
            if missing:
                raise ModelError(f"state output(s) {missing} missing from the model's results")
            self.state.update([outputs.get(spec_name) for spec_name in self._output_names()])

    def _output_names(self) -> list[str]:
        names = [""] * (max((link.output_index for link in self.plan.state), default=-1) + 1)
        for link in self.plan.state:
            names[link.output_index] = link.output
        return names

    def _require_one_input(self, what: str) -> None:
        if len(self.fed) != 1:
            raise ConfigError(
                f"{self.path}: {what} feed one input, but the model has {len(self.fed)} not given as constants or "
                f"state: {[s.name for s in self.fed]}; record a .npz with one array per input name "
                "(np.savez(path, **{name: array})), or give the others in model.inputs (constants, state)"
            )

    def _make_preprocessor(self) -> None:
        config = preprocess_from_metadata(self.preprocess_requested or PreprocessConfig(), self.metadata)
        self.preprocessor = Preprocessor(self.fed[0], config, metadata=self.metadata)
        self.buffer = self.preprocessor.new_buffer()

    def _plan_tensors(self) -> None:
        """Decide how a recording maps to the inputs: one array per input name (a .npz), or one array for
        a one-input model, read by the runtime's tensor source (``frames``, or the only array)."""
        names = [s.name for s in self.fed]
        self.array_names = dict(self.plan.recorded)
        wanted = [self.array_names[name] for name in names]
        if self.path.suffix.lower() == ".npz":
            try:
                with np.load(self.path, allow_pickle=False) as archive:
                    stored = list(archive.files)
                    if set(wanted) <= set(stored) and (len(names) > 1 or "frames" not in stored):
                        self.arrays = {name: archive[self.array_names[name]] for name in names}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise SourceError(f"{self.path}: cannot load it as a NumPy .npz file ({e})") from None
            if self.arrays is None and len(names) > 1:
                raise ConfigError(
                    f"{self.path}: holds arrays {stored}, but the model's inputs are {names} (read from arrays "
                    f"{wanted}); "
                    "save one array per input name: np.savez(path, **{input_name: array_of_samples}), or map them "
                    "in model.inputs.recorded"
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
        if image_like and rank == 4 and len(self.fed) == 1:
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
        return {self.fed[0].name: self.buffer}

    def feeds(self, indices: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        """The feeds of the items at ``indices`` (sorted), in order, each with every model input: the item's own
        arrays, the constants and the current state (zeros at the start; see :meth:`update`)."""
        self.state.reset()
        for feed in self._framed_feeds(indices):
            yield self.state.feeds(feed)

    def _framed_feeds(self, indices: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
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
            name = self.fed[0].name
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

    def materialize(self, indices: np.ndarray, folder: Path) -> str | None:
        """The recorded items at ``indices`` as a recording ``compare`` reads: a .npy for one recorded input, a
        .npz of one array per recording name for several (constants and state come from the same model.inputs);
        None for images and videos."""
        if self.kind != "tensors":
            return None
        stacked: dict[str, list[np.ndarray]] = {name: [] for name in self.plan.recorded}
        for feed in self._framed_feeds(indices):
            for name in stacked:
                stacked[name].append(np.array(feed[name], copy=True))
        if len(stacked) == 1:
            np.save(folder / "feeds.npy", np.stack(next(iter(stacked.values()))))
            return str(folder / "feeds.npy")
        np.savez(folder / "feeds.npz", **{self.array_names[name]: np.stack(items) for name, items in stacked.items()})
        return str(folder / "feeds.npz")

    def effective_preprocess(self) -> dict[str, Any]:
        if self.preprocessor is None:
            return {}
        return self.preprocessor.config.model_dump(mode="json")

