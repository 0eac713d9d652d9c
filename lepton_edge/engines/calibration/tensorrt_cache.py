"""The TensorRT calibration cache: the table's ranges in the text format TensorRT's calibrators replay."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np

from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.core.fileio import atomic_write
from lepton_edge.engines.calibration.table import CalibrationTable

MIN_AMAX = 1e-8
"""Smallest absolute range written to a TensorRT cache (a tensor that was always zero)."""

_TRT_HEADER = re.compile(r"^TRT-(\d+)-(EntropyCalibration2|EntropyCalibration|MinMaxCalibration|LegacyCalibration)$")
_HEX = re.compile(r"^[0-9a-fA-F]{1,8}$")


def trt_version_code(version: str) -> int:
    """TensorRT's version number as cache headers carry it: ``8.6.1`` -> 8601, ``10.3.0`` -> 100300 (a number
    given as such is kept). Raises ConfigError for anything else."""
    text = str(version).strip()
    if text.isdigit():
        return int(text)
    parts = [int(p) for p in re.findall(r"\d+", text)][:3]
    if not re.fullmatch(r"\d+(\.\d+){1,3}", text) or len(parts) < 2:
        raise ConfigError(f"TensorRT version {text!r}: expected e.g. 8.6.1, 10.3.0 or the header number 8601")
    major, minor, patch = [*parts, 0][:3]
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch


def tensorrt_algorithm(method: str) -> str:
    """The TensorRT calibrator whose cache header fits ``method``: MinMaxCalibration for minmax,
    EntropyCalibration2 otherwise (the ranges are already chosen; the calibrator only carries them)."""
    return "MinMaxCalibration" if method == "minmax" else "EntropyCalibration2"


def write_tensorrt_cache(table: CalibrationTable, path: str | Path, *, trt_version: int) -> Path:
    """Write the ranges as a TensorRT calibration cache: a ``TRT-<version>-<algorithm>`` header line, then
    ``tensor: <hex>`` per tensor, the hex being the float32 bits of the scale ``amax / 127`` (symmetric
    int8, ``amax = max(|min|, |max|)``)."""
    lines = [f"TRT-{int(trt_version)}-{tensorrt_algorithm(table.method)}"]
    for name, (lo, hi) in table.ranges.items():
        if "\n" in name:
            raise ModelError(f"tensor name {name!r} contains a line break; it cannot go into a TensorRT cache")
        scale = np.float32(max(abs(lo), abs(hi), MIN_AMAX) / 127.0)
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    return path


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
