"""``lepton-edge bench``: throughput and latency measured side by side in one process.

Absolute times on a shared machine are noise; the results are ratios between cases measured in
interleaved rounds of the same run (median of the rounds), with the same model, input and threads.

Suites:
- ``throughput``: per model, the raw backend loop (``infer`` on a ready tensor: the ceiling), a naive
  sequential loop (read, preprocess, infer, postprocess one after another, with the same components)
  and the pipeline, all on the same offline source.
- ``latency``: a live paced source through the pipeline: end-to-end p99 against the sum of stage
  medians, p99 of the last tenth against the first tenth, and memory over the run.

Generated inputs (a video of the shapes scene, the YOLOv8n-sized model) and the report go to ``out/bench`` under
the current folder. The command line is ``lepton_edge.cli.bench``.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from lepton_edge.config.device import parse_config
from lepton_edge.config.pipeline import PreprocessConfig, SourceConfig
from lepton_edge.core.results import now
from lepton_edge.data import DEMO_MODEL
from lepton_edge.data.yolov8n_sized import build_yolov8n_sized
from lepton_edge.device.controller import open_pipeline
from lepton_edge.engines.engine_cache import load_backend
from lepton_edge.runtime.assembly import build_pipeline
from lepton_edge.runtime.platform import machine_info
from lepton_edge.runtime.sources import FrameReader, create_source
from lepton_edge.runtime.sources.shapes import ShapesScene
from lepton_edge.tools.bench_agent import bench_agent_overhead, format_agent_overhead
from lepton_edge.tools.bench_scheduler import bench_scheduler, print_table

log = logging.getLogger(__name__)

BENCH_DIR = Path("out/bench")
SUITES = ("throughput", "latency", "agent", "scheduler")


@dataclass(frozen=True)
class BenchOptions:
    """What one bench run measures (the defaults are ``lepton-edge bench``'s)."""

    suites: tuple[str, ...] = ("throughput", "latency")
    models: tuple[Path, ...] = ()  # none: the demo detector and a generated YOLOv8n-sized 640x640 model
    source: str | None = None  # none: a generated 640x480 video of the shapes scene
    frames: int = 200
    rounds: int = 3
    case_seconds: float = 8.0
    threads: int = 0
    duration_s: float = 60.0
    fps: float = 30.0
    work_dir: Path = BENCH_DIR  # generated inputs
    preprocess: PreprocessConfig | None = None  # none: each model's own (artifact record, metadata, shape)


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def ensure_bench_video(path: Path, frames: int = 240, size: tuple[int, int] = (640, 480)) -> Path:
    """A real encoded video of the shapes scene (so 'decode' is real work), made once."""
    import cv2

    if path.exists() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, size)
    scene = ShapesScene(*size, seed=7)
    for _ in range(frames):
        writer.write(scene.render())
        scene.step(1 / 30)
    writer.release()
    tmp.replace(path)
    return path


