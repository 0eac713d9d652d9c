"""What the device agent costs: pipeline throughput with the agent ON vs OFF, and its memory.

``bench_agent_overhead`` runs the same offline source through the same model, alternating rounds of
the bare pipeline (OFF) and the pipeline under a :class:`DeviceAgent` (ON: telemetry every 0.5 s and
results published to a real broker), and reports medians and their ratios (target >= 0.98 with the
default results rate limit) and the resident memory the agent adds above the pipeline (target < 60 MB).
Without ``mqtt`` it starts a private mosquitto on a free loopback port (``mosquitto`` must be installed).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lepton_edge.config.device import parse_config
from lepton_edge.config.fleet import MqttConfig
from lepton_edge.config.pipeline import PreprocessConfig
from lepton_edge.core.errors import LeptonError
from lepton_edge.data import DEMO_CLASSIFIER, DEMO_MODEL
from lepton_edge.device.agent import DeviceAgent
from lepton_edge.device.controller import open_pipeline

RATIO_TARGET = 0.98
MEMORY_TARGET_MB = 60.0


@contextlib.contextmanager
def private_broker(folder: Path) -> Iterator[int]:
    """A throwaway mosquitto on 127.0.0.1 (no persistence); yields its port."""
    executable = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if executable is None:
        raise LeptonError(
            "bench_agent_overhead needs an MQTT broker: install mosquitto (apt-get install mosquitto) or "
            "pass mqtt=MqttConfig(host=..., port=..., client_id=...) of a broker to use"
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n")
    process = subprocess.Popen(
        [executable, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise LeptonError(
                    f"mosquitto exited at startup: {process.stderr.read().decode(errors='replace')}"
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise LeptonError(f"mosquitto did not open port {port} within 10 s") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stderr:
            process.stderr.close()


def _default_model() -> Path:
    return DEMO_MODEL if DEMO_MODEL.exists() else DEMO_CLASSIFIER


def _rate(stats: Any) -> float:
    if not stats.results or stats.last_result_at is None:
        return 0.0
    return stats.results / max(stats.last_result_at - stats.started_at, 1e-9)


def bench_agent_overhead(
    model: Path | None = None,
    *,
    frames: int = 300,
    rounds: int = 3,
    threads: int = 0,
    size: tuple[int, int] = (640, 480),
    mqtt: MqttConfig | None = None,
    preprocess: PreprocessConfig | None = None,
) -> dict[str, Any]:
    """Median frames/s of three cases on the same model, source and threads, in interleaved rounds:

    - ``off``: the bare pipeline;
    - ``on``: under the agent with its default results settings (rate-limited to ``max_rate_hz``) and
      telemetry every 0.5 s: the deployed configuration, which the 0.98 target is about;
    - ``on_every_result``: every result published (no rate limit), the worst case.

    Also the memory the agent adds above the pipeline: the peak RSS of a fresh process running the source
    under the agent (every result published) minus that of a fresh process running the bare pipeline.
    ``preprocess`` (optional) is the config's preprocess section (``lepton-edge bench --size``, ...).
    """

    model = Path(model) if model else _default_model()
    source = f"synthetic://shapes?fps=0&width={size[0]}&height={size[1]}&frames={frames}&seed=1"
    base: dict[str, Any] = {
        "device_id": "bench-agent",
        "model": {"path": str(model)},
        "source": {"uri": source},
        "backend": {"type": "onnxruntime", "intra_op_threads": threads},
        **({"preprocess": preprocess.model_dump(exclude_unset=True)} if preprocess is not None else {}),
    }
    results_settings = {"on": {}, "on_every_result": {"max_rate_hz": 10000}}
    fps: dict[str, list[float]] = {"off": [], "on": [], "on_every_result": []}
    published: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="lepton-bench-agent-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        if mqtt is None:
            port = stack.enter_context(private_broker(folder))
            mqtt = MqttConfig(host="127.0.0.1", port=port, client_id="bench-agent")
        mqtt_section = {
            **mqtt.model_dump(exclude={"password"}),
            "password": mqtt.password.get_secret_value() if mqtt.password else None,
        }
        off_config = parse_config(base, "bench")
        cases = list(fps)
        for round_index in range(rounds):
            order = cases if round_index % 2 == 0 else cases[::-1]
            for case in order:
                if case == "off":
                    pipeline = open_pipeline(off_config)
                    try:
                        pipeline.run()
                        fps[case].append(_rate(pipeline.stats))
                    finally:
                        pipeline.backend.close()
                    continue
                agent_section = {
                    "mqtt": mqtt_section,
                    "state_dir": str(folder / f"state-{case}-{round_index}"),
                    "telemetry_interval_s": 0.5,
                    "results": results_settings[case],
                }
                agent = DeviceAgent(parse_config({**base, "agent": agent_section}, "bench"))
                try:
                    agent.start()
                    agent.client.wait_connected(10)
                    agent.controller.pipeline.wait()
                    fps[case].append(_rate(agent.controller.stats))
                    sink = agent.result_sink
                    published[case] = sink.published if sink else 0
                finally:
                    agent.stop()
        # memory: peak RSS of a fresh process per case, so imports and allocator history do not mix
        every_result = {
            "mqtt": mqtt_section,
            "state_dir": str(folder / "state-rss"),
            "telemetry_interval_s": 0.5,
            "results": results_settings["on_every_result"],
        }
        peak = {
            "off": _peak_rss_mb("off", base),
            "on_every_result": _peak_rss_mb("on", {**base, "agent": every_result}),
        }
    medians = {case: statistics.median(values) for case, values in fps.items()}
    off = medians["off"]
    return {
        "model": str(model),
        "source": source,
        "frames_per_round": frames,
        "rounds": rounds,
        "intra_op_threads": threads,
        "fps": medians,
        "ratios": {
            f"{case}_vs_off": medians[case] / off if off else 0.0 for case in ("on", "on_every_result")
        },
        "ratio_target": RATIO_TARGET,
        "results_published_last_round": published,
        "peak_rss_mb": peak,
        "agent_memory_mb": peak["on_every_result"] - peak["off"],
        "memory_target_mb": MEMORY_TARGET_MB,
    }


def _peak_rss_mb(case: str, data: dict[str, Any]) -> float:
    """Peak RSS (MB) of a fresh process that runs ``data`` bare (``off``) or under the agent (``on``)."""
    out = subprocess.run(
        [sys.executable, "-m", "lepton_edge.tools.bench_agent", case, json.dumps(data)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        raise LeptonError(f"memory measurement ({case}) failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def _run_one(case: str, data: dict[str, Any]) -> float:
    """Run one case to the end of its source in this process; return its peak RSS in MB."""
    import resource

    config = parse_config(data, "bench")
    if case == "off":
        pipeline = open_pipeline(config)
        try:
            pipeline.run()
        finally:
            pipeline.backend.close()
    else:
        agent = DeviceAgent(config).start()
        try:
            agent.client.wait_connected(10)
            agent.controller.pipeline.wait()
        finally:
            agent.stop()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def format_agent_overhead(report: dict[str, Any]) -> str:
    """Lines for the bench table."""
    f, r = report["fps"], report["ratios"]
    return (
        f"agent overhead  {Path(report['model']).name}  ({report['frames_per_round']} frames x "
        f"{report['rounds']} rounds, median fps; peak RSS of fresh processes)\n"
        f"  agent off {f['off']:9.1f}   agent on {f['on']:9.1f}   every result published "
        f"{f['on_every_result']:9.1f}\n"
        f"  on / off {r['on_vs_off']:.3f} (target >= {report['ratio_target']})   every result / off "
        f"{r['on_every_result_vs_off']:.3f}   agent memory {report['agent_memory_mb']:+.1f} MB "
        f"(target < {report['memory_target_mb']:.0f})"
    )


if __name__ == "__main__":  # internal: one memory measurement per fresh process (see _peak_rss_mb)
    print(f"{_run_one(sys.argv[1], json.loads(sys.argv[2])):.1f}")
