"""Real media written by the tests (videos, images, arrays) and a helper that reads a source to the end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from lepton_edge.config.pipeline import SourceConfig
from lepton_edge.core.results import Frame
from lepton_edge.runtime.sources import FrameReader, create_source


def level(i: int) -> int:
    """The grey level of frame ``i`` in the test videos, far enough apart to survive lossy coding."""
    return 10 + 20 * i


def write_video(path: Path, frames: int = 12, size: tuple[int, int] = (64, 48), fps: float = 10.0) -> Path:
    """An mp4v video whose frame ``i`` is a flat grey of :func:`level` (i)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened(), "this OpenCV cannot write mp4v"
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), level(i), np.uint8))
    writer.release()
    return path


def write_image(path: Path, value: int, size: tuple[int, int] = (32, 24)) -> Path:
    ok = cv2.imwrite(str(path), np.full((size[1], size[0], 3), value, np.uint8))
    assert ok, f"could not write {path}"
    return path


def read_all(config: SourceConfig, limit: int | None = None) -> tuple[list[Frame], FrameReader]:
    """Every frame of the source (or the first ``limit``, then stop), and the reader that read them."""
    stop = threading.Event()
    reader = FrameReader(create_source(config), config, stop)
    frames: list[Frame] = []
    for frame in reader:
        frames.append(frame)
        if limit is not None and len(frames) >= limit:
            stop.set()
    return frames, reader


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.02)
