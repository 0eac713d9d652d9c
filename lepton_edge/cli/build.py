"""`lepton-edge build`: an engine artifact (engine + manifest.json) from an ONNX model."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lepton_edge.cli.inputs_args import add_input_arguments, inputs_from_args
from lepton_edge.cli.inspect import format_manifest
from lepton_edge.cli.preprocess_args import add_preprocess_arguments, preprocess_from_args
from lepton_edge.config.base import read_yaml
from lepton_edge.config.device import load_config
from lepton_edge.core.errors import ConfigError
from lepton_edge.engines.artifacts import ARTIFACT_METADATA_KEY, FidelityInfo, MixedPrecisionInfo
from lepton_edge.engines.auto import build
from lepton_edge.engines.batching import stream_batch
from lepton_edge.engines.engine_cache import open_resolved, resolve
from lepton_edge.engines.options import MAX_BATCH, BuildOptions, CalibrationOptions, TrtOptions

DESCRIPTION = "Build an engine artifact (engine + manifest.json) from an ONNX model."
EPILOG = """examples:
  lepton-edge build --model models/digits_classifier.onnx --out out/artifacts/digits-fp32
  lepton-edge build --model models/shapes_detector.onnx --precision int8 --calibration-data calibration/shapes \\
      --validation calibration/shapes_heldout.json --out out/artifacts/shapes-int8
  lepton-edge build --model yolov8n.onnx --precision int8 --calibration-data frames/ --max-float-layers 8 \\
      --out out/artifacts/yolov8n-int8   # int8 failing the gate: up to 8 sensitive layers kept in float
  lepton-edge build --model yolov8n.onnx --precision int8 --calibration-data frames/ --mixed-precision off \\
      --out out/artifacts/yolov8n-int8   # all int8 or fail
  lepton-edge build --model models/shapes_detector.onnx --precision auto --calibration calib/shapes.json \\
      --validation calibration/shapes_heldout.json --out out/artifacts/shapes-auto
  lepton-edge build --model det.onnx --target tensorrt --precision fp16 --timing-cache out/timing.cache \\
      --out out/artifacts/det-fp16
  lepton-edge build --model yolo11n_dynamic.onnx --target tensorrt --precision fp16 --size 480x480 \\
      --max-batch 4 --out out/artifacts/yolo-480   # profile: 480x480, batch 1..4
  lepton-edge build --model yolov8n_320.onnx --batch dynamic --target tensorrt --config device.yaml \
      --out out/artifacts/yolo-batched   # profile batch 1 / streams feeding it / models.<name>.batch.max_batch
  lepton-edge build --verify-config /etc/lepton-edge/device.yaml   # boot-time: resolve through the cache
  lepton-edge build --model models/silero_vad.onnx --constant sr=16000 --state stateN=state \
      --precision int8 --calibration-data models/silero_vad_audio.npz --out out/artifacts/vad-int8

The artifact directory holds the engine and manifest.json (see docs/build.md). int8 needs --calibration
(a table from `lepton-edge calibrate`) or --calibration-data; --validation runs the accuracy gate and
fails the build when the drop exceeds --max-accuracy-drop points. Every int8 build also runs the
label-free fidelity gate against the fp32 model (held-out calibration items, else --validation, else the
calibration data); --no-fidelity-gate skips it. An int8 engine that fails it is built again with its
most sensitive layers in float (--mixed-precision auto: layers ranked on held-out calibration items, the
fewest that pass, at most --max-float-layers); the manifest's mixed_precision says which and why.

