"""Replay of recorded sensor tensors from ``.npy`` / ``.npz`` files, one frame per index of the first axis.

A ``.npz`` with several arrays (and none named ``frames``) is a recording of a model with several inputs: one array
per input name, all with the same number of frames; each frame is then a dict of name -> that array's entry.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lepton_edge.core.errors import SourceError
from lepton_edge.runtime.sources.base import Source
from lepton_edge.runtime.sources.reader import Pacer, float_param, parse_query

TENSOR_SUFFIXES = frozenset({".npy", ".npz"})


def parse_npy_uri(uri: str) -> tuple[str, float]:
    """``npy://path/to/file.npy?fps=10`` -> (path, fps). ``npy:///abs/path`` is absolute."""
    rest = uri.split("://", 1)[1]
    path, _, query = rest.partition("?")
    if not path:
        raise SourceError(f"{uri}: no file given; write npy://path/to/frames.npy?fps=10")
    fps = parse_query(uri, query, {"fps": float_param(0.0)}).get("fps", 0.0)
    return path, fps


MAX_ARRAYS = 64
"""Most arrays in one multi-input recording."""


class TensorSource(Source):
    """Frames from an array's first axis, returned unchanged (same dtype and shape, each a new array).

    For ``.npz`` the array named ``frames`` is used, else the only array, else every array (one per model input):
    then each frame is a dict ``{name: array[i]}``. With ``fps > 0`` frames are paced on the monotonic clock and
    the source is live; otherwise it is offline and unpaced.
    """

    kind: Literal["image", "tensor"] = "tensor"
    finite = True

    def __init__(self, path: str | Path, fps: float = 0.0, uri: str | None = None) -> None:
        self.path = Path(path)
        self.uri = uri or str(path)
        self.fps = fps
        self.live = fps > 0
        self._array: np.ndarray | None = None
        self._array_name: str | None = None
        self._arrays: dict[str, np.ndarray] | None = None
        self._next = 0
        self._pacer: Pacer | None = None

    def open(self) -> None:
        self.close()
        if not self.path.is_file():
            raise SourceError(f"tensor recording not found: {self.path}")
        array = self._load()
        if self._arrays is not None:
            self._check_arrays(self._arrays)
            self._array, self._next = next(iter(self._arrays.values())), 0
            self._pacer = Pacer(self.fps) if self.fps > 0 else None
            return
        if array.ndim == 0:
            raise SourceError(f"{self.path}: holds a single value; stack the frames along the first axis")
        if len(array) == 0:
            raise SourceError(f"{self.path}: holds no frames (first axis has length 0, shape {array.shape})")
        self._array, self._next = array, 0
        self._pacer = Pacer(self.fps) if self.fps > 0 else None

    def _load(self) -> np.ndarray:
        try:
            if self.path.suffix.lower() == ".npz":
                return self._load_npz()
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        except SourceError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise SourceError(
                f"{self.path}: cannot load it as a NumPy {self.path.suffix.lower()} file ({e}); "
                "object arrays (pickles) are not accepted"
            ) from None

    def _load_npz(self) -> np.ndarray:
        with np.load(self.path, allow_pickle=False) as archive:
            names = list(archive.files)
            if "frames" in names:
                name = "frames"
            elif len(names) == 1:
                name = names[0]
            elif not names:
                raise SourceError(f"{self.path}: the archive holds no arrays")
            elif len(names) > MAX_ARRAYS:
                raise SourceError(f"{self.path}: holds {len(names)} arrays, more than the {MAX_ARRAYS} inputs a "
                                  "recording may feed")
            else:
                self._arrays = {n: archive[n] for n in names}
                return next(iter(self._arrays.values()))
            self._array_name = name
            return archive[name]

    def _check_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """A multi-input recording: every array holds the same number of frames along its first axis."""
        scalar = [n for n, a in arrays.items() if a.ndim == 0]
        if scalar:
            raise SourceError(
                f"{self.path}: array(s) {scalar} hold a single value, not one entry per frame; every array of a "
                "multi-input recording needs the frames along its first axis (give constant inputs in "
                "model.inputs.constants)"
            )
        lengths = {n: len(a) for n, a in arrays.items()}
        if len(set(lengths.values())) != 1:
            shown = ", ".join(f"{n} {list(arrays[n].shape)}" for n in arrays)
            raise SourceError(
                f"{self.path}: the arrays hold different numbers of frames ({shown}); each array is one model "
                "input, with the same number of frames along the first axis"
            )
        if not next(iter(lengths.values())):
            raise SourceError(f"{self.path}: holds no frames (its arrays have length 0)")

    def read(self) -> np.ndarray | None:
        if self._array is None:
            raise SourceError(f"{self.path}: read() called before open()")
        if self._next >= len(self._array):
            return None
        if self._pacer is not None:
            self._pacer.wait()
        if self._arrays is not None:
            frames = {name: np.array(array[self._next]) for name, array in self._arrays.items()}
            self._next += 1
            return frames  # type: ignore[return-value]
        frame = np.array(self._array[self._next])
        self._next += 1
        return frame

    @property
    def array_names(self) -> list[str] | None:
        """The arrays of an opened multi-input recording (None for one array)."""
        return None if self._arrays is None else list(self._arrays)

    def close(self) -> None:
        self._array, self._arrays, self._pacer = None, None, None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"uri": self.uri, "live": self.live, "kind": self.kind, "path": str(self.path)}
        if self._array is not None:
            info.update(
                frames=len(self._array),
                frame_shape=list(self._array.shape[1:]),
                dtype=str(self._array.dtype),
                fps=self.fps or None,
            )
            if self._array_name is not None:
                info["array"] = self._array_name
            if self._arrays is not None:
                info["arrays"] = {n: {"shape": list(a.shape[1:]), "dtype": str(a.dtype)}
                                  for n, a in self._arrays.items()}
        return info
