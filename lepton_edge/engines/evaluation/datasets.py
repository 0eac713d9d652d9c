"""Labelled held-out data for the accuracy gate, ``precision: auto`` and ``lepton-edge compare``.

Five formats, told apart by suffix and content (see docs/build.md):

- classification ``.npz``: ``images`` uint8 ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` (BGR) and
  ``labels`` int ``[N]``;
- detection ``.npz``: ``images`` as above, ``boxes`` float ``[M, 4]`` (xyxy, image pixels), ``classes``
  int ``[M]`` and ``image_index`` int ``[M]`` (the image each box belongs to);
- a JSON spec of the synthetic shapes scenes, regenerated deterministically from their seeds:
  ``{"generator": "shapes", "width": 640, "height": 480, "seeds": [start, stop)}``;
- a YOLO (Ultralytics) dataset: its ``data.yaml`` (``data.yaml:val`` picks a split) or its folder (``yolo.py``);
- COCO instances JSON with its images (``coco.py``).

Images are yielded as the runtime's sources deliver frames (BGR uint8, or 2-D grey), so the model
sees exactly the preprocessing it gets in production.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lepton_edge.core.errors import ConfigError
from lepton_edge.engines.evaluation.coco import is_coco, load_coco
from lepton_edge.engines.evaluation.labelled import GroundTruth, Label, LabelledSet, Task, data_error, sha256_bytes
from lepton_edge.engines.evaluation.yolo import SPLITS, find_data_yaml, load_yolo
from lepton_edge.runtime.sources.shapes import random_sample

__all__ = ["GroundTruth", "Label", "LabelledSet", "ShapesSpec", "Task", "load_labelled", "sha256_bytes",
           "write_detection_npz"]


class ShapesSpec(BaseModel):
    """The synthetic shapes held-out set, described by its seeds instead of stored pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    generator: Literal["shapes"] = Field(
        description="Scene generator: lepton_edge.runtime.sources.shapes.random_sample."
    )
    width: int = Field(ge=32, description="Image width in pixels.")
    height: int = Field(ge=32, description="Image height in pixels.")
    seeds: tuple[int, int] = Field(description="Half-open seed range [start, stop); one image per seed.")
    count: tuple[int, int] = Field((1, 8), description="Fewest and most shapes per image.")
    description: str | None = Field(None, description="Free text for humans.")

    @model_validator(mode="after")
    def _ranges(self) -> ShapesSpec:
        if not 0 <= self.seeds[0] < self.seeds[1]:
            raise ValueError(f"seeds must be [start, stop) with 0 <= start < stop, got {list(self.seeds)}")
        if not 0 <= self.count[0] <= self.count[1]:
            raise ValueError(f"count must be [fewest, most] with 0 <= fewest <= most, got {list(self.count)}")
        return self


def load_labelled(path: str | Path, images: str | Path | None = None) -> LabelledSet:
    """Open a labelled set; raises ConfigError saying what is wrong.

    ``path``: a ``.npz``, a shapes or COCO ``.json``, a YOLO ``data.yaml`` (``data.yaml:val`` names the split)
    or a folder holding one. ``images``: the image folder of a COCO file, when not found beside it.
    """
    path, split = _split_selection(Path(path))
    if path.is_dir():
        path = find_data_yaml(path) or path
    if not path.is_file():
        what = "is a directory without a data.yaml" if path.is_dir() else "not found"
        raise ConfigError(
            f"{path}: labelled data {what}; expected a .npz file (images + labels, or images + boxes), "
            "a shapes or COCO .json, or a YOLO data.yaml (or its folder), see docs/build.md"
        )
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return load_yolo(path, split)
    if suffix == ".json":
        return _load_json(path, None if images is None else Path(images))
    if suffix == ".npz":
        return _load_npz(path)
    raise ConfigError(
        f"{path}: unsupported labelled data file type {suffix or '(none)'!r}; use .npz, .json or a YOLO data.yaml"
    )


def _split_selection(path: Path) -> tuple[Path, str | None]:
    """``data.yaml:val`` -> (``data.yaml``, ``"val"``); any other path -> (path, None)."""
    base, colon, split = str(path).rpartition(":")
    if colon and split in SPLITS and not path.exists():
        return Path(base), split
    return path, None


def _load_json(path: Path, images: Path | None) -> LabelledSet:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise data_error(path, f"not a readable JSON file ({e})") from None
    if is_coco(raw):
        return load_coco(path, raw, images)
    return _load_shapes(path, raw)


