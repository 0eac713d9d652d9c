"""YOLO (Ultralytics) labelled folders: a ``data.yaml`` and one label ``.txt`` per image.

``data.yaml`` names the dataset root (``path``, relative to the YAML file; default: its folder), the splits
(``train``/``val``/``test``: an image folder, a ``.txt`` list of image paths, or a list of those) and the
classes (``names``: a list, or a dict ``{0: name, ...}``); ``kpt_shape: [K, D]`` marks a pose set. The label
of ``.../images/<rest>.jpg`` is ``.../labels/<rest>.txt``; each line is ``class cx cy w h`` (normalised to
0..1), a polygon ``class x1 y1 x2 y2 x3 y3 ...`` (its bounding box is used) or, in a pose set,
``class cx cy w h`` and ``K`` keypoints of ``D`` values (ignored). An image without a label file has no
objects; a label file without an image, like any malformed line, is an error naming the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lepton_edge.engines.evaluation.labelled import (
    GroundTruth,
    LabelledSet,
    data_error,
    empty_truth,
    files_digest,
    read_image,
    scale_to_pixels,
)
from lepton_edge.runtime.sources.images import IMAGE_SUFFIXES

SPLITS = ("val", "test", "train")
"""The split chosen when none is named: the first of these that ``data.yaml`` has."""
DATA_YAML_NAMES = ("data.yaml", "data.yml")
_SLACK = 1e-6
"""How far past 0..1 a coordinate may be (float rounding in exported labels); it is then clipped."""


def find_data_yaml(folder: Path) -> Path | None:
    """The ``data.yaml`` of a YOLO dataset folder, or None."""
    return next((folder / name for name in DATA_YAML_NAMES if (folder / name).is_file()), None)


def load_yolo(path: Path, split: str | None = None) -> LabelledSet:
    """Open one split (``val``, else ``test``, else ``train`` when None) of a YOLO dataset."""
    spec = _read_yaml(path)
    names = _class_names(path, spec)
    split = _choose_split(path, spec, split)
    root = _root(path, spec)
    images = _split_images(path, root, spec[split])
    labels = [label_path(image) for image in images]
    _refuse_orphan_labels(root, spec[split], set(labels))
    keypoint_values = _keypoint_values(path, spec)
    truths = [_read_labels(label, len(names), keypoint_values) for label in labels]

    def get(index: int) -> tuple[np.ndarray, GroundTruth]:
        image = read_image(images[index])
        return image, scale_to_pixels(truths[index], image)

    header = f"yolo:{split}:{list(names)}".encode()
    digest = files_digest([file for pair in zip(images, labels, strict=True) for file in pair], header)
    return LabelledSet(path, "detect", len(images), digest, get, names)


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder in the path becomes ``labels``, the suffix ``.txt``."""
    parts = image.parts[:-1]
    if "images" in parts:
        at = len(parts) - 1 - parts[::-1].index("images")
        parts = (*parts[:at], "labels", *parts[at + 1 :])
    return Path(*parts, image.name).with_suffix(".txt")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise data_error(path, f"not a readable YAML file ({e})") from None
    if not isinstance(spec, dict):
        raise data_error(path, f"expected a YOLO data.yaml mapping (path, val, names), got {type(spec).__name__}")
    return spec


def _class_names(path: Path, spec: dict[str, Any]) -> tuple[str, ...]:
    names = spec.get("names")
    if isinstance(names, list) and names:
        return tuple(str(name) for name in names)
    if isinstance(names, dict) and names:
        if sorted(names) != list(range(len(names))):
            raise data_error(path, f"'names' keys must be the class ids 0..{len(names) - 1}, got {list(names)}")
        return tuple(str(names[index]) for index in range(len(names)))
    raise data_error(path, "no 'names': give the class names as a list or a dict {0: name, ...}")


def _choose_split(path: Path, spec: dict[str, Any], split: str | None) -> str:
    present = [name for name in SPLITS if spec.get(name)]
    if split is None and present:
        return present[0]
    if split in present:
        return split
    wanted = f" {split!r}" if split else ""
    raise data_error(path, f"has no split{wanted}; splits named: {present or 'none'} (of {list(SPLITS)})")


def _root(path: Path, spec: dict[str, Any]) -> Path:
    """The dataset root: ``path`` relative to the YAML's folder; the folder itself when absent or missing."""
    given = spec.get("path")
    if not given:
        return path.parent
    root = path.parent / str(given)
    return root if root.is_dir() else path.parent


