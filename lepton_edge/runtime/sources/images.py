"""A single image file, or a folder of images read in name order."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lepton_edge.core.errors import SourceError
from lepton_edge.runtime.sources.base import Source
from lepton_edge.runtime.sources.reader import import_cv2

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class ImageSource(Source):
    """Images as BGR frames; offline. In a folder, files without an image suffix are ignored and images
    that cannot be decoded are skipped with a warning and counted (``skipped`` in :meth:`describe`)."""

    kind: Literal["image", "tensor"] = "image"
    finite = True

    def __init__(self, path: str | Path, uri: str | None = None, live: bool = False) -> None:
        self.path = Path(path)
        self.uri = uri or str(path)
        self.live = live
        self.skipped = 0
        self._files: list[Path] = []
        self._next = 0
        self._delivered = 0
        self._single: np.ndarray | None = None

    def open(self) -> None:
        import_cv2()
        self.close()
        self.skipped = 0
        if self.path.is_dir():
            self._files = sorted(
                (p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                key=lambda p: p.name,
            )
            if not self._files:
                raise SourceError(
                    f"{self.path}: the folder has no images (looked for "
                    f"{', '.join(sorted(IMAGE_SUFFIXES))}); for a video, give the video file's path"
                )
        elif self.path.is_file():
            image = _decode(self.path)
            if image is None:
                raise SourceError(f"{self.path}: cannot decode this image; it is corrupt or not an image")
            self._files, self._single = [self.path], image
        else:
            raise SourceError(f"image file or folder not found: {self.path}")

    def read(self) -> np.ndarray | None:
        while self._next < len(self._files):
            path = self._files[self._next]
            self._next += 1
            if self._single is not None:
                image, self._single = self._single, None
            else:
                image = _decode(path)
            if image is not None:
                self._delivered += 1
                return image
            self.skipped += 1
            log.warning("%s: skipping an image that cannot be decoded (corrupt or not an image)", path)
        if self._files and not self._delivered:
            raise SourceError(
                f"{self.path}: none of the {len(self._files)} image(s) in the folder could be decoded"
            )
        return None

    def close(self) -> None:
        self._files, self._next, self._delivered, self._single = [], 0, 0, None

    def describe(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "live": self.live,
            "kind": self.kind,
            "path": str(self.path),
            "images": len(self._files),
            "skipped": self.skipped,
        }


def _decode(path: Path) -> np.ndarray | None:
    """Decode an image file to BGR uint8, or None when it cannot be read or decoded."""
    cv2 = import_cv2()
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        log.warning("%s: cannot read: %s", path, e)
        return None
    if data.size == 0:
        return None
    try:
        return cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error:
        return None
