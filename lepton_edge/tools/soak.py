"""Soak benchmark: the demo pipeline under the device agent for a long time. Flat memory, stable latency?

``python -m lepton_edge.tools.soak --duration 600`` runs the bundled shapes detector on a live 30 fps synthetic
camera (as ``deploy/demo.yaml``) with the device agent on: telemetry, durable results through the outbox,
against a local mosquitto on a free loopback port. Every few seconds it samples the process's resident
memory, the result rate, and the end-to-end latency and frame age of the results produced since the
previous sample. After a warm-up (default 30 s, excluded from the verdicts) it reports:

- **memory growth**: the least-squares slope of RSS over time (MB/min), and the mean RSS of the last
  minute minus that of the first minute;
- **latency stability**: e2e and frame-age p50/p99 for every minute, and the ratio of the worst minute's
  p99 to the best one's.

With ``--clips`` the stream also records event clips (``docs/clips.md``) the way the demo does: tracking, two
lines across the scene, a clip around every line crossing (1 s before, 1 s after, every frame at 320 pixels wide,
encoded), in a folder whose quota
(``--clip-max-bytes``, 1 MiB by default) is so small that clips are written and deleted all the time. Every sample
then carries the clip counters (written, deleted for the quota, failed) and the events queued in the outbox.

It prints tables and writes ``out/soak/soak.json``. A machine shared with other work shows that work in
the latency figures; memory growth is the figure that says whether something leaks.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.config.device import parse_config
from lepton_edge.core.errors import ConfigError
from lepton_edge.core.logs import setup_logging
from lepton_edge.data import DEMO_MODEL
from lepton_edge.device.agent import DeviceAgent
from lepton_edge.device.results import AnalyticsEventSink
from lepton_edge.fleet.broker import LocalBroker
from lepton_edge.runtime.clips.sink import ClipSink

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "synthetic://shapes?fps=30&width=640&height=480&seed=5"
DEFAULT_OUT = Path("out/soak")
CLIP_QUOTA_BYTES = 1 << 20
"""The clip folder's quota with ``--clips``: the smallest allowed, so clips are deleted as fast as they come."""
SOAK_LINES = [
    {"name": "vertical", "start": [0.5, 0.0], "end": [0.5, 1.0]},
    {"name": "horizontal", "start": [0.0, 0.5], "end": [1.0, 0.5]},
]


@dataclass(frozen=True, slots=True)
class Sample:
    """The process and pipeline at one moment; latencies cover the results since the previous sample."""

    t_s: float
    """Seconds since the pipeline started."""
    rss_mb: float
    fps: float
    results: int
    e2e_p50_ms: float | None
    e2e_p99_ms: float | None
    age_p50_ms: float | None
    age_p99_ms: float | None
    drops: int
    outbox_depth: int
    connected: bool
    warmup: bool
    clips_written: int = 0
    """Clips written complete since the start (``--clips``; 0 otherwise)."""
    clips_deleted: int = 0
    """Clips deleted for the quota or retention since the start."""
    clips_failed: int = 0
    clip_folder_mb: float = 0.0
    """Clips and metadata in the folder now."""
    events: int = 0
    """Analytics events queued in the outbox since the start."""


@dataclass(frozen=True, slots=True)
class Minute:
    """Latency over one window of ``minute_s`` seconds after the warm-up."""

    index: int
    start_s: float
    end_s: float
    results: int
    e2e_p50_ms: float
    e2e_p99_ms: float
    age_p50_ms: float
    age_p99_ms: float
    rss_mb: float
    """Mean RSS of the samples taken in the window."""
    partial: bool
    """The run ended before the window did."""


