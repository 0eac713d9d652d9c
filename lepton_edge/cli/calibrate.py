"""`lepton-edge calibrate`: INT8 activation ranges, TensorRT cache and QDQ model."""

from __future__ import annotations

import argparse
import logging
import re
import time
from pathlib import Path

from lepton_edge.config.device import load_config
from lepton_edge.config.pipeline import PreprocessConfig
from lepton_edge.engines.calibration import METHODS, calibrate, quantize_qdq, write_table, write_tensorrt_cache

log = logging.getLogger(__name__)

DESCRIPTION = ("Measure INT8 activation ranges on a data set with the runtime's preprocessing; write a versioned "
               "table, optionally a TensorRT cache and a QDQ ONNX model.")
EPILOG = """examples:
  lepton-edge calibrate --model models/shapes_detector.onnx --data calibration/shapes --method entropy \\
      --out out/shapes.calib.json --trt-cache out/shapes.calib.cache --qdq out/shapes.int8.onnx
  lepton-edge calibrate --model models/digits_classifier.onnx --data calibration/digits.npy \\
      --method minmax --out out/digits.calib.json --qdq out/digits.int8.onnx
  lepton-edge calibrate --model det.onnx --data video.mp4 --samples 256 --config device.yaml --out det.calib.json

Data sets: an image folder (read in name order), a video file, or a .npy/.npz recording (model-input
tensors, or uint8 images; for several inputs a .npz with one array per input name). Preprocessing is the
runtime's: --config takes it from a device config, else the model's lepton.preprocess metadata applies.
"""


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[xX,](\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 640x640, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="fp32 ONNX model")
    parser.add_argument("--data", required=True, help="image folder, video file, or .npy/.npz recording")
    parser.add_argument("--method", choices=METHODS, default="entropy", help="range method (default entropy)")
    parser.add_argument("--samples", type=int, default=128, help="items used, chosen at random (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice of items (default 0)")
    parser.add_argument("--percentile", type=float, default=99.99,
                        help="with --method percentile: percentile of absolute values kept (default 99.99)")
    parser.add_argument("--config", type=Path, help="device config YAML whose preprocess section to use")
    parser.add_argument("--size", type=_parse_size, metavar="WxH",
                        help="model input size for models with dynamic spatial dimensions")
    parser.add_argument("--out", required=True, type=Path, help="calibration table to write (JSON)")
    parser.add_argument("--trt-cache", type=Path, help="also write a TensorRT calibration cache here")
    parser.add_argument("--trt-version", type=int, default=8601,
                        help="TensorRT version number in the cache header (default 8601 = 8.6.1)")
    parser.add_argument("--qdq", type=Path, help="also write a QDQ int8 ONNX model here (for onnxruntime)")
    parser.add_argument("--per-tensor", action="store_true", help="QDQ weights per tensor, not per channel")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    preprocess = None
    if args.config:
        device = load_config(args.config)
        preprocess = device.preprocess
    if args.size:
        base = preprocess.model_dump(exclude_unset=True) if preprocess else {}
        preprocess = PreprocessConfig.model_validate({**base, "size": args.size})
    started = time.monotonic()
    table = calibrate(args.model, args.data, method=args.method, samples=args.samples, seed=args.seed,
                      percentile=args.percentile, preprocess=preprocess, progress=not args.no_progress)
    write_table(table, args.out)
    log.info("wrote %s: %d tensor ranges from %d sample(s), method %s, in %.1f s", args.out,
             len(table.ranges), table.samples, table.method, time.monotonic() - started)
    if args.trt_cache:
        write_tensorrt_cache(table, args.trt_cache, trt_version=args.trt_version)
        log.info("wrote %s (TensorRT calibration cache)", args.trt_cache)
    if args.qdq:
        quantize_qdq(args.model, table, args.qdq, per_channel=not args.per_tensor)
        log.info("wrote %s (QDQ int8 ONNX model)", args.qdq)
    return 0
