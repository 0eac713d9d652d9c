"""``lepton-edge bench --streams N``: many streams on one model, three ways, side by side in one run.

Offline (the same N looping offline streams of one 1280x720 video, the same model, interleaved rounds, medians):

- ``a`` **device**: one :class:`~lepton_edge.device.controller.RuntimeController` on a multi-form config (N
  streams, one model, N workloads): the device's own code path, with whatever model sharing and batching it does;
- ``b`` **pipelines**: N single-stream pipelines in this process, each its own model at batch 1, all at once;
- ``c`` **processes**: N ``lepton-edge run`` processes, each one stream with a jsonl sink.

Each case gets the same onnxruntime thread budget: case a's one model gets all of it; in b and c each of the N
models gets ``max(1, budget // N)`` intra-op threads. A case is measured in the same way: once every stream
has a result, ``warmup_s`` pass, then the results of each stream over ``case_seconds`` give its frames per
second (for c, the lines its process has written; the sink flushes every result).

When the device's streams do not share one batched runner (one model per workload), case ``a_batched``
measures one shared :class:`~lepton_edge.runtime.batcher.ModelRunner` built from the runtime's pieces, so the
gain of batching is visible either way.

Live: ``live_streams`` live streams (the video played at its own 30 fps, in a loop) through case a for
``live_seconds``: per-stream fps and its spread around the mean, per-stream p99 end-to-end latency against the
stream's ``max_frame_age_ms``, drops by reason, and the process memory sampled every second (growth and slope).

The report goes to ``streams.json`` and ``streams.md`` beside ``--output``; generated inputs to ``out/bench``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from lepton_edge.config.device import DeviceConfig, parse_config
from lepton_edge.core.results import now
from lepton_edge.data.yolov8n_sized import build_bench_model
from lepton_edge.device.controller import RuntimeController
from lepton_edge.engines.engine_cache import load_backend
from lepton_edge.runtime.assembly import build_pipeline, make_postprocessor, make_preprocessor
from lepton_edge.runtime.batcher import ModelRunner
from lepton_edge.runtime.pipeline import Pipeline
from lepton_edge.runtime.platform import machine_info
from lepton_edge.runtime.sources import FrameReader, create_source
from lepton_edge.tools.bench import BENCH_DIR, ensure_bench_video

MODEL_NAME = "det"
CASES = {
    "a": "one device runtime, N streams -> one model",
    "a_batched": "one shared batched runner (runtime pieces)",
    "b": "N single-stream pipelines, one process",
    "c": "N `lepton-edge run` processes",
}
TARGETS = {"a_vs_c": 1.25, "a_vs_b": 1.15}


@dataclass(frozen=True)
class StreamsBenchOptions:
    """What one ``bench --streams`` run measures (the defaults are the command's)."""

    streams: int = 4
    rounds: int = 3
    case_seconds: float = 8.0  # measured window per case and round
    warmup_s: float = 2.0  # after every stream's first result, before the window
    threads: int = 0  # onnxruntime thread budget per case (0: physical cores)
    batch_timeout_ms: float = 10.0
    max_batch: int | None = None  # the model's batch.max_batch in case a (None: the number of streams)
    size: int = 320  # model input side
    video: str | None = None  # none: a generated 1280x720 video of the shapes scene
    model: Path | None = None  # none: the generated YOLOv8n-architecture model with a dynamic batch axis
    video_frames: int = 300
    live_streams: int = 8  # 0: no live case
    live_seconds: float = 20.0
    max_frame_age_ms: float = 500.0
    start_timeout_s: float = 90.0  # longest wait for every stream's first result
    work_dir: Path = BENCH_DIR


@dataclass
class CaseRun:
    """One case measured once: results per stream over the window."""

    fps: dict[str, float]
    window_s: float
    cpu_s: float  # CPU time the case used over the window (its process, or its processes)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.fps.values())

    @property
    def per_cpu_second(self) -> float:
        """Frames per CPU second: what the case makes of the cores it got (the machine may be shared)."""
        return self.total * self.window_s / self.cpu_s if self.cpu_s > 0 else 0.0


def thread_budget(threads: int) -> int:
    return threads or psutil.cpu_count(logical=False) or 1


def streams_config(model: Path, video: str, n: int, *, threads: int, live: bool, batch_timeout_ms: float,
                   max_frame_age_ms: float, max_batch: int | None = None) -> DeviceConfig:
    """The multi-form device config: streams s0..s{n-1} of ``video``, one model, workloads w0..w{n-1}."""
    streams = {f"s{i}": {"uri": video, "loop": True, "live": live, "max_frame_age_ms": max_frame_age_ms}
               for i in range(n)}
    data = {
        "device_id": "bench-streams",
        "streams": streams,
        "models": {MODEL_NAME: {"path": str(model), "batch": {"timeout_ms": batch_timeout_ms, "max_batch": max_batch},
                                "backend": {"type": "onnxruntime", "intra_op_threads": threads}}},
        "workloads": {f"w{i}": {"stream": f"s{i}", "model": MODEL_NAME} for i in range(n)},
    }
    return parse_config(data, "bench --streams")


def single_config(model: Path, video: str, *, threads: int, stream_id: str, jsonl: Path | None = None,
                  max_frame_age_ms: float = 500.0) -> dict[str, Any]:
    """One offline stream through its own model (what one ``lepton-edge run`` process gets), as a mapping."""
    data: dict[str, Any] = {
        "device_id": f"bench-{stream_id}",
        "model": {"path": str(model)},
        "backend": {"type": "onnxruntime", "intra_op_threads": threads},
        "source": {"uri": video, "id": stream_id, "loop": True, "live": False, "max_frame_age_ms": max_frame_age_ms},
    }
    if jsonl is not None:
        data["sinks"] = [{"type": "jsonl", "path": str(jsonl), "flush_every": 1}]
    return data


def process_cpu_s(processes: list[psutil.Process] | None = None) -> float:
    """User + system CPU seconds of ``processes`` (default: this one), all their threads."""
    total = 0.0
    for process in processes or [psutil.Process()]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measure(counts: Callable[[], dict[str, int]], names: list[str], warmup_s: float, seconds: float,
            start_timeout_s: float, alive: Callable[[], str | None] = lambda: None,
            cpu: Callable[[], float] = process_cpu_s) -> CaseRun:
    """Wait for a first result of every stream in ``names``, then ``warmup_s``; the results per stream over the
    next ``seconds`` as frames per second, and the CPU time ``cpu`` counts over them. ``alive`` returns why the
    case died (or None)."""
    deadline = now() + start_timeout_s
    while True:
        c = counts()
        missing = [n for n in names if c.get(n, 0) == 0]
        if not missing:
            break
        dead = alive()
        if dead:
            raise RuntimeError(dead)
        if now() > deadline:
            raise RuntimeError(f"no result from stream(s) {', '.join(missing)} after {start_timeout_s:g} s")
        time.sleep(0.05)
    time.sleep(warmup_s)
    c0, t0, cpu0 = counts(), now(), cpu()
    time.sleep(seconds)
    c1, t1, cpu1 = counts(), now(), cpu()
    window = t1 - t0
    return CaseRun({n: (c1.get(n, 0) - c0.get(n, 0)) / window for n in names}, window, cpu1 - cpu0)


# -- the cases ----------------------------------------------------------------------------------------


class Case:
    """One way of running N streams: built, started, measured, stopped (fresh in every round). ``stop`` also
    cleans up after a ``start`` that failed half-way."""

    def __init__(self, options: StreamsBenchOptions, model: Path, video: str) -> None:
        self.options, self.model, self.video = options, model, video
        self.names = [f"s{i}" for i in range(options.streams)]
        self.pipelines: dict[str, Pipeline] = {}

    def run(self) -> CaseRun:
        o = self.options
        try:
            self.start()
            result = measure(self.counts, self.names, o.warmup_s, o.case_seconds, o.start_timeout_s, self.died,
                             self.cpu_seconds)
            result.extra.update(self.details())
            return result
        finally:
            self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def died(self) -> str | None:
        return None

    def cpu_seconds(self) -> float:
        return process_cpu_s()

    def details(self) -> dict[str, Any]:
        return {}


class DeviceCase(Case):
    """Case a: the device's RuntimeController on the multi-form config."""

    def __init__(self, options: StreamsBenchOptions, model: Path, video: str, *, live: bool = False,
                 extra_sinks: Callable[[DeviceConfig], list[Any]] | None = None) -> None:
        super().__init__(options, model, video)
        n = options.live_streams if live else options.streams
        self.names = [f"s{i}" for i in range(n)]
        self.config = streams_config(model, video, n, threads=thread_budget(options.threads), live=live,
                                     batch_timeout_ms=options.batch_timeout_ms,
                                     max_frame_age_ms=options.max_frame_age_ms, max_batch=options.max_batch)
        self.extra_sinks = extra_sinks
        self.controller: RuntimeController | None = None

    def start(self) -> None:
        self.controller = RuntimeController(self.config, extra_sinks=self.extra_sinks).start()

    def counts(self) -> dict[str, int]:
        assert self.controller is not None
        return {f"s{name[1:]}": stats.results for name, stats in self.controller.workload_stats().items()}

    def stats(self) -> dict[str, Any]:
        assert self.controller is not None
        return {f"s{name[1:]}": stats.snapshot() for name, stats in self.controller.workload_stats().items()}

    def details(self) -> dict[str, Any]:
        assert self.controller is not None
        runners = {id(p.model.runner): p.model.runner for p in self.controller.pipelines.values()}
        results = sum(self.counts().values())
        batches = sum(r.batches for r in runners.values())
        return {"runners": len(runners), "shared_runner": len(runners) == 1 and len(self.names) > 1,
                "max_batch": max(r.max_batch for r in runners.values()),
                "mean_batch": results / batches if batches else 0.0}

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop(timeout=30.0)


class PipelinesCase(Case):
    """Case b: N single-stream pipelines in this process, each its own model at batch 1."""

    def start(self) -> None:
        threads = max(1, thread_budget(self.options.threads) // self.options.streams)
        self.pipelines = {}
        for name in self.names:
            config = parse_config(single_config(self.model, self.video, threads=threads, stream_id=name,
                                                max_frame_age_ms=self.options.max_frame_age_ms), "bench case b")
            self.pipelines[name] = build_pipeline(config, load_backend(config))
        for pipeline in self.pipelines.values():
            pipeline.start()

    def counts(self) -> dict[str, int]:
        return {name: p.stats.results for name, p in self.pipelines.items()}

    def stop(self) -> None:
        for pipeline in self.pipelines.values():
            pipeline.stop()
        for pipeline in self.pipelines.values():
            try:
                pipeline.wait(30.0)
            finally:
                pipeline.model.close()


class BatchedRunnerCase(Case):
    """Case a_batched: one shared ModelRunner (dynamic batch) fed by N pipelines, built from runtime pieces."""

    runner: ModelRunner | None = None

    def start(self) -> None:
        config = streams_config(self.model, self.video, self.options.streams,
                                threads=thread_budget(self.options.threads), live=False,
                                batch_timeout_ms=self.options.batch_timeout_ms,
                                max_frame_age_ms=self.options.max_frame_age_ms)
        views = list(config.workload_views().values())
        backend = load_backend(views[0])
        self.runner = ModelRunner(backend, batch_timeout_ms=self.options.batch_timeout_ms,
                                  max_batch=self.options.max_batch, name=MODEL_NAME)
        self.pipelines = {}
        for name, view in zip(self.names, views, strict=True):
            assert view.source is not None
            stop = threading.Event()
            source = create_source(view.source)
            self.pipelines[name] = Pipeline(
                FrameReader(source, view.source, stop), postprocessor=make_postprocessor(view, backend),
                preprocessor=make_preprocessor(view, backend, getattr(source, "kind", "image")), live=False,
                max_frame_age_ms=view.source.max_frame_age_ms, stop_event=stop, runner=self.runner, name=name)
        for pipeline in self.pipelines.values():
            pipeline.start()

    def counts(self) -> dict[str, int]:
        return {name: p.stats.results for name, p in self.pipelines.items()}

    def details(self) -> dict[str, Any]:
        runner = self.runner
        assert runner is not None
        results = sum(self.counts().values())
        return {"runners": 1, "shared_runner": True, "max_batch": runner.max_batch, "mode": runner.mode,
                "mean_batch": results / runner.batches if runner.batches else 0.0}

    def stop(self) -> None:
        for pipeline in self.pipelines.values():
            pipeline.stop()
        try:
            for pipeline in self.pipelines.values():
                pipeline.wait(30.0)
        finally:
            if self.runner is not None:
                self.runner.close(quiet=True)


class ProcessesCase(Case):
    """Case c: N ``lepton-edge run`` processes, each one stream with a jsonl sink flushed every result."""

    def __init__(self, options: StreamsBenchOptions, model: Path, video: str) -> None:
        super().__init__(options, model, video)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.outputs: dict[str, Path] = {}
        self.dir: Path | None = None

    def start(self) -> None:
        threads = max(1, thread_budget(self.options.threads) // self.options.streams)
        self.options.work_dir.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="streams-c-", dir=self.options.work_dir)).resolve()
        for name in self.names:
            out = self.outputs[name] = self.dir / f"{name}.jsonl"
            cfg = self.dir / f"{name}.yaml"
            cfg.write_text(yaml.safe_dump(single_config(self.model, self.video, threads=threads, stream_id=name,
                                                        jsonl=out, max_frame_age_ms=self.options.max_frame_age_ms)))
            log = (self.dir / f"{name}.log").open("wb")
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "lepton_edge.cli", "run", "--config", str(cfg)],
                                                stdout=log, stderr=subprocess.STDOUT)
            log.close()

    def counts(self) -> dict[str, int]:
        counts = {}
        for name, path in self.outputs.items():
            try:
                counts[name] = path.read_bytes().count(b"\n")
            except FileNotFoundError:
                counts[name] = 0
        return counts

    def cpu_seconds(self) -> float:
        return process_cpu_s([psutil.Process(p.pid) for p in self.procs.values() if p.poll() is None])

    def died(self) -> str | None:
        assert self.dir is not None
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.dir / f"{name}.log").read_text(errors="replace")[-800:]
                return f"`lepton-edge run` for stream {name} exited with {proc.returncode}: {tail}"
        return None

    def details(self) -> dict[str, Any]:
        return {"processes": len(self.procs), "intra_op_threads_each": max(
            1, thread_budget(self.options.threads) // self.options.streams)}

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


CASE_KINDS: dict[str, type[Case]] = {"a": DeviceCase, "a_batched": BatchedRunnerCase, "b": PipelinesCase,
                                     "c": ProcessesCase}


# -- the live case ------------------------------------------------------------------------------------


class LatencyCollector:
    """A sink keeping every result's end-to-end latency and finish time (bench only)."""

    name = "collector"
    needs_image = False

    def __init__(self) -> None:
        self.done: list[float] = []
        self.latency_ms: list[float] = []

    def offer(self, result: Any) -> bool:
        self.done.append(result.done_ts)
        self.latency_ms.append(result.latency_ms)
        return True

    def close(self) -> None:
        pass


class MemorySampler:
    """Samples this process's RSS (MB) every ``interval_s`` on its own thread."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)

    def _run(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.samples.append((now(), process.memory_info().rss / 2**20))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def memory_summary(samples: list[tuple[float, float]], since: float) -> dict[str, Any]:
    """Growth and least-squares slope of the RSS samples taken from ``since`` on."""
    kept = [(t, m) for t, m in samples if t >= since]
    if len(kept) < 2:
        return {"samples": len(kept)}
    t, m = np.array(kept).T
    slope = float(np.polyfit(t - t[0], m, 1)[0]) * 60.0
    half = len(m) // 2
    return {"samples": len(kept), "start_mb": float(m[0]), "end_mb": float(m[-1]), "max_mb": float(m.max()),
            "growth_mb": float(m[-1] - m[0]), "second_half_growth_mb": float(m[-1] - m[half]),
            "slope_mb_per_min": slope}


def bench_live(options: StreamsBenchOptions, model: Path, video: str) -> dict[str, Any]:
    """``live_streams`` live streams through the device runtime: fairness, latency against frame age, memory."""
    collectors: dict[str, LatencyCollector] = {}

    def extra_sinks(view: DeviceConfig) -> list[Any]:
        assert view.source is not None
        collector = collectors[str(view.source.id)] = LatencyCollector()
        return [collector]

    case = DeviceCase(options, model, video, live=True, extra_sinks=extra_sinks)
    with MemorySampler() as memory:
        case.start()
        try:
            run = measure(case.counts, case.names, options.warmup_s, options.live_seconds, options.start_timeout_s)
            end = now()
            start = end - run.window_s
            stats = case.stats()
            details = case.details()
        finally:
            case.stop()
    mean = statistics.fmean(run.fps.values())
    streams = {}
    for name in case.names:
        done = np.array(collectors[name].done)
        lat = np.array(collectors[name].latency_ms)[(done >= start) & (done <= end)]
        streams[name] = {
            "fps": run.fps[name],
            "deviation_from_mean": run.fps[name] / mean - 1.0 if mean else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else 0.0,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else 0.0,
            "frames_in": stats[name]["frames_in"],
            "drops": stats[name]["drops"],
            "stage_p50_ms": {k: v["p50"] for k, v in stats[name]["latency_ms"].items() if k != "e2e"},
            "frame_age_p99_ms": stats[name]["latency_ms"]["frame_age"]["p99"],
        }
    deviation = max(abs(s["deviation_from_mean"]) for s in streams.values())
    worst_p99 = max(s["p99_ms"] for s in streams.values())
    return {
        "streams": len(case.names),
        "source_fps": 30.0,
        "seconds": run.window_s,
        "max_frame_age_ms": options.max_frame_age_ms,
        "intra_op_threads": thread_budget(options.threads),
        "aggregate_fps": run.total,
        "cpu_cores_used": run.cpu_s / run.window_s,
        "mean_fps": mean,
        "max_deviation_from_mean": deviation,
        "worst_p99_ms": worst_p99,
        "fair": deviation <= 0.10,
        "p99_below_max_frame_age": worst_p99 < options.max_frame_age_ms,
        "per_stream": streams,
        "memory": memory_summary(memory.samples, start),
        "runtime": details,
    }


# -- the run ------------------------------------------------------------------------------------------


def bench_inputs(options: StreamsBenchOptions) -> tuple[Path, str]:
    """The model and the video, generated under ``work_dir`` once when not given."""
    model = options.model
    if model is None:
        model = options.work_dir / f"yolov8n_dynamic_{options.size}.onnx"
        if not model.exists():
            model.parent.mkdir(parents=True, exist_ok=True)
            build_bench_model(model, size=options.size)
    video = options.video or str(ensure_bench_video(
        options.work_dir / f"shapes_1280x720_{options.video_frames}.mp4", frames=options.video_frames,
        size=(1280, 720)))
    return model.resolve(), str(Path(video).resolve()) if Path(video).exists() else video


def command_line(options: StreamsBenchOptions) -> str:
    """The ``lepton-edge bench`` command that repeats this run."""
    parts = [f"lepton-edge bench --streams {options.streams} --threads {options.threads} --rounds {options.rounds}",
             f"--case-seconds {options.case_seconds:g} --streams-live {options.live_streams}",
             f"--streams-seconds {options.live_seconds:g}"]
    if options.max_batch is not None:
        parts.append(f"--streams-max-batch {options.max_batch}")
    if options.model is not None:
        parts.append(f"--model {options.model}")
    if options.video is not None:
        parts.append(f"--source {options.video}")
    return " ".join(parts)


def run_streams_bench(options: StreamsBenchOptions, log: Callable[[str], None] = lambda s: print(
        s, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Offline cases in interleaved rounds, then the live case; the report as JSON-ready data."""
    if options.streams < 1:
        raise ValueError(f"--streams must be at least 1, got {options.streams}")
    load_start = list(os.getloadavg())
    model, video = bench_inputs(options)
    budget = thread_budget(options.threads)
    order = ["a", "b", "c"]
    rounds: dict[str, list[CaseRun]] = {}
    for r in range(options.rounds):
        i = 0
        while i < len(order):
            name = order[i]
            log(f"round {r + 1}/{options.rounds}: case {name} ({CASES[name]}) ...")
            run = CASE_KINDS[name](options, model, video).run()
            rounds.setdefault(name, []).append(run)
            if name == "a" and r == 0 and options.streams > 1 and not run.extra.get("shared_runner"):
                log("the device runs one model per workload: adding case a_batched (one shared batched runner)")
                order.insert(i + 1, "a_batched")
            i += 1
    offline: dict[str, Any] = {}
    for name, runs in rounds.items():
        offline[name] = {
            "description": CASES[name],
            "aggregate_fps": statistics.median(run.total for run in runs),
            "aggregate_fps_rounds": [run.total for run in runs],
            "per_stream_fps": {s: statistics.median(run.fps[s] for run in runs) for s in runs[0].fps},
            "window_s": statistics.median(run.window_s for run in runs),
            "cpu_cores_used": statistics.median(run.cpu_s / run.window_s for run in runs),
            "fps_per_cpu_second": statistics.median(run.per_cpu_second for run in runs),
            **runs[0].extra,
        }
    fps = {name: case["aggregate_fps"] for name, case in offline.items()}
    ratios = {"a_vs_c": fps["a"] / fps["c"] if fps["c"] else 0.0, "a_vs_b": fps["a"] / fps["b"] if fps["b"] else 0.0}
    per_cpu = {name: case["fps_per_cpu_second"] for name, case in offline.items()}
    ratios |= {f"{a}_vs_{b}_per_cpu_second": per_cpu[a] / per_cpu[b] if per_cpu[b] else 0.0
               for a, b in (("a", "c"), ("a", "b"))}
    if "a_batched" in fps:
        ratios |= {"a_batched_vs_c": fps["a_batched"] / fps["c"] if fps["c"] else 0.0,
                   "a_batched_vs_b": fps["a_batched"] / fps["b"] if fps["b"] else 0.0}
    report: dict[str, Any] = {
        "machine": machine_info(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command_line(options),
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "model": str(model),
        "video": video,
        "threads": {"budget": budget, "a": budget, "b_each": max(1, budget // options.streams),
                    "c_each": max(1, budget // options.streams), "inter_op": 1},
        "offline": offline,
        "ratios": ratios,
        "targets": TARGETS,
    }
    if options.live_streams > 0:
        log(f"live: {options.live_streams} streams at 30 fps for {options.live_seconds:g} s ...")
        report["live"] = bench_live(options, model, video)
    return report


def format_markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables."""
    o, t = report["options"], report["threads"]
    m = report["machine"]
    lines = [
        f"{m['cpu']}, {m['physical_cores']} physical / {m['logical_cores']} logical cores, onnxruntime "
        f"{m['onnxruntime']}; model {Path(report['model']).name}, {o['streams']} offline streams of "
        f"{Path(report['video']).name}; {o['rounds']} interleaved rounds of {o['case_seconds']:g} s per case "
        f"(after {o['warmup_s']:g} s warm-up), medians. onnxruntime intra-op threads: case a {t['a']} (one "
        f"model), b and c {t['b_each']} per model (budget {t['budget']}); inter-op 1. Load average "
        f"{report['load_average']['start'][0]:.1f} at the start, {report['load_average']['end'][0]:.1f} at the end.",
        "",
        f"`{report['command']}`",
        "",
        "| case | aggregate fps | per stream fps | rounds | CPU cores used | fps per CPU second |",
        "|---|---:|---|---|---:|---:|",
    ]
    for name, case in report["offline"].items():
        per = " ".join(f"{v:.1f}" for v in case["per_stream_fps"].values())
        rounds = " ".join(f"{v:.1f}" for v in case["aggregate_fps_rounds"])
        lines.append(f"| {name}: {case['description']} | {case['aggregate_fps']:.1f} | {per} | {rounds} | "
                     f"{case['cpu_cores_used']:.2f} | {case['fps_per_cpu_second']:.2f} |")
    a = report["offline"]["a"]
    lines += ["", f"Device runtime: {a.get('runners')} model runner(s), shared: {a.get('shared_runner')}, "
              f"max batch {a.get('max_batch')}, mean batch {a.get('mean_batch', 0):.2f}.", "",
              "| ratio | measured | target |", "|---|---:|---:|"]
    for name, value in report["ratios"].items():
        target = report["targets"].get(name)
        label = name.replace("_vs_", " / ").replace("_per_cpu_second", ", frames per CPU second")
        lines.append(f"| {label} | {value:.2f} | {f'>= {target:.2f}' if target else ''} |")
    live = report.get("live")
    if live:
        mem = live["memory"]
        lines += [
            "",
            f"Live: {live['streams']} streams at {live['source_fps']:g} fps for {live['seconds']:.0f} s through the "
            f"device runtime ({live['intra_op_threads']} intra-op threads, max batch {live['runtime']['max_batch']}, "
            f"mean batch {live['runtime']['mean_batch']:.2f}, {live['cpu_cores_used']:.2f} CPU cores used); "
            f"aggregate {live['aggregate_fps']:.1f} fps, mean {live['mean_fps']:.2f} fps per stream, largest "
            f"deviation from the mean "
            f"{live['max_deviation_from_mean'] * 100:.1f} % (target 10 %); worst p99 {live['worst_p99_ms']:.0f} ms "
            f"vs max_frame_age_ms {live['max_frame_age_ms']:g}; RSS {mem.get('start_mb', 0):.0f} -> "
            f"{mem.get('end_mb', 0):.0f} MB (growth {mem.get('growth_mb', 0):+.1f} MB, second half "
            f"{mem.get('second_half_growth_mb', 0):+.1f} MB, slope {mem.get('slope_mb_per_min', 0):+.2f} MB/min).",
            "",
            "| stream | fps | vs mean | e2e p50 ms | e2e p99 ms | infer p50 ms | age at infer p99 ms | frames in | "
            "drops |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for name, s in live["per_stream"].items():
            drops = ", ".join(f"{k} {v}" for k, v in s["drops"].items()) or "none"
            lines.append(f"| {name} | {s['fps']:.2f} | {s['deviation_from_mean'] * 100:+.1f} % | {s['p50_ms']:.0f} | "
                         f"{s['p99_ms']:.0f} | {s['stage_p50_ms'].get('infer', 0):.0f} | "
                         f"{s['frame_age_p99_ms']:.0f} | {s['frames_in']} | {drops} |")
    return "\n".join(lines) + "\n"


def write_streams_report(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """``streams.json`` and ``streams.md`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    js, md = folder / "streams.json", folder / "streams.md"
    js.write_text(json.dumps(report, indent=2))
    md.write_text(format_markdown(report))
    return js, md


