"""COCO detection labels: an ``instances_*.json`` (``images``, ``annotations``, ``categories``) and its images.

Class ids are positions in ``categories`` as the file lists them: the first category is class 0, the next
class 1, and so on, whatever its ``id``. The official COCO files list the 80 categories by ascending id
(1..90 with gaps), which is the class order of COCO-trained YOLO models (0 person ... 79 toothbrush); for
another model, list ``categories`` in the order of the model's class names. ``bbox`` is ``[x, y, w, h]`` in
pixels; crowd annotations (``iscrowd: 1``) are left out, since a held-out set has no ignore regions. Images
without annotations have no objects.

The images are looked for in the folder given, else next to the JSON file, in a folder named after it
(``instances_val2017.json`` -> ``val2017/``) beside it or one level up (the official layout), or in ``images/``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.engines.evaluation.labelled import (
    GroundTruth,
    LabelledSet,
    data_error,
    files_digest,
    read_image,
)

_SLACK_PIXELS = 1.0
"""How far past the image's edge a box may reach (rounding in exported labels); it is then clipped."""


def is_coco(raw: Any) -> bool:
    """Whether parsed JSON looks like COCO instances (has ``images`` and ``annotations``)."""
    return isinstance(raw, dict) and "images" in raw and "annotations" in raw


def load_coco(path: Path, raw: dict[str, Any], images: Path | None = None) -> LabelledSet:
    """Open a COCO instances file whose parsed content is ``raw``; ``images`` is the image folder if known."""
    classes = _class_index(path, raw.get("categories"))
    entries = _image_entries(path, raw["images"])
    folder = _image_folder(path, entries, images)
    files = [folder / entry["file_name"] for entry in entries]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise data_error(path, f"{len(missing)} image(s) not found in {folder}, first {missing[0].name!r}")
    truths = _ground_truth(path, raw["annotations"], entries, classes)
    sizes = [(entry.get("width"), entry.get("height")) for entry in entries]

    def get(index: int) -> tuple[np.ndarray, GroundTruth]:
        image = read_image(files[index])
        width, height = sizes[index]
        if width is not None and (image.shape[1], image.shape[0]) != (width, height):
            raise data_error(files[index], f"is {image.shape[1]}x{image.shape[0]}, but {path} says {width}x{height}")
        return image, truths[index]

    names = tuple(str(c.get("name", c["id"])) for c in raw["categories"])
    return LabelledSet(path, "detect", len(files), files_digest([path, *files]), get, names)


def _class_index(path: Path, categories: Any) -> dict[int, int]:
    """COCO category id -> class id (its position in ``categories``)."""
    if not isinstance(categories, list) or not categories:
        raise data_error(path, "'categories' must be a non-empty list of {id, name}")
    ids = [c.get("id") if isinstance(c, dict) else None for c in categories]
    if not all(isinstance(i, int) for i in ids) or len(set(ids)) != len(ids):
        raise data_error(path, f"'categories' need unique integer ids, got {ids}")
    return {category_id: index for index, category_id in enumerate(ids)}


def _image_entries(path: Path, images: Any) -> list[dict[str, Any]]:
    if not isinstance(images, list) or not images:
        raise data_error(path, "'images' must be a non-empty list of {id, file_name, width, height}")
    for index, entry in enumerate(images):
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), int) and entry.get("file_name")):
            raise data_error(path, f"images[{index}] needs an integer 'id' and a 'file_name', got {entry!r}")
    if len({entry["id"] for entry in images}) != len(images):
        raise data_error(path, "'images' has repeated ids")
    return images


def _image_folder(path: Path, entries: list[dict[str, Any]], given: Path | None) -> Path:
    """The first candidate folder holding the first image."""
    if given is not None:
        return Path(given)
    named = path.stem.removeprefix("instances_")
    candidates = [path.parent, path.parent / named, path.parent.parent / named, path.parent / "images"]
    first = entries[0]["file_name"]
    found = next((folder for folder in candidates if (folder / first).is_file()), None)
    if found is None:
        tried = ", ".join(str(folder) for folder in candidates)
        raise data_error(path, f"image {first!r} not found in {tried}; give the image folder")
    return found


def _ground_truth(
    path: Path, annotations: Any, entries: list[dict[str, Any]], classes: dict[int, int]
) -> list[GroundTruth]:
    """Per image, in ``images`` order: boxes xyxy in pixels and class ids."""
    if not isinstance(annotations, list):
        raise data_error(path, "'annotations' must be a list")
    position = {entry["id"]: index for index, entry in enumerate(entries)}
    boxes: dict[int, list[list[float]]] = defaultdict(list)
    labels: dict[int, list[int]] = defaultdict(list)
    for index, annotation in enumerate(annotations):
        owner, box, class_id = _annotation(path, index, annotation, position, entries, classes)
        if box is not None:
            boxes[owner].append(box)
            labels[owner].append(class_id)
    return [
        (np.array(boxes[i], np.float32).reshape(-1, 4), np.array(labels[i], np.int64)) for i in range(len(entries))
    ]


def _annotation(
    path: Path, index: int, annotation: Any, position: dict[int, int], entries: list[dict[str, Any]],
    classes: dict[int, int],
) -> tuple[int, list[float] | None, int]:
    """(image position, xyxy box or None for a crowd region, class id) of ``annotations[index]``."""
    where = f"annotations[{index}]" + (f" (id {annotation.get('id')})" if isinstance(annotation, dict) else "")
    if not isinstance(annotation, dict):
        raise data_error(path, f"{where} is not an object")
    if annotation.get("image_id") not in position:
        raise data_error(path, f"{where}: image_id {annotation.get('image_id')!r} is not in 'images'")
    if annotation.get("category_id") not in classes:
        raise data_error(path, f"{where}: category_id {annotation.get('category_id')!r} is not in 'categories'")
    owner = position[annotation["image_id"]]
    if annotation.get("iscrowd"):
        return owner, None, -1
    bbox = annotation.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
        raise data_error(path, f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}")
    return owner, _xyxy(path, where, bbox, entries[owner]), classes[annotation["category_id"]]


def _xyxy(path: Path, where: str, bbox: list[float], image: dict[str, Any]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    width, height = image.get("width", float("inf")), image.get("height", float("inf"))
    inside = x >= -_SLACK_PIXELS and y >= -_SLACK_PIXELS and x + w <= width + _SLACK_PIXELS
    if w < 0 or h < 0 or not inside or y + h > height + _SLACK_PIXELS:
        raise data_error(path, f"{where}: bbox {bbox} is not inside its {width}x{height} image")
    return [max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)]
