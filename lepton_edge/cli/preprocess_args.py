"""The preprocessing arguments shared by every command that feeds a model: run, calibrate, build, compare, bench.

``--size WxH``, ``--mean``, ``--std``, ``--scale``, ``--color``, ``--resize``, ``--layout`` and ``--interpolation``
set the fields of the same name of :class:`~lepton_edge.config.pipeline.PreprocessConfig`, over the ``preprocess``
section of ``--config`` (a device config). Values are validated by that schema, so a bad one fails with its message
(exit status 2). What the user leaves unset comes, in order, from what a built artifact records, the model's
metadata (``lepton.preprocess``, Ultralytics ``imgsz``), then its static shape.
"""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lepton_edge.config.base import format_validation_error, read_yaml
from lepton_edge.config.pipeline import PreprocessConfig
from lepton_edge.core.errors import ConfigError

FLAGS = ("size", "mean", "std", "scale", "color", "resize", "layout", "interpolation")
"""The PreprocessConfig fields with a flag of the same name."""

ORIGIN = "preprocessing flags"

_SIZE = re.compile(r"\s*(\d+)\s*(?:[xX,]\s*(\d+)\s*)?")


def _choices(field: str) -> str:
    """``a|b|c``: the values PreprocessConfig allows for ``field`` (its Literal), for the help."""
    annotation = PreprocessConfig.model_fields[field].annotation
    values = [v for arg in typing.get_args(annotation) or (annotation,) for v in typing.get_args(arg) or (arg,)
              if isinstance(v, str)]
    return "|".join(values)


def add_preprocess_arguments(parser: argparse.ArgumentParser, *, config: bool = True) -> None:
    """Add the preprocessing flags (and, with ``config``, ``--config DEVICE_YAML`` whose preprocess section they
    override) to ``parser``, in a group of their own."""
    group = parser.add_argument_group(
        "preprocessing",
        "Frame to tensor, as the runtime does it. Flags override the preprocess section of --config; what neither "
        "sets comes from the artifact's record, the model's metadata (lepton.preprocess, Ultralytics imgsz), then "
        "its static shape.")
    if config:
        group.add_argument("--config", type=Path, metavar="DEVICE_YAML",
                           help="device config (or a YAML file with just a preprocess section) whose "
                           "preprocess section applies")
    group.add_argument("--size", metavar="WxH", help="model input width x height, e.g. 640x640 (or 640); needed for "
                       "dynamic spatial dims unless the artifact or the model's metadata gives one")
    group.add_argument("--mean", metavar="M[,M,M]", help="subtracted per channel (RGB order) after scaling to 0..1, "
                       "e.g. 0.485,0.456,0.406")
    group.add_argument("--std", metavar="S[,S,S]", help="divisor per channel after the mean, e.g. 0.229,0.224,0.225")
    group.add_argument("--scale", metavar="F", help="multiplier of pixel values before the mean (default 1/255; 1 "
                       "for a mean and std in pixel units, e.g. --scale 1 --mean 123.675,116.28,103.53)")
    group.add_argument("--color", metavar=_choices("color"), help="channel order the model expects (default rgb)")
    group.add_argument("--resize", metavar=_choices("resize"),
                       help="letterbox (default), stretch, center-crop (Ultralytics classifiers) or none")
    group.add_argument("--layout", metavar=_choices("layout"), help="tensor layout (default: from the model input)")
    group.add_argument("--interpolation", metavar=_choices("interpolation"),
                       help="resampling: auto (default: area when shrinking), linear or area")


def parse_size(text: str) -> list[int]:
    """``640x480`` -> ``[640, 480]``, ``640`` -> ``[640, 640]``; ConfigError for anything else (bounds are the
    schema's)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ConfigError(f"{ORIGIN}: --size: expected WIDTHxHEIGHT such as 640x640 (or one number for a square), "
                          f"got {text!r}")
    width = int(match[1])
    return [width, int(match[2]) if match[2] else width]


def preprocess_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The PreprocessConfig fields the command line sets (raw, not yet validated)."""
    flags: dict[str, Any] = {}
    for name in FLAGS:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name == "size":
            value = parse_size(value)
        elif name in ("mean", "std"):
            value = [part.strip() for part in value.split(",")]
        flags[name] = value
    return flags


def apply_preprocess_flags(args: argparse.Namespace, base: PreprocessConfig | None) -> PreprocessConfig | None:
    """``base`` with the command line's flags set over it (validated); ``base`` itself when no flag is given."""
    flags = preprocess_flags(args)
    if not flags:
        return base
    data = {**(base.model_dump(exclude_unset=True) if base is not None else {}), **flags}
    try:
        return PreprocessConfig.model_validate(data)
    except ValidationError as e:
        message = format_validation_error(e, ORIGIN)
        for name in flags:  # name the flag, not the schema field
            message = re.sub(rf"(: ){name}(\.\d+)?: ", rf"\1--{name}\2: ", message)
        raise ConfigError(message) from None


def preprocess_from_args(args: argparse.Namespace) -> PreprocessConfig | None:
    """The preprocessing the command line asks for: ``--config``'s preprocess section (when given) with the flags
    over it; None when neither is given (then the artifact's record and the model's metadata decide)."""
    config = getattr(args, "config", None)
    return apply_preprocess_flags(args, load_preprocess_section(config) if config is not None else None)


def load_preprocess_section(path: Path) -> PreprocessConfig:
    """The ``preprocess`` section of a YAML file (a device config, or a file with only that section), validated;
    ConfigError naming the file and field otherwise."""
    data = read_yaml(Path(path))
    section = data.get("preprocess", {}) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: expected a mapping with a preprocess section (a device config)")
    try:
        return PreprocessConfig.model_validate(section)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"{path} preprocess")) from None
