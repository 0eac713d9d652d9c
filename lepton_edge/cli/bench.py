"""`lepton-edge bench`: raw backend vs naive loop vs pipeline, side by side (and the agent and scheduler suites)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lepton_edge.cli.preprocess_args import add_preprocess_arguments, preprocess_from_args
from lepton_edge.tools.bench import BENCH_DIR, SUITES, BenchOptions, print_report, run_bench, write_report

DESCRIPTION = 'Benchmarks print ratios measured in one run (absolute times on a shared machine are noise).'

EPILOG = """examples:
  lepton-edge bench                                   # demo detector and a YOLOv8n-sized model
  lepton-edge bench --model det.onnx --source video.mp4 --frames 300
  lepton-edge bench --suite latency --duration 60     # live 30 fps latency stability run
  lepton-edge bench --model yolo_dynamic.onnx --size 320x320 --suite throughput   # at another input size

The preprocessing flags (--size, --mean, --std, --color, --resize, --layout, --interpolation, over
--config's preprocess section) apply to every model measured.
"""

DEFAULTS = BenchOptions()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", help="ONNX model(s) to measure (default: the demo detector and "
                   "a generated YOLOv8n-sized 640x640 model)")
    p.add_argument("--source", help="offline source for the throughput suite (default: a generated 640x480 "
                   "video of the shapes scene)")
    p.add_argument("--frames", type=int, default=DEFAULTS.frames, help="frames per case and round (default 200)")
    p.add_argument("--rounds", type=int, default=DEFAULTS.rounds, help="interleaved rounds; medians are reported")
    p.add_argument("--case-seconds", type=float, default=DEFAULTS.case_seconds,
                   help="longest time per case and round (heavy models stop before --frames)")
    p.add_argument("--threads", type=int, default=DEFAULTS.threads,
                   help="onnxruntime intra-op threads (0: physical cores)")
    p.add_argument("--suite", action="append", choices=SUITES,
                   help="suites to run (default: throughput and latency; agent and scheduler need mosquitto)")
    p.add_argument("--duration", type=float, default=DEFAULTS.duration_s, help="latency suite length in seconds")
    p.add_argument("--fps", type=float, default=DEFAULTS.fps, help="latency suite source rate")
    p.add_argument("--output", default=str(BENCH_DIR / "bench.json"),
                   help=f"JSON report path (default {BENCH_DIR}/bench.json; generated inputs go to {BENCH_DIR})")
    add_preprocess_arguments(p)


def run(args: argparse.Namespace) -> int:
    options = BenchOptions(
        suites=tuple(args.suite or DEFAULTS.suites),
        models=tuple(Path(m) for m in args.model or ()),
        source=args.source,
        frames=args.frames,
        rounds=args.rounds,
        case_seconds=args.case_seconds,
        threads=args.threads,
        duration_s=args.duration,
        fps=args.fps,
        preprocess=preprocess_from_args(args),
    )
    report = run_bench(options)
    out = write_report(report, Path(args.output))
    print_report(report)
    print(f"\nreport: {out}")
    return 0