def linear_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (0 with fewer than two distinct points)."""
    if len(xs) < 2 or max(xs) == min(xs):
        return 0.0
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


class _NewSamples:
    """Reads the values a latency window received since the previous read (the window is a ring).

    ``window()`` gives the window afresh at every read: the device's windows are views over its running workloads'
    own (``DeviceStats.latency``), made when asked, so one taken before the pipeline started stays empty."""

    def __init__(self, window: Callable[[], Any]) -> None:
        self.window = window
        self.seen = window().count

    def read(self) -> np.ndarray:
        window = self.window()
        count = window.count
        new, self.seen = count - self.seen, count
        if new <= 0:
            return np.empty(0)
        values = window.samples()
        return values[-min(new, len(values)) :]


def _percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def soak_config(
    model: Path,
    source: str,
    port: int,
    state_dir: Path,
    telemetry_s: float,
    durable: bool,
    clips_folder: Path | None = None,
    clip_max_bytes: int = CLIP_QUOTA_BYTES,
):
    """The demo pipeline (deploy/demo.yaml's model, camera and detector settings) with an agent section; with
    ``clips_folder``, tracking, two lines and a clip around each line crossing (1 s before, 1 s after, every frame at
    320 pixels wide: many short clips, quota ``clip_max_bytes``)."""
    source_section: dict[str, Any] = {"uri": source, "max_frame_age_ms": 200}
    data: dict[str, Any] = {
        "device_id": "soak-device",
        "model": {"path": str(model)},
        "source": source_section,
        "postprocess": {"type": "detect", "conf_threshold": 0.4},
        "agent": {
            "mqtt": {"host": "127.0.0.1", "port": port},
            "state_dir": str(state_dir),
            "telemetry_interval_s": telemetry_s,
            "results": {"durable": durable},
        },
    }
    if clips_folder is not None:
        source_section["clips"] = {
            "enabled": True,
            "folder": str(clips_folder),
            "pre_s": 1.0,
            "post_s": 1.0,
            "max_clip_s": 4.0,
            "max_bytes": clip_max_bytes,
            "trigger_kinds": ["line_crossed"],
            "raw_fps": 30.0,
            "raw_max_width": 320,
        }
        data["tracking"] = {}
        data["analytics"] = {"coordinates": "normalized", "lines": SOAK_LINES, "counts_interval_s": 5.0}
    return parse_config(data, "soak")


def _clip_counters(agent: DeviceAgent) -> dict[str, Any]:
    """Clip and event counters of the running pipeline (zeros without clips)."""
    pipeline = agent.controller.pipeline
    sinks = [s for s in pipeline.sinks if isinstance(s, ClipSink)] if pipeline is not None else []
    figures = [s.stats() for s in sinks]
    events = [s for s in agent.controller.extra_sinks if isinstance(s, AnalyticsEventSink)]
    return {
        "clips_written": sum(f["clips_written"] for f in figures),
        "clips_deleted": sum(f["deleted_quota"] + f["deleted_retention"] for f in figures),
        "clips_failed": sum(f["failed"] for f in figures),
        "clip_folder_mb": sum(f["bytes"] for f in figures) / 2**20,
        "events": sum(s.queued for s in events),
    }


def summarize(
    samples: list[Sample], minutes: list[Minute], warmup_s: float, minute_s: float
) -> dict[str, Any]:
    """Memory growth and latency stability, from the samples and minutes after the warm-up."""
    steady = [s for s in samples if not s.warmup]
    out: dict[str, Any] = {"warmup_s": warmup_s, "steady_samples": len(steady)}
    if steady:
        end = steady[-1].t_s
        first = [s.rss_mb for s in steady if s.t_s < warmup_s + minute_s]
        last = [s.rss_mb for s in steady if s.t_s >= end - minute_s]
        drops_before = max((s.drops for s in samples if s.warmup), default=0)
        out["memory"] = {
            "slope_mb_per_min": linear_slope([s.t_s for s in steady], [s.rss_mb for s in steady]) * 60.0,
            "first_minute_mb": float(np.mean(first)),
            "last_minute_mb": float(np.mean(last)),
            "last_minus_first_mb": float(np.mean(last) - np.mean(first)),
            "max_mb": max(s.rss_mb for s in steady),
        }
        out["fps"] = {"mean": float(np.mean([s.fps for s in steady])), "min": min(s.fps for s in steady)}
        out["drops"] = steady[-1].drops - drops_before
        out["disconnected_samples"] = sum(not s.connected for s in steady)
        out["max_outbox_depth"] = max(s.outbox_depth for s in steady)
        last = samples[-1]
        if last.clips_written or last.clips_failed or last.events:
            out["clips"] = {
                "written": last.clips_written,
                "deleted": last.clips_deleted,
                "failed": last.clips_failed,
                "folder_max_mb": max(s.clip_folder_mb for s in samples),
                "events": last.events,
            }
    full = [m for m in minutes if not m.partial and m.results]
    if full:
        p99 = [m.e2e_p99_ms for m in full]
        out["latency"] = {
            "minutes": len(full),
            "e2e_p99_min_ms": min(p99),
            "e2e_p99_max_ms": max(p99),
            "e2e_p99_worst_over_best": max(p99) / min(p99) if min(p99) > 0 else None,
            "age_p99_max_ms": max(m.age_p99_ms for m in full),
        }
    return out


class _Window:
    """Latency values and RSS samples of the current minute (kept only until the minute closes)."""

    def __init__(self, index: int, start_s: float) -> None:
        self.index, self.start_s = index, start_s
        self.e2e: list[np.ndarray] = []
        self.age: list[np.ndarray] = []
        self.rss: list[float] = []

    def close(self, end_s: float, partial: bool) -> Minute:
        e2e, age = np.concatenate(self.e2e), np.concatenate(self.age)
        return Minute(
            index=self.index,
            start_s=self.start_s,
            end_s=round(end_s, 3),
            results=len(e2e),
            e2e_p50_ms=_percentile(e2e, 50) or 0.0,
            e2e_p99_ms=_percentile(e2e, 99) or 0.0,
            age_p50_ms=_percentile(age, 50) or 0.0,
            age_p99_ms=_percentile(age, 99) or 0.0,
            rss_mb=float(np.mean(self.rss)),
            partial=partial,
        )


def run_soak(
    duration_s: float,
    *,
    sample_interval_s: float = 5.0,
    warmup_s: float = 30.0,
    minute_s: float = 60.0,
    model: Path = DEMO_MODEL,
    source: str = DEFAULT_SOURCE,
    telemetry_s: float = 2.0,
    durable: bool = True,
    clips: bool = False,
    clip_max_bytes: int = CLIP_QUOTA_BYTES,
    clips_folder: Path | None = None,
    on_sample: Callable[[Sample], None] | None = None,
) -> dict[str, Any]:
    """Run the soak for ``duration_s`` seconds and return the report (samples, minutes, summary).

    ``clips`` records event clips on line crossings into ``clips_folder`` (default: a temporary one) with the quota
    ``clip_max_bytes``.

    ``minute_s`` is the length of a latency window (60 s; shorter only for tests). Ctrl-C ends the run
    early with a report of what was measured.
    """
    import psutil

    if duration_s <= warmup_s:
        raise ConfigError(f"--duration {duration_s:g} must be longer than the warm-up ({warmup_s:g} s)")
    if sample_interval_s <= 0 or minute_s < sample_interval_s:
        raise ConfigError("--sample-interval must be positive and at most a minute")
    if not Path(model).is_file():
        raise ConfigError(f"{model}: model not found; give --model PATH (the demo model is {DEMO_MODEL})")
    process = psutil.Process()
    samples: list[Sample] = []
    minutes: list[Minute] = []
    with tempfile.TemporaryDirectory(prefix="lepton-soak-") as tmp:
        broker = LocalBroker(Path(tmp) / "broker").start()
        try:
            if clips and clips_folder is None:
                clips_folder = Path(tmp) / "clips"
            elif not clips:
                clips_folder = None
            state = Path(tmp) / "state"
            config = soak_config(
                Path(model), source, broker.port, state, telemetry_s, durable, clips_folder, clip_max_bytes
            )
            agent = DeviceAgent(config)
            stats = agent.controller.stats
            e2e = _NewSamples(lambda: stats.latency["e2e"])
            age = _NewSamples(lambda: stats.latency["frame_age"])
            window: _Window | None = None
            agent.start()
            started = time.monotonic()
            last_t, last_results = 0.0, stats.results
            try:
                while last_t < duration_s - 1e-6:
                    wake = min(last_t + sample_interval_s, duration_s)
                    time.sleep(max(0.0, wake - (time.monotonic() - started)))
                    t = time.monotonic() - started
                    results = stats.results
                    new_e2e, new_age = e2e.read(), age.read()
                    sample = Sample(
                        t_s=round(t, 3),
                        rss_mb=process.memory_info().rss / 2**20,
                        fps=(results - last_results) / max(t - last_t, 1e-9),
                        results=results,
                        e2e_p50_ms=_percentile(new_e2e, 50),
                        e2e_p99_ms=_percentile(new_e2e, 99),
                        age_p50_ms=_percentile(new_age, 50),
                        age_p99_ms=_percentile(new_age, 99),
                        drops=stats.drops.total(),
                        outbox_depth=agent.outbox.depth(),
                        connected=agent.connected,
                        warmup=t < warmup_s,
                        **_clip_counters(agent),
                    )
                    samples.append(sample)
                    last_t, last_results = t, results
                    if on_sample is not None:
                        on_sample(sample)
                    if sample.warmup:
                        continue
                    if window is None:
                        window = _Window(len(minutes), warmup_s + len(minutes) * minute_s)
                    window.e2e.append(new_e2e)
                    window.age.append(new_age)
                    window.rss.append(sample.rss_mb)
                    if t >= window.start_s + minute_s - 1e-6:
                        minutes.append(window.close(t, partial=False))
                        window = None
            except KeyboardInterrupt:
                log.warning("interrupted: reporting the %d sample(s) taken", len(samples))
            finally:
                agent.stop()
            if window is not None:
                minutes.append(window.close(last_t, partial=True))
        finally:
            broker.stop()
    return {
        "duration_s": samples[-1].t_s if samples else 0.0,
        "requested_duration_s": duration_s,
        "sample_interval_s": sample_interval_s,
        "minute_s": minute_s,
        "model": str(model),
        "source": source,
        "telemetry_interval_s": telemetry_s,
        "durable_results": durable,
        "clips": clips,
        "clip_max_bytes": clip_max_bytes if clips else None,
        "summary": summarize(samples, minutes, warmup_s, minute_s),
        "minutes": [asdict(m) for m in minutes],
        "samples": [asdict(s) for s in samples],
    }


# ------------------------------------------------------------------------------------------- output


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


SAMPLE_HEADER = (
    f"{'t_s':>7} {'rss_mb':>8} {'fps':>6} {'e2e_p50':>8} {'e2e_p99':>8} {'age_p50':>8} {'age_p99':>8}  note"
)


def sample_row(s: Sample) -> str:
    note = "warm-up" if s.warmup else ("" if s.connected else "broker disconnected")
    if s.clips_written or s.clips_failed:
        note = f"clips {s.clips_written} written, {s.clips_deleted} deleted, {s.clips_failed} failed  {note}"
    return (
        f"{s.t_s:7.1f} {s.rss_mb:8.1f} {s.fps:6.1f} {_ms(s.e2e_p50_ms):>8} {_ms(s.e2e_p99_ms):>8} "
        f"{_ms(s.age_p50_ms):>8} {_ms(s.age_p99_ms):>8}  {note}"
    )


def format_report(report: dict[str, Any]) -> str:
    """The per-minute table and the verdict lines."""
    lines = [
        "",
        f"per minute (after the {report['summary']['warmup_s']:g} s warm-up; latencies in ms):",
        f"{'minute':>6} {'from_s':>7} {'to_s':>7} {'results':>8} {'rss_mb':>8} {'e2e_p50':>8} {'e2e_p99':>8} "
        f"{'age_p50':>8} {'age_p99':>8}",
    ]
    for m in report["minutes"]:
        lines.append(
            f"{m['index']:>6} {m['start_s']:7.0f} {m['end_s']:7.0f} {m['results']:>8} {m['rss_mb']:8.1f} "
            f"{m['e2e_p50_ms']:8.1f} {m['e2e_p99_ms']:8.1f} {m['age_p50_ms']:8.1f} {m['age_p99_ms']:8.1f}"
            + ("  (partial)" if m["partial"] else "")
        )
    summary = report["summary"]
    memory = summary.get("memory")
    if memory:
        lines += [
            "",
            f"memory: slope {memory['slope_mb_per_min']:+.3f} MB/min; last minute - first minute "
            f"{memory['last_minus_first_mb']:+.2f} MB ({memory['first_minute_mb']:.1f} -> "
            f"{memory['last_minute_mb']:.1f} MB, max {memory['max_mb']:.1f} MB)",
            f"throughput: {summary['fps']['mean']:.1f} fps mean, {summary['fps']['min']:.1f} min; "
            f"{summary['drops']} frame(s) dropped; outbox depth max {summary['max_outbox_depth']}; "
            f"{summary['disconnected_samples']} sample(s) disconnected",
        ]
    clips = summary.get("clips")
    if clips:
        lines.append(
            f"clips: {clips['written']} written, {clips['deleted']} deleted (quota/retention), {clips['failed']} "
            f"failed; folder at most {clips['folder_max_mb']:.2f} MB; {clips['events']} analytics event(s) queued"
        )
    latency = summary.get("latency")
    if latency:
        ratio = latency["e2e_p99_worst_over_best"]
        ratio_text = "-" if ratio is None else f"{ratio:.2f}"
        lines.append(
            f"latency: e2e p99 per minute {latency['e2e_p99_min_ms']:.1f} - "
            f"{latency['e2e_p99_max_ms']:.1f} ms (worst/best {ratio_text}) over "
            f"{latency['minutes']} full minute(s); frame age p99 max {latency['age_p99_max_ms']:.1f} ms"
        )
    else:
        lines.append("latency: no full minute after the warm-up; run longer for per-minute stability")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lepton_edge.tools.soak",
        description="Soak benchmark: the demo pipeline with the device agent against a local mosquitto; "
        "memory growth and per-minute latency.",
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds to run (default 600)")
    parser.add_argument("--sample-interval", type=float, default=5.0, help="seconds between samples (5)")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds excluded from the verdicts (30)")
    parser.add_argument("--model", type=Path, default=DEMO_MODEL, help="ONNX model (the demo detector)")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="live source URI (the demo camera)")
    parser.add_argument("--telemetry-interval", type=float, default=2.0, help="agent telemetry period (2 s)")
    parser.add_argument(
        "--durable",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="results through the on-disk outbox (default) or published best effort",
    )
    parser.add_argument(
        "--clips",
        action="store_true",
        help="also track, count line crossings and record a clip around each in a small-quota folder",
    )
    parser.add_argument(
        "--clip-max-bytes",
        type=int,
        default=CLIP_QUOTA_BYTES,
        help=f"quota of the clip folder with --clips (default {CLIP_QUOTA_BYTES}: written and deleted all the time)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of soak.json (out/soak)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    print(
        f"soak: {args.duration:g} s of {args.model.name} on {args.source}, agent on (telemetry every "
        f"{args.telemetry_interval:g} s, {'durable' if args.durable else 'best-effort'} results)"
        + (f", clips on line crossings (quota {args.clip_max_bytes} bytes)" if args.clips else "")
    )
    print(SAMPLE_HEADER, flush=True)
    try:
        report = run_soak(
            args.duration,
            sample_interval_s=args.sample_interval,
            warmup_s=args.warmup,
            model=args.model,
            source=args.source,
            telemetry_s=args.telemetry_interval,
            durable=args.durable,
            clips=args.clips,
            clip_max_bytes=args.clip_max_bytes,
            on_sample=lambda s: print(sample_row(s), flush=True),
        )
    except ConfigError as e:
        print(f"error: {e}")
        return e.exit_code
    print(format_report(report))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "soak.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