def ensure_yolov8n_sized(path: Path, size: int = 640) -> Path:
    """Generate the YOLOv8n-sized random-weight model (lepton_edge/data/yolov8n_sized.py) once."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return build_yolov8n_sized(path, size=size)


def _device_config(model: Path, source: str, live: bool | None, threads: int, extra: dict | None = None,
                   preprocess: PreprocessConfig | None = None):
    data: dict[str, Any] = {
        "model": {"path": str(model)},
        "source": {"uri": source, "loop": True, **({"live": live} if live is not None else {})},
        "backend": {"type": "onnxruntime", "intra_op_threads": threads},
    }
    if preprocess is not None:
        data["preprocess"] = preprocess.model_dump(exclude_unset=True)
    data.update(extra or {})
    return parse_config(data, "bench")


def _median_rate(samples: list[float]) -> float:
    return statistics.median(samples) if samples else 0.0


def bench_throughput(model: Path, source: str, frames: int, rounds: int, threads: int,
                     case_seconds: float = 8.0, preprocess: PreprocessConfig | None = None) -> dict[str, Any]:
    """Raw backend loop vs naive loop vs pipeline on one model; frames/s medians and ratios.

    Each case runs ``frames`` frames or ``case_seconds``, whichever comes first (heavy models). ``preprocess``
    (optional) is the config's preprocess section: the size and normalisation fed."""

    config = _device_config(model, source, live=False, threads=threads, preprocess=preprocess)
    # One session for all three cases: the same model, input and thread settings.
    backend = load_backend(config, in_pipeline=True)
    rates: dict[str, list[float]] = {"raw": [], "naive": [], "pipeline": []}
    try:
        probe = build_pipeline(config, backend, max_frames=1)
        pre, post = probe.preprocessor, probe.postprocessor
        probe.run()
        if pre is None:
            raise ValueError("throughput bench needs an image source")
        feeds_name = backend.inputs[0].name
        # A real preprocessed frame: a zero tensor can drive random-weight networks into denormals,
        # which are far slower and would make the ceiling look low.
        first_config = SourceConfig(uri=source, live=False)
        first_reader = FrameReader(create_source(first_config), first_config, threading.Event())
        first = next(iter(first_reader))
        first_reader.close()
        ready = pre.new_buffer()
        pre(first.data, ready)
        for _ in range(rounds):
            # raw: the ceiling for inference
            t = now()
            n = 0
            while n < frames and now() - t < case_seconds:
                backend.infer({feeds_name: ready})
                n += 1
            rates["raw"].append(n / (now() - t))

            # naive: the same components, one after another, as users write it
            source_config = SourceConfig(uri=source, live=False, loop=True)
            reader = FrameReader(create_source(source_config), source_config, threading.Event())
            buffer = pre.new_buffer()
            t = now()
            n = 0
            for frame in reader:
                transform = pre(frame.data, buffer)
                outputs = backend.infer({feeds_name: buffer})
                post(outputs, transform)
                n += 1
                if n >= frames or now() - t >= case_seconds:
                    break
            rates["naive"].append(n / (now() - t))
            reader.close()

            # pipeline
            pipeline = build_pipeline(config, backend, max_frames=frames)
            t = now()
            stats = pipeline.run(duration_s=case_seconds)
            rates["pipeline"].append(stats["results"] / (now() - t))
    finally:
        backend.close()
    med = {k: _median_rate(v) for k, v in rates.items()}
    return {
        "model": str(model),
        "source": source,
        "input_shape": list(ready.shape),
        "frames_per_round": frames,
        "case_seconds": case_seconds,
        "rounds": rounds,
        "intra_op_threads": threads,
        "fps": med,
        "fps_rounds": rates,
        "ratios": {
            "pipeline_vs_raw": med["pipeline"] / med["raw"] if med["raw"] else 0.0,
            "pipeline_vs_naive": med["pipeline"] / med["naive"] if med["naive"] else 0.0,
            "naive_vs_raw": med["naive"] / med["raw"] if med["raw"] else 0.0,
        },
    }


class _Collector:
    """A sink that keeps every end-to-end latency and the memory over time (bench only)."""

    name = "collector"
    needs_image = False

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.memory: list[tuple[float, float]] = []
        self._next_mem = 0.0

    def offer(self, result) -> bool:
        self.latencies.append(result.latency_ms)
        t = now()
        if t >= self._next_mem:
            self.memory.append((t, rss_mb()))
            self._next_mem = t + 1.0
        return True

    def close(self) -> None:
        pass


