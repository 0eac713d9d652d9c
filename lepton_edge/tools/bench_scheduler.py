"""The scheduler benchmark (``lepton-edge bench --suite scheduler``), four parts in one run:

1. **ingestion**: simulated devices (a separate process, bulk mode) send telemetry at ``rate`` messages
   per second each through a real mosquitto (started here on a free port) to one scheduler replica with
   a SQLite store; sampled every second: messages received and written per second and the writer's
   backlog. The replica keeps up when the written rate matches the offered rate and the backlog does
   not grow (least-squares slope over the steady part).
2. **placement**: :func:`placement.bench_placement` (10,000 workloads on 2,000 devices).
3. **failover**: devices that run a workload die one after the other (the death the broker publishes
   for a closed connection); measured from the death's publication to the arrival, at a subscriber, of
   the desired config that moves the workload to another device. Detection is not included: a closed
   connection's will is immediate, a silent network loss is noticed after 1.5 x the device's keepalive.
4. **packing**: more workloads than devices; simulated devices batch the streams of a model (more throughput
   per stream, :func:`~lepton_edge.scheduler.simulator.batch_gain`) and report it per model; measured: how
   many workloads each device gets, the capacity the scheduler learns from that telemetry, and what the death
   of the fullest device moves (its workloads only; the survivors' running workloads are not restarted).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from lepton_edge.config.fleet import MqttConfig
from lepton_edge.config.scheduler import parse_scheduler_config
from lepton_edge.core.errors import LeptonError
from lepton_edge.core.logs import setup_logging
from lepton_edge.fleet.mqtt import IncomingMessage, MqttClient
from lepton_edge.fleet.protocol import (
    DesiredConfig,
    TopicKind,
    birth_topic,
    decode,
    encode,
    parse_topic,
    subscription,
    telemetry_topic,
)
from lepton_edge.scheduler.models import Workload
from lepton_edge.scheduler.placement import bench_placement
from lepton_edge.scheduler.service import SchedulerService
from lepton_edge.scheduler.simulator import DeviceSpec, FleetSimulator, SimDevice, batch_gain

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ broker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalBroker:
    """A throwaway mosquitto on a free 127.0.0.1 port (never the system broker); a context manager."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
        if exe is None:
            raise LeptonError("the scheduler benchmark needs mosquitto: apt-get install mosquitto")
        self.port = _free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "max_queued_messages 1000000",
            "max_connections -1",
            f"log_dest file {workdir / 'mosquitto.log'}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise LeptonError(f"mosquitto did not start on port {self.port}; see {workdir / 'mosquitto.log'}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _service(port: int, store_url: str, replica_id: str, **overrides: Any):
    data: dict[str, Any] = {
        "store_url": store_url,
        "mqtt": {"host": "127.0.0.1", "port": port, "max_inflight": 1000, "max_queued": 0},
        "replicas": {"replica_id": replica_id},
        "fleet_rebirth_on_start": False,
        "stats_log_s": 10,
        "api": {"enabled": False},
        **overrides,
    }
    return SchedulerService(parse_scheduler_config(data, "bench"))


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


# --------------------------------------------------------------------------------------- ingestion


