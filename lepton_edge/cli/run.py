"""`lepton-edge run`: the inference pipeline (with the device agent when the config has one)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lepton_edge.cli.inputs_args import add_input_arguments, inputs_from_args
from lepton_edge.cli.preprocess_args import add_preprocess_arguments, apply_preprocess_flags, preprocess_flags
from lepton_edge.config.device import DeviceConfig, load_config, parse_config
from lepton_edge.config.pipeline import PreprocessConfig
from lepton_edge.core.errors import ConfigError
from lepton_edge.device.service import run_service

DESCRIPTION = "Run source -> preprocess -> model -> postprocess -> sinks."
EPILOG = """examples:
  lepton-edge run --config deploy/demo.yaml
  lepton-edge run --model models/shapes_detector.onnx --source 'synthetic://shapes?fps=30' --sink console
  lepton-edge run --model det.onnx --source rtsp://cam.local/stream --sink jsonl:out/results.jsonl
  lepton-edge run --model det.onnx --source video.mp4 --sink video:out/annotated.mp4 --max-frames 300
  lepton-edge run --model yolo_dynamic.onnx --source rtsp://cam.local/stream --size 480x480 --sink console
  lepton-edge run --model out/artifacts/det-int8 --source video.mp4 --sink console   # the artifact's size
  lepton-edge run --model models/silero_vad.onnx --source models/silero_vad_audio.npz --constant sr=16000 \\
      --state stateN=state --sink jsonl:out/vad.jsonl     # a recurrent model: state fed back (docs/sensors.md)

Preprocessing: --size, --mean, --std, --color, --resize, --layout and --interpolation override the
config's preprocess section; what neither sets comes from the artifact's record (the preprocessing and
size it was built for), then the model's metadata (lepton.preprocess, Ultralytics imgsz), its static shape.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="device config YAML (see deploy/device.example.yaml)")
    parser.add_argument("--model", help="ONNX model path (overrides the config)")
    parser.add_argument("--source", help="source URI (overrides the config)")
    parser.add_argument("--sink", action="append", help="console | jsonl:PATH | video:PATH (repeatable; replaces "
                        "the config's sinks)")
    parser.add_argument("--device-id", help="device name in logs and telemetry")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    add_preprocess_arguments(parser, config=False)  # --config is the device config, with its preprocess section
    add_input_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_service(config_from_args(args), duration_s=args.duration, max_frames=args.max_frames,
                       origin=args.config or "command line")


def _sink_from_flag(spec: str) -> dict[str, Any]:
    """``console``, ``jsonl:PATH`` or ``video:PATH`` -> a sink config mapping."""
    kind, _, path = spec.partition(":")
    if kind == "console" and not path:
        return {"type": "console"}
    if kind in ("jsonl", "video") and path:
        return {"type": kind, "path": path}
    raise ConfigError(f"--sink {spec!r}: expected console, jsonl:PATH or video:PATH")


def config_from_args(args: argparse.Namespace) -> DeviceConfig:
    """The device config from ``--config`` with command-line overrides, or from flags alone."""

    if args.config:
        config = load_config(args.config)
        # python mode keeps secrets (json mode would mask a password as '**********')
        data = config.model_dump(mode="python", exclude_unset=True)
        base = None
    else:
        if not (args.model and args.source):
            raise ConfigError("give --config FILE, or both --model and --source")
        data, base = {}, Path.cwd()
    if args.model:
        data["model"] = {**data.get("model", {}), "path": args.model}
    if args.source:
        data["source"] = {**data.get("source", {}), "uri": args.source}
    if args.sink:
        data["sinks"] = [_sink_from_flag(s) for s in args.sink]
    if args.device_id:
        data["device_id"] = args.device_id
    inputs = inputs_from_args(args)  # --config's model.inputs with the flags over it
    if inputs is not None:
        data["model"] = {**data.get("model", {}), "inputs": inputs.model_dump(exclude_unset=True)}
    if preprocess_flags(args):
        current = PreprocessConfig.model_validate(data.get("preprocess", {})) if args.config else None
        flagged = apply_preprocess_flags(args, current)
        assert flagged is not None
        data["preprocess"] = flagged.model_dump(exclude_unset=True)
    origin = args.config or "command line"
    return parse_config(data, origin, base_dir=base)
