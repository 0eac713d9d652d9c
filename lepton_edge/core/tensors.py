"""Name, shape and dtype of a model's inputs and outputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Dim = int | str | None
"""A tensor dimension: a fixed size, or a symbolic/unknown (dynamic) one."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, shape (dynamic dims as str/None) and numpy dtype of a model input or output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.shape)

    def accepts(self, array: np.ndarray) -> str | None:
        """None when ``array`` fits this spec, else the reason it does not."""
        if array.dtype != self.dtype:
            return f"input {self.name!r} expects dtype {self.dtype}, got {array.dtype}"
        if array.ndim != len(self.shape):
            return f"input {self.name!r} expects rank {len(self.shape)} {self.shape_str}, got shape {array.shape}"
        for want, got in zip(self.shape, array.shape, strict=True):
            if isinstance(want, int) and want > 0 and want != got:
                return f"input {self.name!r} expects shape {self.shape_str}, got {array.shape}"
        return None

    @property
    def shape_str(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"