def bench_ingestion(devices: int = 10_000, duration_s: float = 60.0, rate_hz: float = 1.0,
                    workdir: Path | None = None, warmup_s: float = 10.0) -> dict[str, Any]:
    """Telemetry of ``devices`` simulated devices at ``rate_hz`` each for ``duration_s`` into one replica,
    after ``warmup_s`` seconds of connecting (births) that are not counted."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="lepton-sched-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with LocalBroker(workdir) as broker:
        service = _service(broker.port, f"sqlite:///{workdir / 'ingest.db'}", "bench-ingest",
                           heartbeat_timeout_s=max(30.0, 3 / rate_hz))
        service.start()
        if not service.wait_connected(10):
            service.stop()
            raise LeptonError(f"the benchmark's scheduler could not connect: {service.mqtt.last_error}")
        stats_file = workdir / "simulator.json"
        with open(workdir / "simulator.log", "wb") as sim_log:  # the child keeps its own copy
            sim = subprocess.Popen(
                [sys.executable, "-m", "lepton_edge.cli", "--log-level", "warning", "simulate", "--devices",
                 str(devices), "--broker", f"127.0.0.1:{broker.port}", "--rate", str(rate_hz), "--mode", "bulk",
                 "--prefix", "bench", "--duration", str(duration_s + warmup_s), "--stats-file", str(stats_file)],
                stdout=subprocess.DEVNULL, stderr=sim_log,
            )
        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        try:
            while sim.poll() is None and time.monotonic() - started < duration_s + warmup_s + 60:
                time.sleep(1.0)
                s = service.stats()
                samples.append({
                    "t": round(time.monotonic() - started, 2),
                    "received": s["messages_in"],
                    "written": s["telemetry_written"],
                    "backlog": s["backlog"],
                    "oldest_s": s["backlog_oldest_s"],
                })
        finally:
            if sim.poll() is None:
                sim.terminate()
            sim.wait(30)
            drain_started = time.monotonic()
            while service.stats()["backlog"] and time.monotonic() - drain_started < 30:
                time.sleep(0.2)
            final = service.stats()
            service.stop()
    sim_stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    steady = [s for s in samples if warmup_s <= s["t"] <= warmup_s + duration_s]
    if len(steady) < 2:
        steady = samples
    span = steady[-1]["t"] - steady[0]["t"] if len(steady) > 1 else 1.0
    offered = devices * rate_hz
    written_rate = (steady[-1]["written"] - steady[0]["written"]) / span if span else 0.0
    received_rate = (steady[-1]["received"] - steady[0]["received"]) / span if span else 0.0
    slope = _slope([(s["t"], s["backlog"]) for s in steady])
    return {
        "devices": devices,
        "rate_per_device_hz": rate_hz,
        "offered_msg_per_s": offered,
        "steady_window_s": round(span, 1),
        "received_msg_per_s": round(received_rate, 1),
        "written_msg_per_s": round(written_rate, 1),
        "backlog_max": max((s["backlog"] for s in steady), default=0),
        "backlog_slope_per_s": round(slope, 2),
        "oldest_queued_max_s": max((s["oldest_s"] for s in steady), default=0.0),
        "keeps_up": written_rate >= 0.95 * offered and slope < 0.01 * offered,
        "batched_writes": hasattr(service.store, "record_telemetry_batch"),
        "rejected": final["rejected"],
        "simulator": sim_stats,
        "samples": samples,
    }


def bench_ingest_ceiling(devices: int = 2000, rounds: int = 5, workdir: Path | None = None) -> dict[str, Any]:
    """The replica's own cost per telemetry message, without broker or network: messages are handed to
    its MQTT handler directly and written by its writer to a SQLite store. On a shared machine this
    separates what the replica costs from what the other processes take."""

    workdir = Path(workdir or tempfile.mkdtemp(prefix="lepton-sched-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    service = _service(1, f"sqlite:///{workdir / 'ceiling.db'}", "bench-ceiling",
                       ingest={"queue_max": devices * rounds + 1})
    service.start_workers()
    sims = [SimDevice(DeviceSpec(f"ceil-{i:05d}"), 100) for i in range(devices)]
    for device in sims:
        device.new_session()
        service.ingestion.on_birth(IncomingMessage(birth_topic(device.device_id), encode(device.birth()), 1, False))
    while len(service.control):
        time.sleep(0.05)
    now = time.time()
    messages = [IncomingMessage(telemetry_topic(d.device_id), d.telemetry_payload(now + r, 1.0), 0, False)
                for r in range(rounds) for d in sims]
    cpu0, wall0, thread0 = time.process_time(), time.perf_counter(), time.thread_time()
    for message in messages:
        service.ingestion.on_telemetry(message)
    handler_cpu = time.thread_time() - thread0
    while service.counts["telemetry_written"] < len(messages) and time.perf_counter() - wall0 < 300:
        time.sleep(0.01)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    batched = hasattr(service.store, "record_telemetry_batch")
    service.stop()
    n = len(messages)
    return {
        "messages": n,
        "handler_cpu_us_per_msg": round(handler_cpu / n * 1e6, 1),
        "process_cpu_us_per_msg": round(cpu / n * 1e6, 1),
        "msg_per_s": round(n / wall, 1),
        "batched_writes": batched,
    }


# ---------------------------------------------------------------------------------------- failover


class _DesiredWatcher:
    """Time of arrival of each desired config, by device, at a separate subscriber."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[tuple[float, DesiredConfig]]] = {}
        self._cond = threading.Condition()

    def __call__(self, message: IncomingMessage) -> None:
        now = time.time()
        if not message.payload:
            return
        desired = decode(TopicKind.CONFIG_DESIRED, message.payload, message.topic)
        assert isinstance(desired, DesiredConfig)
        with self._cond:
            self.arrivals.setdefault(parse_topic(message.topic).device_id or "", []).append((now, desired))
            self._cond.notify_all()

    def wait_for_source(self, uri: str, after: float, exclude: str, timeout: float) -> tuple[str, float] | None:
        """The first device other than ``exclude`` sent a config with source ``uri`` after ``after``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for device_id, entries in self.arrivals.items():
                    if device_id == exclude:
                        continue
                    for arrived, desired in entries:
                        if arrived >= after and uri in _source_uris(desired.config):
                            return device_id, arrived
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)


def _source_uris(config: dict[str, Any]) -> set[str]:
    """The source URIs of a device document, either form."""
    streams = config.get("streams")
    sources = list(streams.values()) if isinstance(streams, dict) else [config.get("source")]
    return {str(s["uri"]) for s in sources if isinstance(s, dict) and "uri" in s}


def bench_failover(deaths: int = 100, devices: int = 300, workloads: int = 150,
                   workdir: Path | None = None) -> dict[str, Any]:
    """Median and p99 time from a device's death to its workload's new desired config, over ``deaths``."""

    if devices - deaths < workloads:
        raise LeptonError(f"failover bench: {devices} devices - {deaths} deaths cannot host {workloads} workloads")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="lepton-sched-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    latencies: list[float] = []
    missed = 0
    with LocalBroker(workdir) as broker:
        watcher = _DesiredWatcher()
        client = MqttClient(MqttConfig(host="127.0.0.1", port=broker.port, client_id="bench-watcher",
                                       session_expiry_s=0))
        client.subscribe(subscription(TopicKind.CONFIG_DESIRED), watcher)
        client.start()
        service = _service(broker.port, f"sqlite:///{workdir / 'failover.db'}", "bench-failover",
                           heartbeat_timeout_s=60)
        sim = FleetSimulator("127.0.0.1", broker.port, devices, rate_hz=0.2, prefix="fo", mode="bulk",
                             connections=1)
        try:
            service.start()
            client.wait_connected(10)
            sim.start()
            deadline = time.monotonic() + 60
            while service.stats()["devices_online"] < devices:
                if time.monotonic() > deadline:
                    raise LeptonError("failover bench: the simulated devices did not all come online in 60 s")
                time.sleep(0.2)
            for i in range(workloads):
                service.store.add_workload(Workload(
                    workload_id=f"fo-{i:04d}", source_uri=f"synthetic://shapes?fps=5&id={i}", model="det.onnx",
                    required_fps=5.0))
            service.replan("benchmark workloads added")
            deadline = time.monotonic() + 120
            while sum(a.status == "applied" for a in service.store.list_assignments()) < workloads:
                if time.monotonic() > deadline:
                    raise LeptonError("failover bench: the workloads were not all applied within 120 s")
                time.sleep(0.2)
            for _ in range(deaths):
                assignment = sorted(service.store.list_assignments(), key=lambda a: a.device_id)[0]
                uri = service.store.get_workload(assignment.workload_id).source_uri
                died_at = sim.kill(assignment.device_id)
                found = watcher.wait_for_source(uri, died_at, assignment.device_id, timeout=10)
                if found is None:
                    missed += 1
                    continue
                latencies.append(found[1] - died_at)
                time.sleep(0.05)
        finally:
            sim.stop()
            service.stop()
            client.stop()
    latencies.sort()
    p = (lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1)) if latencies else (
        lambda q: None)
    return {
        "devices": devices,
        "workloads": workloads,
        "deaths": deaths,
        "moved": len(latencies),
        "missed": missed,
        "median_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": p(0.99),
        "max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "debounce_ms": 200,
        "detection": "excluded: a closed connection's will is immediate; a silent loss takes 1.5 x keepalive",
    }


# ---------------------------------------------------------------------------------------------- packing


def bench_packing(devices: int = 20, workloads: int = 80, capacity_fps: float = 40.0, fps: float = 5.0,
                  workdir: Path | None = None) -> dict[str, Any]:
    """``workloads`` streams of ``fps`` on ``devices`` simulated CUDA devices (``capacity_fps`` for one stream of a
    model, more when batched): how they are packed, the capacity learned, and a packed device's failover."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="lepton-sched-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    specs = [DeviceSpec(f"pk-{i:04d}", accelerator="cuda", runtimes={"onnxruntime": "1.20.1", "tensorrt": "10.3.0"},
                        capacity_fps=capacity_fps) for i in range(devices)]  # fmt: skip
    with LocalBroker(workdir) as broker:
        service = _service(broker.port, f"sqlite:///{workdir / 'packing.db'}", "bench-packing",
                           heartbeat_timeout_s=60)
        sim = FleetSimulator("127.0.0.1", broker.port, specs, rate_hz=2.0, prefix="pk", mode="bulk", connections=1)
        try:
            service.start()
            sim.start()
            _wait(lambda: service.stats()["devices_online"] >= devices, 60, "the simulated devices online")
            for i in range(workloads):
                service.store.add_workload(Workload(
                    workload_id=f"pk-{i:04d}", source_uri=f"synthetic://shapes?fps={fps:g}&id={i}", model="det.onnx",
                    required_fps=fps))
            service.replan("benchmark workloads added")
            placed = _wait(lambda: _applied(service, workloads), 120, "every workload applied")
            per_device = [sum(1 for d in placed.values() if d == s.device_id) for s in specs]
            busy = [s.device_id for s, n in zip(specs, per_device, strict=True) if n]
            learned = _wait(lambda: _learned(service, busy), 60, "capacity learned from every busy device")
            fullest = max(busy, key=lambda d: (sum(1 for x in placed.values() if x == d), d))
            orphans = sorted(w for w, d in placed.items() if d == fullest)
            died_at = time.monotonic()
            sim.kill(fullest)
            after = _wait(lambda: (p := _applied(service, workloads)) and fullest not in p.values() and p, 60,
                          "the dead device's workloads applied elsewhere")
            failover_s = time.monotonic() - died_at
            restarted = sum(sim.device(d).starts[w] - 1 for w, d in placed.items() if d != fullest)
        finally:
            sim.stop()
            service.stop()
    values = sorted(learned.values())
    return {
        "devices": devices,
        "workloads": workloads,
        "fps_per_workload": fps,
        "workloads_per_device": {"min": min(per_device), "mean": round(statistics.fmean(per_device), 2),
                                 "max": max(per_device)},
        "single_stream_capacity_fps": capacity_fps,
        "learned_capacity_fps": {"min": values[0], "median": statistics.median(values), "max": values[-1]},
        "expected_capacity_fps": sorted({round(capacity_fps * batch_gain(n), 3) for n in per_device if n}),
        "failover": {
            "device_workloads": len(orphans),
            "moved": sum(1 for w in orphans if after.get(w) not in (None, fullest)),
            "others_moved": sum(1 for w, d in placed.items() if d != fullest and after.get(w) != d),
            "survivor_restarts": restarted,
            "seconds": round(failover_s, 3),
        },
    }


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise LeptonError(f"packing bench: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.2)
    return value


def _applied(service: SchedulerService, n: int) -> dict[str, str] | None:
    """Workload -> device once all ``n`` workloads are applied and none is pending, else None."""
    assignments = service.store.list_assignments()
    if len(assignments) != n or any(a.status != "applied" for a in assignments):
        return None
    return {a.workload_id: a.device_id for a in assignments}


def _learned(service: SchedulerService, device_ids: list[str]) -> dict[str, float] | None:
    """Device -> capacity learned for the benchmark's model, once every one of ``device_ids`` has one."""
    capacity = {d.device_id: d.fps_capacity.get("det.onnx") for d in service.store.list_devices()}
    if not all(capacity.get(d) for d in device_ids):
        return None
    return {d: float(capacity[d] or 0.0) for d in device_ids}


# -------------------------------------------------------------------------------------------- suite


def bench_scheduler(devices: int = 10_000, duration_s: float = 60.0, rate_hz: float = 1.0,
                    placement_workloads: int = 10_000, placement_devices: int = 2_000,
                    deaths: int = 100) -> dict[str, Any]:
    """All three parts; the report of ``lepton-edge bench --suite scheduler``."""

    print(f"scheduler: ingestion of {devices} devices x {rate_hz:g} msg/s for {duration_s:.0f} s ...",
          file=sys.stderr, flush=True)
    ingestion = bench_ingestion(devices, duration_s, rate_hz)
    ingestion["ceiling"] = bench_ingest_ceiling()
    print(f"scheduler: placement of {placement_workloads} workloads on {placement_devices} devices ...",
          file=sys.stderr, flush=True)
    placement_report = bench_placement(placement_workloads, placement_devices)
    print(f"scheduler: failover over {deaths} deaths ...", file=sys.stderr, flush=True)
    failover = bench_failover(deaths)
    print("scheduler: packing several workloads per device ...", file=sys.stderr, flush=True)
    packing = bench_packing()
    return {"ingestion": ingestion, "placement": placement_report, "failover": failover, "packing": packing}


def print_table(report: dict[str, Any]) -> None:
    """The scheduler report as a short table."""
    ing, pl, fo = report["ingestion"], report["placement"], report["failover"]
    print(f"\nscheduler ingestion  {ing['devices']} devices x {ing['rate_per_device_hz']:g} msg/s "
          f"(offered {ing['offered_msg_per_s']:.0f} msg/s, steady {ing['steady_window_s']:.0f} s, "
          f"batched writes {'yes' if ing['batched_writes'] else 'no'})")
    print(f"  received {ing['received_msg_per_s']:9.0f} msg/s   written {ing['written_msg_per_s']:9.0f} msg/s   "
          f"backlog max {ing['backlog_max']}  slope {ing['backlog_slope_per_s']:+.1f}/s   "
          f"keeps up: {'yes' if ing['keeps_up'] else 'NO'}")
    if "ceiling" in ing:
        c = ing["ceiling"]
        print(f"  the replica alone (no broker): {c['msg_per_s']:.0f} msg/s, {c['handler_cpu_us_per_msg']:.0f} us CPU "
              f"per message to decode and queue, {c['process_cpu_us_per_msg']:.0f} us in all with the write")
    print(f"scheduler placement  {pl['n_workloads']} workloads on {pl['n_devices']} devices")
    print(f"  plan {pl['plan_s'] * 1000:.0f} ms   no-change replan {pl['replan_s'] * 1000:.0f} ms   failover replan "
          f"{pl['failover_s'] * 1000:.0f} ms   moved on failover {pl['moved_on_failover']} "
          f"(of {pl['workloads_on_failed_devices']} on failed devices)   max/lower bound "
          f"{pl['balance']['max_over_lower_bound']}")
    print(f"scheduler failover   {fo['deaths']} deaths ({fo['devices']} devices, {fo['workloads']} workloads): "
          f"median {fo['median_ms']} ms   p99 {fo['p99_ms']} ms   max {fo['max_ms']} ms   missed {fo['missed']}"
          "   (+ detection)")
    if "packing" in report:
        pk = report["packing"]
        per, cap, dead = pk["workloads_per_device"], pk["learned_capacity_fps"], pk["failover"]
        print(f"scheduler packing    {pk['workloads']} workloads x {pk['fps_per_workload']:g} fps on {pk['devices']} "
              f"devices: {per['min']}-{per['max']} per device (mean {per['mean']})")
        print(f"  capacity learned {cap['min']:g}-{cap['max']:g} fps (one stream {pk['single_stream_capacity_fps']:g}, "
              f"batched {pk['expected_capacity_fps']})   fullest device died: {dead['moved']} of "
              f"{dead['device_workloads']} moved in {dead['seconds']:.2f} s, others moved {dead['others_moved']}, "
              f"restarted {dead['survivor_restarts']}")


def main(argv: list[str] | None = None) -> int:
    """``python -m lepton_edge.tools.bench_scheduler`` (the same as ``lepton-edge bench --suite scheduler``)."""

    parser = argparse.ArgumentParser(prog="lepton-edge bench --suite scheduler")
    parser.add_argument("--devices", type=int, default=10_000, help="simulated devices for ingestion")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of steady ingestion")
    parser.add_argument("--rate", type=float, default=1.0, help="telemetry messages per second per device")
    parser.add_argument("--deaths", type=int, default=100, help="device deaths in the failover part")
    parser.add_argument("--output", default="out/bench/scheduler.json", help="JSON report path")
    args = parser.parse_args(argv)
    setup_logging("warning")
    report = bench_scheduler(args.devices, args.duration, args.rate, deaths=args.deaths)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\nreport: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
