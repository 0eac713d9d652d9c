"""`lepton-edge inspect`: an artifact (and whether it matches this machine) or an ONNX model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lepton_edge.engines.artifacts import Manifest, describe_artifact, read_manifest
from lepton_edge.engines.batching import batch_capability
from lepton_edge.engines.model_inputs import describe_inputs
from lepton_edge.engines.onnx_tools import (
    describe_model,
    explain_unsupported,
    inspect_onnx,
    runtime_warnings,
    unsupported_ops,
)

DESCRIPTION = "Show an artifact (and whether it matches this machine) or an ONNX model."
EPILOG = """examples:
  lepton-edge inspect out/artifacts/shapes-int8     # manifest, and whether it matches this machine
  lepton-edge inspect models/shapes_detector.onnx   # inputs, outputs, opset, metadata, operators, batching
  lepton-edge inspect out/artifacts/shapes-int8 --json

Exit status 1 when an artifact does not match this machine (each mismatched field is listed), or when
onnxruntime cannot create a session for a model (its unsupported or custom operators are named).
"batching" says whether a model runs several frames per call (a dynamic batch axis, a fixed batch B)
and, when it cannot, why: the node that hard-codes batch 1, state fed back, several framed inputs.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="artifact directory or ONNX model")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    path = args.path
    if path.is_dir():
        info = describe_artifact(path)
        mismatches = info["mismatches"]
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(f"artifact:    {path}")
            print(format_manifest(read_manifest(path)))
            if mismatches:
                print("matches this machine: NO")
                for problem in mismatches:
                    print(f"  - {problem}")
            else:
                print("matches this machine: yes")
        return 1 if mismatches else 0

    model = inspect_onnx(path)
    described = describe_model(model)
    missing = unsupported_ops(model, "onnxruntime-cpu")
    described["unsupported_ops"] = {"onnxruntime-cpu": missing}
    described["warnings"] = runtime_warnings(model)
    described["input_needs"] = describe_inputs(model)
    batching = batch_capability(model, probe=not missing)  # a model onnxruntime cannot run is not probed
    described["batching"] = batching.describe()
    if args.json:
        print(json.dumps(described, indent=2, default=str))
        return 1 if missing else 0
    print(f"model:       {path} ({described['size_bytes']} bytes, sha256 {model.sha256[:16]})")
    print(f"opset:       {model.opset} (ir {model.ir_version}, producer {model.producer or '-'})")
    for need in described["input_needs"]:
        print(f"input:       {need['name']} {need['shape']} {need['dtype']}  needs: {need['needs']}")
    for spec in described["outputs"]:
        print(f"output:      {spec['name']} {spec['shape']} {spec['dtype']}")
    print(f"quantized:   {'yes (Q/DQ)' if model.has_qdq else 'no'}")
    print(f"operators:   {', '.join(f'{op} x{n}' for op, n in sorted(model.ops.items()))}")
    print(f"onnxruntime: {'cannot run ' + ', '.join(missing) if missing else 'all operators supported'}")
    print(f"batching:    {batching.summary()}")
    for key, value in model.metadata.items():
        print(f"metadata:    {key} = {value[:100]}")
    if missing:
        print(f"error:       {explain_unsupported(missing)}")
    for warning in described["warnings"]:
        print(f"warning:     {warning}")
    return 1 if missing else 0


def format_manifest(m: Manifest) -> str:
    lines = [
        f"target:      {m.target}",
        f"precision:   {m.precision}",
        f"fingerprint: {m.fingerprint}",
        f"source:      {m.source_model.name} (sha256 {m.source_model.sha256[:16]}, opset {m.source_model.opset})",
        f"engine:      {m.engine.file} ({m.engine.size} bytes, sha256 {m.engine.sha256[:16]})",
    ]
    for spec in m.source_model.inputs:
        lines.append(f"input:       {spec.name} {spec.shape} {spec.dtype}")
    for spec in m.source_model.outputs:
        lines.append(f"output:      {spec.name} {spec.shape} {spec.dtype}")
    if m.preprocess:
        pre = m.preprocess
        calibrated = f", calibrated at {pre.calibrated_size[0]}x{pre.calibrated_size[1]}" if pre.calibrated_size else ""
        lines.append(f"preprocess:  {pre.input} {pre.size[0]}x{pre.size[1]} ({pre.size_source}{calibrated}), "
                     f"{pre.config.get('resize')}, {pre.config.get('color')}")
    if m.builder.batch is not None:
        lines.append(f"batch:       {m.builder.batch} (the image input's batch axis, set at build)")
    for profile in m.profiles:
        shown = "; ".join(f"{name} " + " / ".join("x".join(map(str, s)) for s in shapes)
                          for name, shapes in profile.items())
        lines.append(f"profile:     {shown} (min / opt / max)")
    if m.calibration:
        lines.append(f"calibration: {m.calibration.method}, {m.calibration.samples} samples "
                     f"(table {m.calibration.table_sha256[:16]})")
    if m.accuracy:
        a = m.accuracy
        lines.append(f"accuracy:    {a.metric} {a.value:.4f} vs fp32 {a.reference:.4f} (drop {a.drop:+.2f} points, "
                     f"allowed {a.max_drop:g}, {a.samples} samples)")
    if m.measurements:
        for c in m.measurements.candidates:
            fps = f"{c.fps:.1f}/s" if c.fps is not None else "-"
            mark = "*" if c.precision == m.measurements.chosen else " "
            lines.append(f"candidate: {mark} {c.precision:<5} {fps:>10}  {'passed' if c.passed else c.note}")
    runtime = ", ".join(f"{k} {v}" for k, v in m.runtime.model_dump().items() if v)
    lines.append(f"runtime:     {runtime}")
    device = m.device
    lines.append(f"device:      {device.gpu_name or device.cpu} ({', '.join(device.instruction_sets) or '-'})")
    return "\n".join(lines)