def _entries(entry: Any) -> list[str]:
    return [str(item) for item in entry] if isinstance(entry, list) else [str(entry)]


def _split_images(path: Path, root: Path, entry: Any) -> list[Path]:
    images: list[Path] = []
    for item in _entries(entry):
        where = root / item
        if where.is_dir():
            images += sorted(p for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif where.is_file() and where.suffix.lower() == ".txt":
            images += _listed_images(where)
        else:
            raise data_error(path, f"split entry {item!r}: {where} is neither an image folder nor a .txt list")
    if not images:
        raise data_error(path, f"split {_entries(entry)} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def _listed_images(listing: Path) -> list[Path]:
    """Image paths from a split list file; relative ones are relative to the list's folder."""
    images = []
    for number, text in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        image = listing.parent / text.strip()
        if not image.is_file():
            raise data_error(listing, f"listed image {image} not found", number)
        images.append(image)
    return images


def _refuse_orphan_labels(root: Path, entry: Any, expected: set[Path]) -> None:
    """A label file in a split's labels folder whose image is missing is an error."""
    for item in _entries(entry):
        folder = root / item
        labels = label_path(folder / "x.jpg").parent
        if not folder.is_dir() or labels == folder or not labels.is_dir():
            continue
        for label in sorted(labels.rglob("*.txt")):
            if label not in expected:
                raise data_error(label, f"label file without an image: no {label.stem}.* under {folder}")


def _keypoint_values(path: Path, spec: dict[str, Any]) -> int | None:
    """Values per pose label line after ``class cx cy w h`` (``K * D`` of ``kpt_shape``), None if not pose."""
    shape = spec.get("kpt_shape")
    if shape is None:
        return None
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise data_error(path, f"'kpt_shape' must be [keypoints, 2 or 3], got {shape!r}")
    return shape[0] * shape[1]


def _read_labels(label: Path, num_classes: int, keypoint_values: int | None) -> GroundTruth:
    """Boxes xyxy in 0..1 and class ids of one label file; no file means no objects."""
    if not label.is_file():
        return empty_truth()
    rows = [
        _parse_line(label, number, text.split(), num_classes, keypoint_values)
        for number, text in enumerate(label.read_text(encoding="utf-8").splitlines(), 1)
        if text.strip()
    ]
    if not rows:
        return empty_truth()
    classes, boxes = zip(*rows, strict=True)
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64)


def _parse_line(
    label: Path, number: int, fields: list[str], num_classes: int, keypoint_values: int | None
) -> tuple[int, list[float]]:
    try:
        values = [float(field) for field in fields]
    except ValueError:
        raise data_error(label, f"not all numbers: {' '.join(fields)!r}", number) from None
    _check_columns(label, number, len(values), keypoint_values)
    class_id = values[0]
    if class_id != int(class_id) or not 0 <= class_id < num_classes:
        raise data_error(label, f"class {fields[0]} outside 0..{num_classes - 1} (data.yaml 'names')", number)
    is_polygon = keypoint_values is None and len(values) > 5
    coordinates = values[1:] if is_polygon else values[1:5]
    outside = [v for v in coordinates if not -_SLACK <= v <= 1 + _SLACK]
    if outside:
        raise data_error(label, f"coordinate {outside[0]} outside 0..1 (labels are normalised)", number)
    box = _polygon_box(coordinates) if is_polygon else _centre_box(coordinates)
    return int(class_id), list(np.clip(box, 0.0, 1.0))


def _check_columns(label: Path, number: int, columns: int, keypoint_values: int | None) -> None:
    if keypoint_values is not None and columns != 5 + keypoint_values:
        raise data_error(
            label, f"{columns} columns, expected {5 + keypoint_values}: class cx cy w h and the keypoints of "
            "data.yaml's kpt_shape", number,
        )
    if keypoint_values is None and not (columns == 5 or (columns >= 7 and columns % 2 == 1)):
        raise data_error(
            label, f"{columns} columns, expected 5 (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 ...: "
            "an odd number, at least 7)", number,
        )


def _centre_box(values: list[float]) -> list[float]:
    cx, cy, w, h = values
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _polygon_box(values: list[float]) -> list[float]:
    xs, ys = values[0::2], values[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]
