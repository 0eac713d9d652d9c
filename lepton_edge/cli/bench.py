"""`lepton-edge bench`: raw backend vs naive loop vs pipeline, side by side (and the agent and scheduler suites)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lepton_edge.cli.preprocess_args import add_preprocess_arguments, preprocess_from_args
from lepton_edge.tools.bench import BENCH_DIR, SUITES, BenchOptions, print_report, run_bench, write_report
from lepton_edge.tools.bench_streams import (
    StreamsBenchOptions,
    format_markdown,
    run_streams_bench,
    write_streams_report,
)
from lepton_edge.tools.bench_tracking import TrackingBenchOptions, format_report, run_tracking_bench

DESCRIPTION = 'Benchmarks print ratios measured in one run (absolute times on a shared machine are noise).'

EPILOG = """examples:
  lepton-edge bench                                   # demo detector and a YOLOv8n-sized model
  lepton-edge bench --model det.onnx --source video.mp4 --frames 300
  lepton-edge bench --suite latency --duration 60     # live 30 fps latency stability run
  lepton-edge bench --model yolo_dynamic.onnx --size 320x320 --suite throughput   # at another input size
  lepton-edge bench --tracking                        # our tracker vs supervision's ByteTrack (bench extra)
  lepton-edge bench --streams 4 --threads 2           # 4 streams: device runtime vs pipelines vs processes
  lepton-edge bench --streams 4 --streams-seconds 600 # ... and 8 live streams for 10 minutes (memory, fairness)

The preprocessing flags (--size, --mean, --std, --color, --resize, --layout, --interpolation, over
--config's preprocess section) apply to every model measured.
"""

DEFAULTS = BenchOptions()
STREAMS = StreamsBenchOptions()


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
    tracking = p.add_argument_group("tracking", "--tracking runs only the tracking benchmark (docs/tracking.md)")
    tracking.add_argument("--tracking", action="store_true",
                          help="tracking quality (IDF1, MOTA, ID switches; full rate and 50%% dropped), counts "
                          "and cost against supervision's ByteTrack on generated sequences")
    tracking.add_argument("--tracking-seeds", type=int, nargs="+", default=[1, 2, 3],
                          help="one generated sequence per seed (default 1 2 3)")
    tracking.add_argument("--tracking-seconds", type=float, default=30.0, help="length of each sequence (30 s)")
    streams = p.add_argument_group(
        "streams", "--streams N runs only the multi-stream benchmark (docs/streams.md): one device runtime with "
        "N streams on one model (batched) vs N single-stream pipelines vs N `lepton-edge run` processes, offline, "
        "then live streams; --rounds, --case-seconds (the measured window per case), --threads (the onnxruntime "
        "thread budget of each case; 0: physical cores), --model and --source apply")
    streams.add_argument("--streams", type=int, metavar="N", help="offline streams of the same video (e.g. 4)")
    streams.add_argument("--streams-live", type=int, default=STREAMS.live_streams, metavar="N",
                         help=f"live 30 fps streams of the live case (default {STREAMS.live_streams}; 0: no live case)")
    streams.add_argument("--streams-seconds", type=float, default=STREAMS.live_seconds,
                         help=f"length of the live case in seconds (default {STREAMS.live_seconds:g})")
    streams.add_argument("--streams-warmup", type=float, default=STREAMS.warmup_s,
                         help="seconds after every stream's first result before a case is measured "
                         f"(default {STREAMS.warmup_s:g})")
    streams.add_argument("--streams-batch-timeout-ms", type=float, default=STREAMS.batch_timeout_ms,
                         help=f"the model's batch timeout in the device runtime (default {STREAMS.batch_timeout_ms:g})")
    streams.add_argument("--streams-max-batch", type=int, metavar="B",
                         help="the model's batch.max_batch in the device runtime (default: the number of streams)")
    streams.add_argument("--streams-max-frame-age-ms", type=float, default=STREAMS.max_frame_age_ms,
                         help=f"every stream's max_frame_age_ms (default {STREAMS.max_frame_age_ms:g})")


def run_streams(args: argparse.Namespace) -> int:
    options = StreamsBenchOptions(
        streams=args.streams, rounds=args.rounds, case_seconds=args.case_seconds, warmup_s=args.streams_warmup,
        threads=args.threads, batch_timeout_ms=args.streams_batch_timeout_ms,
        max_batch=args.streams_max_batch,
        model=Path(args.model[0]) if args.model else None, video=args.source, live_streams=args.streams_live,
        live_seconds=args.streams_seconds, max_frame_age_ms=args.streams_max_frame_age_ms,
        work_dir=BENCH_DIR,
    )
    report = run_streams_bench(options)
    js, md = write_streams_report(report, Path(args.output).parent)
    print(format_markdown(report))
    print(f"report: {js} and {md}")
    return 0


def run_tracking(args: argparse.Namespace) -> int:
    options = TrackingBenchOptions(seeds=tuple(args.tracking_seeds), seconds=args.tracking_seconds)
    report = run_tracking_bench(options)
    out = Path(args.output).with_name("tracking.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(format_report(report))
    print(f"\nreport: {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.tracking:
        return run_tracking(args)
    if args.streams is not None:
        return run_streams(args)
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
