"""`lepton-edge compare`: fidelity, accuracy (and speed) of a candidate engine against its fp32 reference."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lepton_edge.cli.inputs_args import add_input_arguments, inputs_from_args
from lepton_edge.cli.preprocess_args import add_preprocess_arguments, preprocess_from_args
from lepton_edge.engines.evaluation.compare import (
    accuracy_gate,
    compare,
    measure_throughput,
    open_engine,
    sample_feeds,
    throughput_feeds,
)

DESCRIPTION = ("Fidelity (no labels needed), accuracy on labelled data (and --bench speed) of a candidate engine "
               "against its fp32 reference.")
EPILOG = """examples:
  lepton-edge compare --reference models/digits_classifier.onnx --candidate out/artifacts/digits-int8 \\
      --data models/digits_heldout.npz
  lepton-edge compare --reference models/shapes_detector.onnx --candidate out/artifacts/shapes-int8 \\
      --data calibration/shapes_heldout.json --samples 100 --bench
  lepton-edge compare --reference model.onnx --candidate model_int8.onnx --data heldout.npz --json
  lepton-edge compare --reference yolov8n.onnx --candidate out/artifacts/yolov8n-int8 --data frames/
  lepton-edge compare --reference models/silero_vad.onnx --candidate out/artifacts/vad-int8 \
      --data models/silero_vad_audio.npz --constant sr=16000 --state stateN=state
  lepton-edge compare --reference det.onnx --candidate det_int8.onnx --data frames/ --size 320x320 --resize stretch

The candidate is an artifact directory (from `lepton-edge build`) or another ONNX file. The data is a
labelled held-out set (adds the accuracy of both models) or anything the runtime reads: an image or
folder, a video, a .npy/.npz recording (fidelity only: the reference's own outputs are the truth). Data
formats: docs/build.md. --bench adds fp32 vs candidate throughput measured in interleaved rounds.
Both models get the same input: --size, --config and the preprocessing flags, else what a candidate
artifact records (the size it was built for), else the reference model's metadata.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", required=True, type=Path, help="the fp32 ONNX model")
    p.add_argument("--candidate", required=True, type=Path, help="artifact directory or ONNX model to check")
    p.add_argument("--data", required=True, help="labelled held-out data (.npz or shapes .json), or unlabelled "
                   "images, a folder, a video or a .npy/.npz recording")
    p.add_argument("--samples", type=int, help="use only the first N samples")
    p.add_argument("--max-drop", type=float, help="also apply the accuracy gate (labelled data only): exit 3 "
                   "when the candidate loses more than this many points")
    p.add_argument("--bench", action="store_true", help="also measure reference vs candidate throughput")
    p.add_argument("--rounds", type=int, default=7, help="interleaved benchmark rounds (default 7)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_input_arguments(p)
    add_preprocess_arguments(p)


def run(args: argparse.Namespace) -> int:
    report = compare(args.reference, args.candidate, args.data, samples=args.samples, inputs=inputs_from_args(args),
                     preprocess=preprocess_from_args(args))
    result: dict[str, Any] = {"report": report.to_dict()}
    if args.bench:
        reference = open_engine(args.reference)
        try:
            candidate = open_engine(args.candidate)
            try:
                backends = {"reference": reference, "candidate": candidate}
                model_inputs = inputs_from_args(args)
                feeds = (sample_feeds(args.reference, args.data, inputs=model_inputs,
                                      preprocess=preprocess_from_args(args)) if model_inputs is not None
                         else throughput_feeds(backends, preprocess_from_args(args)))
                rates = measure_throughput(backends, rounds=args.rounds, feeds=feeds)
            finally:
                candidate.close()
        finally:
            reference.close()
        result["bench"] = {**rates, "ratio": rates["candidate"]["fps"] / rates["reference"]["fps"]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report.format())
        if args.bench:
            bench = result["bench"]
            print(f"throughput: reference {bench['reference']['fps']:.1f}/s  candidate "
                  f"{bench['candidate']['fps']:.1f}/s  ratio {bench['ratio']:.2f}x "
                  f"(median of {args.rounds} interleaved rounds)")
    if args.max_drop is not None:
        accuracy_gate(report, args.max_drop)
        print(f"accuracy gate passed (drop {report.drop:.2f} <= {args.max_drop:g} points)")
    return 0
