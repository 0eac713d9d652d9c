"""The calibration table: activation ranges of one model, kept in a versioned JSON file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lepton_edge import __version__
from lepton_edge.config.base import format_validation_error
from lepton_edge.core.errors import ConfigError
from lepton_edge.core.fileio import atomic_write

Method = Literal["minmax", "entropy", "percentile"]
METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
FORMAT_VERSION = 1
"""Version of the table's JSON layout; :func:`load_table` refuses any other. Optional fields added since
(``clipped``) keep it: tables written before them load unchanged."""


class CalibrationTable(BaseModel):
    """Activation ranges of one model, measured on one data set with one method (a versioned JSON file)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: int = Field(FORMAT_VERSION, description="Layout version of this file.")
    lepton_edge_version: str = Field(description="lepton-edge version that wrote the table.")
    created_at: str = Field(description="When the table was written (ISO 8601, UTC).")
    model_sha256: str = Field(description="Fingerprint of the calibrated model (ModelInfo.sha256).")
    model_name: str = Field(description="File name of the calibrated model.")
    method: Method = Field(description="How ranges were chosen: minmax, entropy or percentile.")
    percentile: float | None = Field(
        None, description="Percentile of absolute values kept (method percentile only)."
    )
    samples: int = Field(ge=1, description="Number of data-set items the model ran on.")
    seed: int = Field(description="Seed of the random sample of data-set items.")
    dataset: str = Field(description="The data set as given: folder, video or .npy/.npz path.")
    dataset_sha256: str = Field(description="sha256 of the data set's manifest (names, sizes, file hashes).")
    preprocess: dict[str, Any] = Field(
        description="Effective preprocessing used (PreprocessConfig); empty when the data set held "
        "model-input tensors that went in unchanged."
    )
    input_shapes: dict[str, list[int]] = Field(description="Shape of each model input during calibration.")
    ranges: dict[str, tuple[float, float]] = Field(
        description="Per tensor name: the (min, max) activation range, float32 values."
    )
    clipped: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="Tensors whose range in ranges keeps less than half of their observed maximum absolute "
        "value: their observed (min, max). Written only when not empty.",
    )

    @field_validator("ranges", "clipped")
    @classmethod
    def _ranges_ordered(cls, ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (lo, hi) in ranges.items():
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise ValueError(f"tensor {name!r}: range ({lo}, {hi}) must be finite with min <= max")
        return ranges


def write_table(table: CalibrationTable, path: str | Path) -> Path:
    """Write the table as indented JSON (atomically and durably: a reader never sees half a file). An empty
    ``clipped`` is left out, so such a table reads as before in versions that predate the field."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = table.model_dump(mode="json", exclude=None if table.clipped else {"clipped"})
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())
    return path


def _recalibrate_hint() -> str:
    return "create a new one: lepton-edge calibrate --model MODEL --data DATA --out TABLE"


def load_table(path: str | Path, *, model_sha256: str | None = None) -> CalibrationTable:
    """Read a table written by :func:`write_table`; with ``model_sha256``, refuse a table made for another
    model. Raises ConfigError naming the file and the field at fault."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: calibration table not found; {_recalibrate_hint()}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the calibration table: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not a calibration table (invalid JSON: {e}); {_recalibrate_hint()}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a calibration table (expected a JSON object); {_recalibrate_hint()}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        shown = "missing" if version is None else repr(version)
        raise ConfigError(
            f"{path}: format_version: {shown} is not a table format lepton-edge {__version__} reads "
            f"(it reads format {FORMAT_VERSION}); {_recalibrate_hint()}"
        )
    try:
        table = CalibrationTable.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"{path} (calibration table)")) from None
    if model_sha256 is not None and table.model_sha256 != model_sha256:
        raise ConfigError(other_model_message(path, table, model_sha256))
    return table


def other_model_message(where: Path | str, table: CalibrationTable, model_sha256: str) -> str:
    return (
        f"{where}: model_sha256: the table was made for another model ({table.model_name}, sha256 "
        f"{table.model_sha256[:16]}...), not this one (sha256 {model_sha256[:16]}...); the model changed since "
        f"it was calibrated. Calibrate this model again: lepton-edge calibrate --model MODEL --data "
        f"{table.dataset} --out TABLE"
    )

