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
from lepton_edge.fleet.broker import LocalBroker

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "synthetic://shapes?fps=30&width=640&height=480&seed=5"
DEFAULT_OUT = Path("out/soak")


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
    """Reads the values a LatencyWindow received since the previous read (the window is a ring)."""

    def __init__(self, window: Any) -> None:
        self.window = window
        self.seen = window.count

    def read(self) -> np.ndarray:
        count = self.window.count
        new, self.seen = count - self.seen, count
        if new <= 0:
            return np.empty(0)
        values = self.window.samples()
        return values[-min(new, len(values)) :]


def _percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def soak_config(model: Path, source: str, port: int, state_dir: Path, telemetry_s: float, durable: bool):
    """The demo pipeline (deploy/demo.yaml's model, camera and detector settings) with an agent section."""

    return parse_config(
        {
            "device_id": "soak-device",
            "model": {"path": str(model)},
            "source": {"uri": source, "max_frame_age_ms": 200},
            "postprocess": {"type": "detect", "conf_threshold": 0.4},
            "agent": {
                "mqtt": {"host": "127.0.0.1", "port": port},
                "state_dir": str(state_dir),
                "telemetry_interval_s": telemetry_s,
                "results": {"durable": durable},
            },
        },
        "soak",
    )


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
    on_sample: Callable[[Sample], None] | None = None,
) -> dict[str, Any]:
    """Run the soak for ``duration_s`` seconds and return the report (samples, minutes, summary).

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
            config = soak_config(Path(model), source, broker.port, Path(tmp) / "state", telemetry_s, durable)
            agent = DeviceAgent(config)
            stats = agent.controller.stats
            e2e, age = _NewSamples(stats.latency["e2e"]), _NewSamples(stats.latency["frame_age"])
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
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of soak.json (out/soak)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    print(
        f"soak: {args.duration:g} s of {args.model.name} on {args.source}, agent on (telemetry every "
        f"{args.telemetry_interval:g} s, {'durable' if args.durable else 'best-effort'} results)"
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
