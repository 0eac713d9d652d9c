"""The model-input arguments shared by build, calibrate and compare: constants, state fed back, recorded arrays.

``--constant NAME=VALUE``, ``--state OUTPUT=INPUT``, ``--recorded INPUT=ARRAY`` and ``--state-reset`` set the fields
of :class:`~lepton_edge.config.pipeline.InputsConfig` (``model.inputs`` of a device config), over the
``model.inputs`` section of ``--config`` when that is given. Values are validated by that schema.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lepton_edge.config.base import format_validation_error, read_yaml
from lepton_edge.config.pipeline import InputsConfig
from lepton_edge.core.errors import ConfigError

ORIGIN = "model input flags"
_PAIR = re.compile(r"\s*([^=]+?)\s*=\s*(.+?)\s*", re.S)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the model-input flags to ``parser``, in a group of their own."""
    group = parser.add_argument_group(
        "model inputs",
        "Models with several inputs (sensor, recurrent): which inputs are constants, which take state fed back from "
        "an output; the others read the recording's array of their name (a .npz, one array per input). Flags add "
        "to the model.inputs section of --config, when given.")
    group.add_argument("--constant", action="append", default=[], metavar="NAME=VALUE",
                       help="input NAME gets VALUE with every frame (a number or a YAML/JSON list), e.g. sr=16000")
    group.add_argument("--state", action="append", default=[], metavar="OUTPUT=INPUT",
                       help="feed output OUTPUT back to input INPUT on the next frame (zeros first), e.g. "
                       "stateN=state")
    group.add_argument("--recorded", action="append", default=[], metavar="INPUT=ARRAY",
                       help="input INPUT reads the recording's array ARRAY (default: the array named like the input)")
    group.add_argument("--state-reset", choices=["on_reopen", "every_frame", "never"],
                       help="when state returns to zeros (default on_reopen)")


def _pairs(flag: str, values: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for text in values:
        match = _PAIR.fullmatch(text)
        if match is None:
            raise ConfigError(f"{ORIGIN}: --{flag} {text!r}: expected NAME=VALUE")
        pairs.append((match[1], match[2]))
    return pairs


def _value(flag: str, name: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{ORIGIN}: --{flag} {name}={text!r}: not a number or a list: {e}") from None


def load_inputs_section(path: Path) -> dict[str, Any]:
    """The ``model.inputs`` section of a device config (empty when it has none)."""
    data = read_yaml(Path(path))
    model = data.get("model") if isinstance(data, dict) else None
    section = model.get("inputs", {}) if isinstance(model, dict) else {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: model.inputs must be a mapping")
    return section


def inputs_from_args(args: argparse.Namespace) -> InputsConfig | None:
    """The InputsConfig the command line asks for; None when neither flags nor --config's model.inputs give one."""
    config = getattr(args, "config", None)
    data: dict[str, Any] = load_inputs_section(config) if config is not None else {}
    constants = dict(data.get("constants") or {})
    for name, text in _pairs("constant", getattr(args, "constant", [])):
        constants[name] = _value("constant", name, text)
    state = list(data.get("state") or [])
    state += [{"output": output, "input": inp} for output, inp in _pairs("state", getattr(args, "state", []))]
    recorded = {**(data.get("recorded") or {}), **dict(_pairs("recorded", getattr(args, "recorded", [])))}
    merged = {**data, "constants": constants, "state": state, "recorded": recorded}
    if getattr(args, "state_reset", None):
        merged["state_reset"] = args.state_reset
    if not (constants or state or recorded or len(merged) > 3):
        return None
    try:
        return InputsConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, ORIGIN)) from None
