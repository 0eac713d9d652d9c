"""What every labelled-data reader returns (:class:`LabelledSet`), and the pieces the readers share.

The readers themselves live in ``datasets.py`` (``.npz``, shapes ``.json``), ``yolo.py`` (Ultralytics
folders) and ``coco.py`` (COCO ``instances_*.json``); ``datasets.load_labelled`` picks one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lepton_edge.core.errors import ConfigError
from lepton_edge.runtime.sources.reader import import_cv2

Task = Literal["classify", "detect"]
GroundTruth = tuple[np.ndarray, np.ndarray]
"""Detection labels of one image: boxes ``(K, 4)`` float32 xyxy and class ids ``(K,)`` int64."""
Label = int | GroundTruth


@dataclass(frozen=True)
class LabelledSet:
    """A labelled data set: ``len()``, indexing and iteration give ``(image, label)``.

    ``label`` is a class id for ``task == "classify"`` and ``(boxes, class_ids)`` for ``"detect"``.
    ``sha256`` identifies the content (recorded in manifests next to accuracy figures). ``class_names``
    holds the names a YOLO ``data.yaml`` or COCO ``categories`` gives, in class-id order (empty otherwise).
    """

    path: Path
    task: Task
    size: int
    sha256: str
    _get: Callable[[int], tuple[np.ndarray, Any]]
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        if not 0 <= index < self.size:
            raise IndexError(f"{self.path}: sample {index} out of range 0..{self.size - 1}")
        return self._get(index)

    def __iter__(self) -> Iterator[tuple[np.ndarray, Any]]:
        return self.take(self.size)

    def take(self, samples: int | None) -> Iterator[tuple[np.ndarray, Any]]:
        """The first ``samples`` items (all when None or larger than the set)."""
        count = self.size if samples is None else min(samples, self.size)
        for index in range(count):
            yield self._get(index)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_error(path: Path | str, problem: str, line: int | None = None) -> ConfigError:
    """A ConfigError that names the file (and line) and points at the documented formats."""
    where = f"{path}:{line}" if line is not None else str(path)
    return ConfigError(f"{where}: {problem}. See docs/build.md (held-out data formats).")


def read_image(path: Path) -> np.ndarray:
    """An image file as the runtime's image source delivers it: BGR uint8 ``(H, W, 3)``."""
    cv2 = import_cv2()
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise data_error(path, f"cannot read the image ({e})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise data_error(path, "not an image OpenCV can decode")
    return image


def empty_truth() -> GroundTruth:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)


def scale_to_pixels(normalised: GroundTruth, image: np.ndarray) -> GroundTruth:
    """Boxes in 0..1 of the image's width and height -> xyxy in the image's pixels."""
    boxes, classes = normalised
    height, width = image.shape[:2]
    return (boxes * np.array([width, height, width, height], np.float32)).astype(np.float32), classes


def files_digest(files: list[Path], header: bytes = b"") -> str:
    """sha256 over ``header`` and each file's name and bytes (a missing file counts as empty)."""
    digest = hashlib.sha256(header)
    for path in files:
        digest.update(path.name.encode() + b"\0")
        if path.is_file():
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()