The manifest records the preprocessing and input size the engine was calibrated and built for: --size,
--config and the preprocessing flags, else the calibration table's, the model's metadata (lepton.preprocess,
Ultralytics imgsz), its static shape. `lepton-edge run` uses that record for whatever its own config leaves
unset. A model with a dynamic height or width and no size anywhere needs --size. TensorRT profiles default
to that size with a dynamic batch 1..--max-batch, tuned for --opt-batch; with --config, the opt batch is the
number of streams feeding the model and the max its models.<name>.batch.max_batch. --batch dynamic gives a
model exported at batch 1 a dynamic batch axis where its graph allows it (`lepton-edge inspect` says).
"""

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="ONNX model to build from")
    p.add_argument("--out", type=Path, help="artifact directory to write (replaced atomically)")
    p.add_argument("--target", default="onnxruntime-cpu",
                   help="onnxruntime-cpu (default), onnxruntime-<provider> or tensorrt")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8", "auto"],
                   help="engine precision; auto measures the candidates here and keeps the fastest that passes")
    p.add_argument("--calibration", type=Path, help="calibration table (JSON from `lepton-edge calibrate`)")
    p.add_argument("--calibration-data", help="calibrate from this data: image folder, video, .npy/.npz")
    p.add_argument("--calibration-method", help="calibration method when calibrating here (minmax, entropy, "
                   "percentile)")
    p.add_argument("--calibration-samples", type=int, help="calibration samples when calibrating here")
    p.add_argument("--validation", type=Path, help="labelled held-out data for the accuracy gate (.npz or "
                   "shapes .json)")
    p.add_argument("--validation-samples", type=int, help="use only the first N validation samples")
    p.add_argument("--max-accuracy-drop", type=float, default=1.0,
                   help="largest allowed drop in points of top-1 or mAP@0.5 (default 1.0)")
    p.add_argument("--no-fidelity-gate", action="store_true",
                   help="int8: accept the engine without the label-free fidelity gate against the fp32 model")
    p.add_argument("--fidelity-samples", type=int, help="most samples the fidelity gate compares (default 64; "
                   "whole recordings for a model with state fed back)")
    p.add_argument("--min-fidelity-map", type=float, default=0.90,
                   help="detectors: least mAP@0.5 against the fp32 model's own detections (default 0.90)")
    p.add_argument("--min-boxes-kept", type=float, default=0.90,
                   help="detectors: least fraction of the fp32 model's boxes kept (default 0.90)")
    p.add_argument("--min-top1-agreement", type=float, default=0.97,
                   help="classifiers: least top-1 agreement with the fp32 model (default 0.97)")
    p.add_argument("--mixed-precision", choices=["auto", "off"], default="auto",
                   help="int8 failing the fidelity gate: auto (default) keeps its most sensitive layers in float, "
                   "the fewest that pass; off fails the build")
    p.add_argument("--max-float-layers", type=int, metavar="N",
                   help="mixed precision: most layers kept in float (default: a quarter of the quantized layers)")
    p.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT builder workspace (MiB)")
    p.add_argument("--dla-core", type=int, help="TensorRT: run on this DLA core (Jetson)")
    p.add_argument("--device", type=int, default=0, help="TensorRT: build on this CUDA device (default 0)")
    p.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file (read and updated)")
    p.add_argument("--int8-mode", choices=["qdq", "legacy-cache"], default="qdq",
                   help="TensorRT int8: explicit Q/DQ model (default) or implicit calibration from a cache")
    p.add_argument("--profile", action="append", default=[],
                   help="TensorRT optimization profile for a dynamic input: NAME:MIN:OPT:MAX, shapes like "
                   "1x3x320x320 (repeat for more inputs); default: the input size (--size, else the model's) "
                   "with a dynamic batch 1..--max-batch")
    p.add_argument("--max-batch", type=int, metavar=f"1..{MAX_BATCH}",
                   help="TensorRT: largest batch of the default profile for a model with a dynamic batch (default: "
                   "the batch it was exported for, Ultralytics batch metadata, else 1: the runtime feeds one frame; "
                   "the batch dimension stays dynamic)")
    p.add_argument("--batch", metavar="dynamic|N",
                   help="give the image input a dynamic batch axis (dynamic) or a fixed batch N before calibration and "
                   "the engine build; refused, naming the node, when the graph hard-codes its batch (see `lepton-edge "
                   "inspect`). Default: the batch the model was exported with")
    p.add_argument("--opt-batch", type=int, metavar="N",
                   help="TensorRT: the batch the default profile is tuned for (default: with --config, the number of "
                   "streams feeding the model; else 1)")
    p.add_argument("--verify-config", type=Path, metavar="DEVICE_YAML",
                   help="resolve the config's model through the engine cache (build if needed) and exit 0 "
                   "when it is ready; for a boot-time oneshot unit")
    add_input_arguments(p)
    add_preprocess_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.verify_config:
        return _verify_config(args.verify_config)
    if not args.model or not args.out:
        raise ConfigError("lepton-edge build needs --model MODEL.onnx and --out DIR (or --verify-config FILE)")
    started = time.perf_counter()
    manifest = build(args.model, args.out, options_from_args(args))
    print(f"built {args.out} in {time.perf_counter() - started:.1f} s")
    print(format_manifest(manifest))
    if manifest.fidelity is not None:
        print(format_fidelity_info(manifest.fidelity))
    if manifest.mixed_precision is not None:
        print(format_mixed_precision(manifest.mixed_precision))
    return 0


def format_fidelity_info(fidelity: FidelityInfo) -> str:
    """The fidelity gate's line of the build summary."""
    measured = f"{fidelity.metric} {fidelity.value:.4f}" if fidelity.value is not None else f"{fidelity.metric} n/a"
    if fidelity.boxes_kept is not None:
        measured += f", boxes kept {fidelity.boxes_kept:.1%} of {fidelity.reference_boxes}"
    required = ", ".join(f"{name} >= {value:g}" for name, value in fidelity.required.items())
    return f"fidelity:    {measured} (required {required}; {fidelity.samples} samples, {fidelity.data})"


