"""The device service: what `lepton-edge run` (and systemd) start."""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from lepton_edge.config.device import DeviceConfig
from lepton_edge.core.errors import ConfigError
from lepton_edge.core.metrics import RateMeter
from lepton_edge.device.agent import run_device
from lepton_edge.device.controller import open_pipeline
from lepton_edge.device.systemd import FrameWatchdog, ServiceNotifier

log = logging.getLogger(__name__)




def _install_signal_handlers(stop, abort) -> None:
    count = 0

    def handler(signum: int, _frame: Any) -> None:
        nonlocal count
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            log.info("%s received: stopping (finishing frames in flight; again to abort)", name)
            stop()
        else:
            log.warning("%s received again: aborting", name)
            abort()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run_service(config: DeviceConfig, *, duration_s: float | None = None, max_frames: int | None = None,
                origin: str = "config") -> int:
    """Run ``config`` as the device service until the source ends, ``duration_s`` passes or SIGTERM/SIGINT:
    with the agent when the config has one, else the pipeline alone. Returns the exit code."""
    if config.agent is not None:
        return run_device(config, duration_s=duration_s, max_frames=max_frames)
    if config.idle:
        raise ConfigError(
            f"{origin}: idle: true runs no pipeline, and without an `agent` section "
            "there is no broker to wait on for a workload: nothing to do. Add an agent section "
            "(see deploy/device.example.yaml), or set idle: false and give a model and a source"
        )
    assert config.model is not None and config.source is not None
    if config.model.artifact is not None:
        raise ConfigError("model.artifact needs the device agent (an `agent` section) to download and verify it")
    pipeline = open_pipeline(config, max_frames=max_frames)
    log.info("running model=%s source=%s backend=%s live=%s sinks=%s", config.model.path, config.source.uri,
             pipeline.backend.name, pipeline.live, ",".join(s.name for s in pipeline.sinks) or "none")
    _install_signal_handlers(pipeline.stop, pipeline.abort)
    stats = pipeline.stats
    log_rate, status_rate = RateMeter(stats), RateMeter(stats)
    notifier = ServiceNotifier()
    watchdog = FrameWatchdog(
        lambda: stats.results,
        lambda: f"fps={status_rate.update():.1f} state={stats.source_state} results={stats.results}",
        notifier=notifier)
    has_console = any(s.name == "console" for s in pipeline.sinks)
    state = {"ready": False, "next_log": time.monotonic() + config.pipeline.stats_interval_s}

    def tick() -> None:
        # READY only once the model is loaded and a first frame went all the way through.
        if not state["ready"] and stats.results > 0:
            state["ready"] = True
            notifier.ready(f"first result after {stats.snapshot()['uptime_s']:.1f} s")
            watchdog.start()
        if not has_console and time.monotonic() >= state["next_log"]:
            state["next_log"] = time.monotonic() + config.pipeline.stats_interval_s
            snap = stats.snapshot()
            lat = snap["latency_ms"]
            log.info("stats fps=%.1f results=%d e2e_p50_ms=%.2f e2e_p99_ms=%.2f infer_p50_ms=%.2f "
                     "age_p99_ms=%.2f source=%s drops=%d", log_rate.update(), snap["results"], lat["e2e"]["p50"],
                     lat["e2e"]["p99"], lat["infer"]["p50"], lat["frame_age"]["p99"], snap["source_state"],
                     sum(snap["drops"].values()))

    try:
        final = pipeline.run(duration_s=duration_s, tick=tick, tick_interval_s=0.25)
    finally:
        watchdog.stop()  # no STATUS or ping may follow STOPPING=1
        notifier.stopping()
        pipeline.backend.close()
    e2e = final["latency_ms"]["e2e"]
    drops = " ".join(f"{k}={v}" for k, v in sorted(final["drops"].items())) or "none"
    log.info("done frames=%d results=%d fps=%.1f e2e_p50_ms=%.2f e2e_p99_ms=%.2f drops=%s",
             final["frames_in"], final["results"], final["results"] / max(final["uptime_s"], 1e-9),
             e2e["p50"], e2e["p99"], drops)
    for sink in pipeline.sinks:
        if sink.name in ("jsonl", "video"):
            log.info("wrote %s (%d results, %d dropped)", sink.path, sink.written, sink.dropped)
    return 0