def bench_latency(model: Path, duration_s: float, fps: float, threads: int,
                  preprocess: PreprocessConfig | None = None) -> dict[str, Any]:
    """Live paced source through the pipeline: latency stability and memory."""

    source = f"synthetic://shapes?fps={fps:g}&width=640&height=480&seed=3"
    config = _device_config(model, source, live=True, threads=threads, preprocess=preprocess)
    collector = _Collector()
    baseline_mb = rss_mb()
    pipeline = open_pipeline(config, extra_sinks=[collector])
    after_load_mb = rss_mb()
    try:
        stats = pipeline.run(duration_s=duration_s)
    finally:
        pipeline.backend.close()
    lat = np.asarray(collector.latencies[int(fps):])  # skip the first second (warm-up)
    tenth = max(1, len(lat) // 10)
    first, last = lat[:tenth], lat[-tenth:]
    # The stages inside end-to-end latency (capture -> result). A live source's read time is the wait for
    # the next camera frame and happens before capture, so it is not one of them.
    stage_medians = {k: stats["latency_ms"][k]["p50"] for k in ("queue", "preprocess", "infer", "postprocess")}
    sum_medians = sum(stage_medians.values())
    p99 = float(np.percentile(lat, 99)) if len(lat) else 0.0
    mem = [m for _, m in collector.memory]
    return {
        "model": str(model),
        "source": source,
        "duration_s": duration_s,
        "results": stats["results"],
        "drops": stats["drops"],
        "e2e_ms": {"p50": float(np.percentile(lat, 50)) if len(lat) else 0.0, "p99": p99},
        "stage_medians_ms": stage_medians,
        "sum_stage_medians_ms": sum_medians,
        "first_tenth_p99_ms": float(np.percentile(first, 99)) if len(first) else 0.0,
        "last_tenth_p99_ms": float(np.percentile(last, 99)) if len(last) else 0.0,
        "memory_mb": {"before_model": baseline_mb, "after_model": after_load_mb,
                      "run_start": mem[0] if mem else 0.0, "run_end": mem[-1] if mem else 0.0,
                      "run_max": max(mem) if mem else 0.0},
        "ratios": {
            "p99_vs_sum_of_stage_medians": p99 / sum_medians if sum_medians else 0.0,
            "last_tenth_p99_vs_first_tenth_p99": (float(np.percentile(last, 99)) / float(np.percentile(first, 99)))
            if len(first) and len(last) else 0.0,
            "memory_growth_mb": (mem[-1] - mem[0]) if mem else 0.0,
        },
    }


def _print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\nmachine: {m['cpu']}, {m['physical_cores']} physical / {m['logical_cores']} logical cores, "
          f"{' '.join(m['instruction_sets'])}; onnxruntime {m['onnxruntime']}")
    for r in report.get("throughput", []):
        f, ratio = r["fps"], r["ratios"]
        shape = "x".join(map(str, r.get("input_shape", []))) or "?"
        print(f"\nthroughput  {Path(r['model']).name} input {shape}  (up to {r['frames_per_round']} frames or "
              f"{r['case_seconds']:g} s per case, {r['rounds']} rounds, median fps; "
              f"threads={r['intra_op_threads'] or 'auto'})")
        print(f"  raw backend loop {f['raw']:9.1f}   naive loop {f['naive']:9.1f}   pipeline {f['pipeline']:9.1f}")
        print(f"  pipeline / raw   {ratio['pipeline_vs_raw']:.3f}   pipeline / naive {ratio['pipeline_vs_naive']:.3f}"
              f"   naive / raw {ratio['naive_vs_raw']:.3f}")
    lat = report.get("latency")
    if lat:
        r = lat["ratios"]
        print(f"\nlatency  {Path(lat['model']).name}  live {lat['source']}  {lat['duration_s']:.0f} s, "
              f"{lat['results']} results, drops {lat['drops'] or 'none'}")
        print(f"  e2e p50 {lat['e2e_ms']['p50']:.2f} ms  p99 {lat['e2e_ms']['p99']:.2f} ms  "
              f"sum of stage medians {lat['sum_stage_medians_ms']:.2f} ms")
        print(f"  p99 / sum of stage medians {r['p99_vs_sum_of_stage_medians']:.3f}   "
              f"last-tenth p99 / first-tenth p99 {r['last_tenth_p99_vs_first_tenth_p99']:.3f}   "
              f"memory growth {r['memory_growth_mb']:+.1f} MB over the run")


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run the chosen suites; the report (machine, time and one entry per suite) as JSON-ready data."""
    report: dict[str, Any] = {"machine": machine_info(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    first_model = options.models[0] if options.models else None
    if "throughput" in options.suites:
        models = list(options.models) or [DEMO_MODEL, ensure_yolov8n_sized(options.work_dir / "yolov8n_sized_640.onnx")]
        source = options.source or str(ensure_bench_video(options.work_dir / "shapes_640x480.mp4"))
        report["throughput"] = []
        for model in models:
            print(f"measuring throughput of {model.name} ...", file=sys.stderr, flush=True)
            report["throughput"].append(bench_throughput(model, source, options.frames, options.rounds,
                                                         options.threads, options.case_seconds,
                                                         preprocess=options.preprocess))
    if "latency" in options.suites:
        model = first_model or DEMO_MODEL
        print(f"measuring live latency of {model.name} for {options.duration_s:.0f} s ...", file=sys.stderr, flush=True)
        report["latency"] = bench_latency(model, options.duration_s, options.fps, options.threads,
                                          preprocess=options.preprocess)
    if "agent" in options.suites:
        print("measuring telemetry and results-sink overhead ...", file=sys.stderr, flush=True)
        report["agent"] = bench_agent_overhead(first_model, frames=options.frames, rounds=options.rounds,
                                               threads=options.threads, preprocess=options.preprocess)
    if "scheduler" in options.suites:
        print("measuring scheduler ingestion, placement and failover ...", file=sys.stderr, flush=True)
        report["scheduler"] = bench_scheduler()
    return report


def write_report(report: dict[str, Any], path: Path) -> Path:
    """Write the report as indented JSON (folders made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path


def print_report(report: dict[str, Any]) -> None:
    """The report as tables on stdout."""
    _print_table(report)
    if report.get("agent"):
        print("\n" + format_agent_overhead(report["agent"]))
    if report.get("scheduler"):
        print_table(report["scheduler"])