def format_mixed_precision(mixed: MixedPrecisionInfo) -> str:
    """The build summary's lines on the layers mixed precision kept in float."""
    before = ", ".join(f"{name} {value:.4f}" for name, value in mixed.before.items())
    after = ", ".join(f"{name} {value:.4f}" for name, value in mixed.after.items())
    names = ", ".join(f"{layer.name} ({layer.error:.3g})" for layer in mixed.kept[:8])
    more = f", ... {len(mixed.kept) - 8} more" if len(mixed.kept) > 8 else ""
    return (f"mixed:       {len(mixed.kept)} of {mixed.layers} layers in float (limit {mixed.limit}): {before} -> "
            f"{after}; {mixed.trials} gate runs, {mixed.seconds:.0f} s\n"
            f"             most sensitive first (output error with only that layer int8): {names}{more}")


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    profiles = [dict(_parse_profile(p) for p in args.profile)] if args.profile else None
    opt_batch, max_batch = _profile_batches(args)
    trt = TrtOptions(workspace_mb=args.workspace_mb, dla_core=args.dla_core, device=args.device,
                     timing_cache=args.timing_cache,
                     profiles=profiles, int8_mode=args.int8_mode, max_batch=max_batch, opt_batch=opt_batch)
    calibration = CalibrationOptions(method=args.calibration_method, samples=args.calibration_samples)
    given = {"fidelity_samples": args.fidelity_samples} if args.fidelity_samples is not None else {}
    return BuildOptions(**given, inputs=inputs_from_args(args), batch=_batch_arg(args.batch),
                        mixed_precision=args.mixed_precision, max_float_layers=args.max_float_layers,
                        target=args.target, precision=args.precision, calibration=args.calibration,
                        calibration_data=args.calibration_data, calibration_options=calibration,
                        validation_data=args.validation, validation_samples=args.validation_samples,
                        max_accuracy_drop=args.max_accuracy_drop, fidelity=not args.no_fidelity_gate,
                        min_fidelity_map=args.min_fidelity_map,
                        min_boxes_kept=args.min_boxes_kept, min_top1_agreement=args.min_top1_agreement, trt=trt,
                        preprocess=preprocess_from_args(args))


def _batch_arg(text: str | None) -> int | str | None:
    """``--batch``: dynamic, a number 1..MAX_BATCH, or None."""
    if text is None or text.strip().lower() == "dynamic":
        return None if text is None else "dynamic"
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_BATCH:
        raise ConfigError(f"--batch {text!r}: expected dynamic or a number 1..{MAX_BATCH}")
    return int(text)


def _profile_batches(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """(opt, max) batch of the TensorRT profile: the flags, else what --config's streams and models say."""
    opt, high = args.opt_batch, args.max_batch
    for name, value in (("--opt-batch", opt), ("--max-batch", high)):
        if value is not None and not 1 <= value <= MAX_BATCH:
            raise ConfigError(f"{name} {value}: must be 1..{MAX_BATCH}")
    config = getattr(args, "config", None)
    if config is None or args.model is None:
        return opt, high
    data = read_yaml(config)
    if not isinstance(data, dict):
        raise ConfigError(f"{config}: expected a mapping (a device config)")
    planned = stream_batch(data, args.model, config)
    return opt or planned.streams, high or planned.max_batch


def _verify_config(path: Path) -> int:
    """Resolve a device config's model through the engine cache (building it if needed)."""
    config = load_config(path)
    if config.model is None:  # idle: the workload (and its model) arrives later through the agent
        print(f"ready: {path} is idle (no model to build)")
        return 0
    resolution = resolve(config.model, config.backend, preprocess=config.preprocess)
    backend = open_resolved(resolution, config.model, config.backend, in_pipeline=False, preprocess=config.preprocess)
    try:
        info = json.loads(backend.metadata.get(ARTIFACT_METADATA_KEY, "{}"))
    finally:
        backend.close()
    detail = f" (precision {info['precision']}, fingerprint {info['fingerprint'][:12]})" if info else ""
    print(f"ready: {resolution.path}{detail} [{resolution.reason}]")
    return 0


def _parse_profile(text: str) -> tuple[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``images:1x3x320x320:1x3x320x320:4x3x320x320`` -> (name, (min, opt, max))."""
    parts = text.split(":")
    if len(parts) < 4:
        raise ConfigError(f"--profile {text!r}: expected NAME:MIN:OPT:MAX with shapes like 1x3x320x320")
    name = ":".join(parts[:-3])
    try:
        shapes = tuple(tuple(int(d) for d in s.lower().split("x")) for s in parts[-3:])
    except ValueError:
        raise ConfigError(f"--profile {text!r}: shapes must be integers joined by x, e.g. 1x3x320x320") from None
    return name, shapes  # type: ignore[return-value]
