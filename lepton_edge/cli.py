"""The ``lepton-edge`` command line: a thin layer over the library API."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from lepton_edge import __version__
from lepton_edge.errors import ConfigError, LeptonError

log = logging.getLogger("lepton_edge.cli")

EPILOG_RUN = """examples:
  lepton-edge run --config deploy/demo.yaml
  lepton-edge run --model models/shapes_detector.onnx --source 'synthetic://shapes?fps=30' --sink console
  lepton-edge run --model det.onnx --source rtsp://cam.local/stream --sink jsonl:out/results.jsonl
  lepton-edge run --model det.onnx --source video.mp4 --sink video:out/annotated.mp4 --max-frames 300
"""

EPILOG_BENCH = """examples:
  lepton-edge bench                                   # demo detector and a YOLOv8n-sized model
  lepton-edge bench --model det.onnx --source video.mp4 --frames 300
  lepton-edge bench --latency --duration 60           # live 30 fps latency stability run
"""


def _sink_from_flag(spec: str) -> dict[str, Any]:
    """``console``, ``jsonl:PATH`` or ``video:PATH`` -> a sink config mapping."""
    kind, _, path = spec.partition(":")
    if kind == "console" and not path:
        return {"type": "console"}
    if kind in ("jsonl", "video") and path:
        return {"type": kind, "path": path}
    raise ConfigError(f"--sink {spec!r}: expected console, jsonl:PATH or video:PATH")


def config_from_args(args: argparse.Namespace):  # -> DeviceConfig
    """The device config from ``--config`` with command-line overrides, or from flags alone."""
    from lepton_edge.config import load_config, parse_config

    if args.config:
        config = load_config(args.config)
        # python mode keeps secrets (json mode would mask a password as '**********')
        data = config.model_dump(mode="python", exclude_unset=True)
        base = None
    else:
        if not (args.model and args.source):
            raise ConfigError("give --config FILE, or both --model and --source")
        data, base = {}, Path.cwd()
    if args.model:
        data["model"] = {**data.get("model", {}), "path": args.model}
    if args.source:
        data["source"] = {**data.get("source", {}), "uri": args.source}
    if args.sink:
        data["sinks"] = [_sink_from_flag(s) for s in args.sink]
    if args.device_id:
        data["device_id"] = args.device_id
    origin = args.config or "command line"
    return parse_config(data, origin, base_dir=base)


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


def cmd_run(args: argparse.Namespace) -> int:
    from lepton_edge.pipeline import RateMeter
    from lepton_edge.runtime import build_pipeline
    from lepton_edge.systemd import FrameWatchdog, ServiceNotifier

    config = config_from_args(args)
    if config.agent is not None:
        from lepton_edge.agent.agent import run_device

        return run_device(config, duration_s=args.duration, max_frames=args.max_frames)
    if config.idle:
        raise ConfigError(
            f"{args.config or 'command line'}: idle: true runs no pipeline, and without an `agent` section "
            "there is no broker to wait on for a workload: nothing to do. Add an agent section "
            "(see deploy/device.example.yaml), or set idle: false and give a model and a source"
        )
    assert config.model is not None and config.source is not None
    if config.model.artifact is not None:
        raise ConfigError("model.artifact needs the device agent (an `agent` section) to download and verify it")
    pipeline = build_pipeline(config, max_frames=args.max_frames)
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
        final = pipeline.run(duration_s=args.duration, tick=tick, tick_interval_s=0.25)
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


def cmd_scheduler(args: argparse.Namespace) -> int:
    from lepton_edge.scheduler.service import run_scheduler_command

    return run_scheduler_command(args)


def cmd_doctor(args: argparse.Namespace) -> int:
    from lepton_edge.doctor import main_doctor

    return main_doctor(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from lepton_edge.bench import run_bench_command

    return run_bench_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lepton-edge",
        description="Low-latency edge inference: run pipelines, build engines, manage a fleet.",
    )
    parser.add_argument("--version", action="version", version=f"lepton-edge {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the inference pipeline", epilog=EPILOG_RUN,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Run source -> preprocess -> model -> postprocess -> sinks.")
    run.add_argument("--config", "-c", help="device config YAML (see deploy/device.example.yaml)")
    run.add_argument("--model", help="ONNX model path (overrides the config)")
    run.add_argument("--source", help="source URI (overrides the config)")
    run.add_argument("--sink", action="append", help="console | jsonl:PATH | video:PATH (repeatable; replaces "
                     "the config's sinks)")
    run.add_argument("--device-id", help="device name in logs and telemetry")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--max-frames", type=int, help="stop after this many frames")
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser("bench", help="measure raw backend vs naive loop vs pipeline, side by side",
                           epilog=EPILOG_BENCH, formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Benchmarks print ratios measured in one run (absolute times on a "
                           "shared machine are noise).")
    from lepton_edge.bench import add_bench_arguments

    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    from lepton_edge.calibration import add_calibrate_arguments

    add_calibrate_arguments(sub.add_parser(
        "calibrate", help="measure INT8 activation ranges: calibration table, TensorRT cache, QDQ model"))

    from lepton_edge.compare import EPILOG_COMPARE, add_compare_arguments, cli_compare
    from lepton_edge.engine_cache import (
        EPILOG_BUILD,
        EPILOG_INSPECT,
        add_build_arguments,
        add_inspect_arguments,
        cli_build,
        cli_inspect,
    )

    fmt = argparse.RawDescriptionHelpFormatter
    build = sub.add_parser("build", help="build an engine artifact (engine + manifest.json) from an ONNX model",
                           epilog=EPILOG_BUILD, formatter_class=fmt)
    add_build_arguments(build)
    build.set_defaults(func=cli_build)
    inspect = sub.add_parser("inspect", help="show an artifact (and whether it matches this machine) or an ONNX "
                             "model", epilog=EPILOG_INSPECT, formatter_class=fmt)
    add_inspect_arguments(inspect)
    inspect.set_defaults(func=cli_inspect)
    compare = sub.add_parser("compare", help="accuracy (and --bench speed) of a candidate engine vs its fp32 "
                             "reference", epilog=EPILOG_COMPARE, formatter_class=fmt)
    add_compare_arguments(compare)
    compare.set_defaults(func=cli_compare)

    sched = sub.add_parser("scheduler", help="run a fleet scheduler replica (ingestion, placement, failover, API)",
                           description="Ingests births, deaths, telemetry and reported configs over MQTT, places "
                           "workloads on devices, pushes desired configs, serves the HTTP API and dashboard.",
                           epilog="examples:\n  lepton-edge scheduler --config deploy/scheduler.example.yaml",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sched.add_argument("--config", "-c", required=True,
                       help="scheduler config YAML (see deploy/scheduler.example.yaml)")
    sched.set_defaults(func=cmd_scheduler)
    from lepton_edge.scheduler.simulator import add_simulate_arguments, run_simulator

    sim = sub.add_parser("simulate", help="simulate a fleet of devices speaking the real protocol")
    add_simulate_arguments(sim)
    sim.set_defaults(func=run_simulator)

    from lepton_edge.demo import add_demo_arguments, cmd_demo

    demo = sub.add_parser("demo", help="the whole system on this machine: broker, scheduler, device",
                          description="Starts a local mosquitto, the scheduler (dashboard address printed) and a "
                          "device running the bundled detector on a live synthetic camera, with telemetry and "
                          "remote configuration between them.",
                          epilog="examples:\n  lepton-edge demo --duration 30\n  lepton-edge demo --no-fleet",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_arguments(demo)
    demo.set_defaults(func=cmd_demo)

    doctor = sub.add_parser("doctor", help="check this machine, the config, its model and the broker",
                            description="Checks Python, onnxruntime, TensorRT/CUDA, OpenCV (GStreamer/FFmpeg), "
                            "cameras, Jetson, the config and model, broker reachability, disk space and the "
                            "clock. Exits 1 if any check fails; warnings do not.")
    from lepton_edge.doctor import add_arguments as add_doctor_arguments

    add_doctor_arguments(doctor)
    doctor.set_defaults(func=cmd_doctor)

    from lepton_edge.agent.signing import (
        EPILOG_KEYGEN,
        EPILOG_SIGN,
        add_keygen_arguments,
        add_sign_arguments,
        cmd_keygen,
        cmd_sign,
    )

    keygen = sub.add_parser("keygen", help="create an ed25519 key pair that signs model artifacts",
                            epilog=EPILOG_KEYGEN, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_keygen_arguments(keygen)
    keygen.set_defaults(func=cmd_keygen)
    sign = sub.add_parser("sign", help="sign a model artifact and print its model.artifact config snippet",
                          epilog=EPILOG_SIGN, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sign_arguments(sign)
    sign.set_defaults(func=cmd_sign)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lepton_edge.logs import setup_logging

    # OpenCV/FFmpeg print a line per failed reconnect attempt; our reader reports those itself.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return args.func(args)
    except LeptonError as e:
        log.error("%s", e)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