def _load_shapes(path: Path, raw: Any) -> LabelledSet:
    if not isinstance(raw, dict) or raw.get("generator") != "shapes":
        got = raw.get("generator") if isinstance(raw, dict) else type(raw).__name__
        raise data_error(
            path, f'expected a JSON object with "generator": "shapes" or COCO "images" and "annotations", got {got!r}'
        )
    try:
        spec = ShapesSpec.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'top level'}: {err['msg']}" for err in e.errors())
        raise data_error(path, f"invalid shapes spec: {problems}") from None
    start, stop = spec.seeds
    identity = spec.model_dump(mode="json", exclude={"description"})

    def get(index: int) -> tuple[np.ndarray, GroundTruth]:
        image, boxes, classes = random_sample(start + index, spec.width, spec.height, count=spec.count)
        return image, (boxes.astype(np.float32), classes.astype(np.int64))

    digest = sha256_bytes(json.dumps(identity, sort_keys=True).encode())
    return LabelledSet(path, "detect", stop - start, digest, get)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise data_error(path, "not a readable .npz file (not a zip archive); write it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as e:  # object arrays need pickle, which is refused
        raise data_error(path, f"cannot read arrays without pickle ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise data_error(path, f"not a readable .npz file ({type(e).__name__}: {e})") from None


def _check_images(path: Path, images: np.ndarray) -> None:
    ok_shape = images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)
    if images.dtype != np.uint8 or not ok_shape:
        raise data_error(
            path, f"'images' must be uint8 [N, H, W] or [N, H, W, 3], got {images.dtype} {list(images.shape)}"
        )
    if len(images) == 0:
        raise data_error(path, "'images' is empty; the held-out set needs at least one image")


def _as_int(path: Path, name: str, array: np.ndarray, shape: str) -> np.ndarray:
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise data_error(path, f"'{name}' must be integers {shape}, got {array.dtype} {list(array.shape)}")
    return array.astype(np.int64)


def _load_npz(path: Path) -> LabelledSet:
    arrays = _read_npz(path)
    keys = set(arrays)
    if "images" not in keys:
        raise data_error(path, f"no 'images' array (arrays: {sorted(keys)})")
    images = arrays["images"]
    _check_images(path, images)
    n = len(images)
    digest = sha256_bytes(path.read_bytes())
    if "labels" in keys and "boxes" in keys:
        raise data_error(path, "has both 'labels' (classification) and 'boxes' (detection); keep one kind")
    if "labels" in keys:
        labels = _as_int(path, "labels", arrays["labels"], "[N]")
        if len(labels) != n:
            raise data_error(path, f"{n} images but {len(labels)} labels")
        if labels.min() < 0:
            raise data_error(path, f"'labels' has negative class id {int(labels.min())}")
        return LabelledSet(path, "classify", n, digest, lambda i: (images[i], int(labels[i])))
    missing = {"boxes", "classes", "image_index"} - keys
    if missing:
        raise data_error(
            path,
            f"neither a classification set ('images', 'labels') nor a detection set ('images', 'boxes', "
            f"'classes', 'image_index'): missing {sorted(missing)} (arrays: {sorted(keys)})",
        )
    boxes = arrays["boxes"]
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.issubdtype(boxes.dtype, np.number):
        raise data_error(path, f"'boxes' must be numbers [M, 4] (xyxy), got {boxes.dtype} {list(boxes.shape)}")
    classes = _as_int(path, "classes", arrays["classes"], "[M]")
    owner = _as_int(path, "image_index", arrays["image_index"], "[M]")
    if not len(boxes) == len(classes) == len(owner):
        raise data_error(path, f"'boxes', 'classes' and 'image_index' differ in length: "
                          f"{len(boxes)}, {len(classes)}, {len(owner)}")
    if len(owner) and (owner.min() < 0 or owner.max() >= n):
        raise data_error(path, f"'image_index' must be in 0..{n - 1}, found {int(owner.min())}..{int(owner.max())}")
    if len(classes) and classes.min() < 0:
        raise data_error(path, f"'classes' has negative class id {int(classes.min())}")
    boxes = boxes.astype(np.float32)
    order = np.argsort(owner, kind="stable")
    starts = np.searchsorted(owner[order], np.arange(n + 1))

    def get(index: int) -> tuple[np.ndarray, GroundTruth]:
        rows = order[starts[index] : starts[index + 1]]
        return images[index], (boxes[rows], classes[rows])

    return LabelledSet(path, "detect", n, digest, get)


def write_detection_npz(path: Path, images: np.ndarray, truths: list[GroundTruth]) -> Path:
    """Write a detection held-out ``.npz`` from images and per-image ``(boxes, class_ids)``."""
    boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b, _ in truths]
    classes = [np.asarray(c, np.int64).reshape(-1) for _, c in truths]
    index = [np.full(len(c), i, np.int64) for i, c in enumerate(classes)]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, images=np.asarray(images, np.uint8),
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
        classes=np.concatenate(classes) if classes else np.zeros(0, np.int64),
        image_index=np.concatenate(index) if index else np.zeros(0, np.int64),
    )
    return path
