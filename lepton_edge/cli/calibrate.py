"""`lepton-edge calibrate`: INT8 activation ranges, TensorRT cache and QDQ model."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from lepton_edge.cli.inputs_args import add_input_arguments, inputs_from_args
from lepton_edge.cli.preprocess_args import add_preprocess_arguments, preprocess_from_args
from lepton_edge.core.errors import ConfigError
from lepton_edge.engines.calibration import (
    METHODS,
    calibrate,
    quantize_qdq,
    trt_version_code,
    write_table,
    write_tensorrt_cache,
)
from lepton_edge.runtime.platform import probe_tensorrt

log = logging.getLogger(__name__)

DESCRIPTION = ("Measure INT8 activation ranges on a data set with the runtime's preprocessing; write a versioned "
               "table, optionally a TensorRT cache and a QDQ ONNX model.")
EPILOG = """examples:
  lepton-edge calibrate --model models/shapes_detector.onnx --data calibration/shapes --method entropy \\
      --out out/shapes.calib.json --trt-cache out/shapes.calib.cache --trt-version 8.6.1 \\
      --qdq out/shapes.int8.onnx
  lepton-edge calibrate --model models/digits_classifier.onnx --data calibration/digits.npy \\
      --method minmax --out out/digits.calib.json --qdq out/digits.int8.onnx
  lepton-edge calibrate --model det.onnx --data video.mp4 --samples 256 --config device.yaml --out det.calib.json
  lepton-edge calibrate --model yolo11n_dynamic.onnx --data frames/ --size 480x480 --out yolo.calib.json

Data sets: an image folder (read in name order), a video file, or a .npy/.npz recording (model-input
tensors, or uint8 images; for several inputs a .npz with one array per input name). Preprocessing is the
runtime's: --config takes it from a device config and the preprocessing flags (--size, --mean, --std,
--color, --resize, --layout, --interpolation) override it; the rest comes from the model's metadata
(lepton.preprocess, Ultralytics imgsz). The table records the preprocessing and input shapes, and
`lepton-edge build --calibration TABLE` builds for them unless told otherwise.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="fp32 ONNX model")
    parser.add_argument("--data", required=True, help="image folder, video file, or .npy/.npz recording")
    parser.add_argument("--method", choices=METHODS, default="entropy", help="range method (default entropy)")
    parser.add_argument("--samples", type=int, default=128, help="items used, chosen at random (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice of items (default 0)")
    parser.add_argument("--percentile", type=float, default=99.99,
                        help="with --method percentile: percentile of absolute values kept (default 99.99)")
    parser.add_argument("--out", required=True, type=Path, help="calibration table to write (JSON)")
    parser.add_argument("--trt-cache", type=Path, help="also write a TensorRT calibration cache here")
    parser.add_argument("--trt-version", help="TensorRT the cache is for, e.g. 8.6.1 or 10.3.0 (default: the "
                        "TensorRT installed here; TensorRT silently ignores a cache of another version)")
    parser.add_argument("--qdq", type=Path, help="also write a QDQ int8 ONNX model here (for onnxruntime)")
    parser.add_argument("--per-tensor", action="store_true", help="QDQ weights per tensor, not per channel")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_input_arguments(parser)
    add_preprocess_arguments(parser)


def run(args: argparse.Namespace) -> int:
    preprocess = preprocess_from_args(args)
    started = time.monotonic()
    table = calibrate(args.model, args.data, method=args.method, samples=args.samples, seed=args.seed,
                      percentile=args.percentile, preprocess=preprocess, progress=not args.no_progress,
                      inputs=inputs_from_args(args))
    write_table(table, args.out)
    log.info("wrote %s: %d tensor ranges from %d sample(s), method %s, in %.1f s", args.out,
             len(table.ranges), table.samples, table.method, time.monotonic() - started)
    if args.trt_cache:
        write_tensorrt_cache(table, args.trt_cache, trt_version=_cache_version(args.trt_version))
        log.info("wrote %s (TensorRT calibration cache)", args.trt_cache)
    if args.qdq:
        quantize_qdq(args.model, table, args.qdq, per_channel=not args.per_tensor)
        log.info("wrote %s (QDQ int8 ONNX model)", args.qdq)
    return 0


def _cache_version(given: str | None) -> int:
    """The TensorRT version number of the cache header: the one given, else the installed TensorRT's."""
    if given:
        return trt_version_code(given)
    installed, why = probe_tensorrt()
    if installed is None:
        raise ConfigError(f"--trt-cache: TensorRT is not installed here ({why}), so say which TensorRT will read "
                          "the cache: --trt-version 8.6.1 (or 10.3.0, ...); TensorRT ignores a cache of another "
                          "version and calibrates with no data")
    return trt_version_code(installed)
