"""Telemetry: what the device reports every interval (pipeline performance, drops, system health).

Everything here is read on demand from counters the pipeline keeps anyway, so reporting costs nothing
between two messages. An idle runtime (no pipeline) reports ``fps`` 0, no latency, no frame age, no
sources and no artifact; frame and drop counters keep their totals. System figures come from psutil and,
where present, from sysfs: thermal zones (``/sys/class/thermal/thermal_zone*/temp`` and ``type``) and the
Jetson GPU load in tenths of a percent: ``/sys/devices/gpu.0/load`` or ``/sys/devices/platform/gpu.0/load``
(JetPack 5 and older), else the GPU's devfreq device, ``/sys/class/devfreq/<addr>.gpu/device/load`` (Orin on
JetPack 6, where the older paths are gone).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lepton_edge.core.metrics import RateMeter
from lepton_edge.fleet.protocol import (
    MAX_TELEMETRY_MODELS,
    MAX_TELEMETRY_WORKLOADS,
    ModelTelemetry,
    OutboxStatus,
    Percentiles,
    Telemetry,
    Usage,
    WorkloadTelemetry,
)
from lepton_edge.runtime.pipeline import STAGES, PipelineStats

log = logging.getLogger(__name__)

MAX_NAME = 128
MAX_TEMPERATURES = 32
GPU_LOAD_FILES = ("devices/gpu.0/load", "devices/platform/gpu.0/load")
GPU_DEVFREQ_LOAD = "*gpu*/device/load"
"""Below ``class/devfreq``: the integrated GPU's devfreq node (``17000000.gpu`` on Orin), its device's load."""

SOURCE_STATES = {
    "idle": "starting",
    "connecting": "starting",
    "streaming": "running",
    "stalled": "stalled",
    "reconnecting": "reconnecting",
    "ended": "ended",
    "stopped": "ended",
    "failed": "failed",
}
"""Reader states (lepton_edge.runtime.sources.SourceState) -> protocol source states."""


class RuntimeView(Protocol):
    """What telemetry reads from the running pipeline (implemented by RuntimeController)."""

    @property
    def stats(self) -> PipelineStats: ...

    @property
    def artifact_id(self) -> str | None: ...

    @property
    def config_version(self) -> int: ...

    @property
    def idle(self) -> bool: ...

    def source_states(self) -> dict[str, str]: ...

    def workload_reports(self) -> dict[str, WorkloadReport]: ...

    def model_reports(self) -> dict[str, ModelReport]: ...


MAX_ERROR_TEXT = 1000
"""Longest error text a workload's telemetry carries."""


@dataclass(frozen=True, slots=True)
class WorkloadReport:
    """What the runtime says of one running workload (telemetry turns it into a ``WorkloadTelemetry``)."""

    stats: PipelineStats
    stream: str
    model: str
    source_state: str
    state: str = "running"
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ModelReport:
    """A loaded model's totals so far (telemetry turns their growth over an interval into a ``ModelTelemetry``)."""

    frames: int
    batches: int
    busy_s: float
    streams: int


def clip_name(text: str) -> str:
    """``text`` cut to a protocol name (1-128 characters)."""
    return text[:MAX_NAME] or "unknown"


def protocol_source_state(state: str) -> str:
    return SOURCE_STATES.get(state, "starting")


def percentiles(summary: dict[str, float]) -> Percentiles:
    """A LatencyWindow summary as protocol percentiles (forced into order against float noise)."""
    p50 = max(0.0, float(summary["p50"]))
    p90 = max(p50, float(summary["p90"]))
    p99 = max(p90, float(summary["p99"]))
    return Percentiles(p50=p50, p90=p90, p99=p99, max=max(p99, float(summary["max"])))


class CpuMeter:
    """Whole-device CPU use between successive calls (each consumer keeps its own baseline)."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._last = psutil.cpu_times()

    def percent(self) -> float:
        now = self._psutil.cpu_times()
        last, self._last = self._last, now
        idle = (now.idle + getattr(now, "iowait", 0.0)) - (last.idle + getattr(last, "iowait", 0.0))
        total = sum(now) - sum(last)
        if total <= 0:
            return 0.0
        return min(100.0, max(0.0, 100.0 * (1.0 - idle / total)))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _valid_celsius(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and -273.15 <= value <= 500


class SystemMonitor:
    """CPU, memory, disk, temperatures and GPU load. ``sysfs`` is the sysfs root (a folder in tests)."""

    def __init__(self, data_dir: str | Path, sysfs: str | Path = "/sys") -> None:
        import psutil

        self._psutil = psutil
        self.data_dir = Path(data_dir)
        self.sysfs = Path(sysfs)
        self._cpu = CpuMeter()

    def cpu_percent(self) -> float:
        return self._cpu.percent()

    def memory(self) -> Usage:
        vm = self._psutil.virtual_memory()
        total = int(vm.total)
        return Usage(used_bytes=min(total, max(0, total - int(vm.available))), total_bytes=total)

    def disk(self) -> Usage:
        """Usage of the disk that holds ``data_dir`` (its nearest existing parent)."""
        path = self.data_dir
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            du = self._psutil.disk_usage(str(path))
        except OSError:
            return Usage(used_bytes=0, total_bytes=0)
        total = int(du.total)
        return Usage(used_bytes=min(total, int(du.used)), total_bytes=total)

    def temperatures(self) -> dict[str, float]:
        """Readable sensors, name -> degrees Celsius (at most 32)."""
        temps: dict[str, float] = {}

        def add(name: str, value: float) -> None:
            if len(temps) >= MAX_TEMPERATURES or not _valid_celsius(value):
                return
            name = clip_name(name)
            if name in temps:
                return
            temps[name] = round(float(value), 2)

        read = getattr(self._psutil, "sensors_temperatures", None)
        if read is not None:
            try:
                sensors = read() or {}
            except Exception as e:  # psutil raises assorted errors on odd hwmon drivers
                log.debug("psutil.sensors_temperatures failed: %s", e)
                sensors = {}
            for chip, entries in sensors.items():
                for i, entry in enumerate(entries):
                    label = entry.label or (str(i) if len(entries) > 1 else "")
                    add(f"{chip}.{label}" if label else chip, entry.current)
        for zone in sorted((self.sysfs / "class" / "thermal").glob("thermal_zone*")):
            raw = _read_text(zone / "temp")
            if raw is None:
                continue
            try:
                celsius = int(raw) / 1000.0
            except ValueError:
                continue
            add(_read_text(zone / "type") or zone.name, celsius)
        return temps

    def gpu_percent(self) -> float | None:
        """Jetson integrated GPU load (0-100), or None where not readable."""
        devfreq = sorted((self.sysfs / "class" / "devfreq").glob(GPU_DEVFREQ_LOAD))
        for path in [self.sysfs / rel for rel in GPU_LOAD_FILES] + devfreq:
            raw = _read_text(path)
            if raw is None:
                continue
            try:
                return min(100.0, max(0.0, int(raw) / 10.0))
            except ValueError:
                continue
        return None


class _WorkloadCounter:
    """Rates and counts of one workload since the session (or the workload) started."""

    def __init__(self, stats: PipelineStats) -> None:
        self.stats = stats
        self.rate = RateMeter(stats)
        self.frames_base = stats.results
        self.drops_base = stats.drops.snapshot()

    def drops(self) -> dict[str, int]:
        return {clip_name(reason): count - self.drops_base.get(reason, 0)
                for reason, count in self.stats.drops.snapshot().items() if count - self.drops_base.get(reason, 0) > 0}


class TelemetryCollector:
    """Builds :class:`Telemetry` messages for one device from the runtime, the system and the outbox."""

    def __init__(self, device_id: str, runtime: RuntimeView, outbox: Any, system: SystemMonitor) -> None:
        self.device_id = device_id
        self.runtime = runtime
        self.outbox = outbox
        self.system = system
        self._rate = RateMeter(runtime.stats)
        self._frames_base = 0
        self._drops_base: dict[str, int] = {}
        self._workloads: dict[str, _WorkloadCounter] = {}
        self.new_session()

    def new_session(self) -> None:
        """Start counting frames and drops from zero (call on every new lepton session)."""
        stats = self.runtime.stats
        self._frames_base = stats.results
        self._drops_base = stats.drops.snapshot()
        self._workloads = {name: _WorkloadCounter(r.stats) for name, r in self.runtime.workload_reports().items()}
        self._models: dict[str, tuple[ModelReport, float]] = {}

    def _model_figures(self) -> dict[str, ModelTelemetry]:
        """Each model's batched throughput over the interval (from the second message on: it needs a start)."""
        t = time.monotonic()
        reports = dict(list(self.runtime.model_reports().items())[:MAX_TELEMETRY_MODELS])
        figures = {}
        for name, report in reports.items():
            before = self._models.get(name)
            if before is None or report.frames < before[0].frames:
                continue
            last, dt = before[0], max(t - before[1], 1e-6)
            frames, batches = report.frames - last.frames, report.batches - last.batches
            figures[clip_name(name)] = ModelTelemetry(
                fps=frames / dt, batch_mean=frames / batches if batches else 0.0,
                busy=min(1.0, max(0.0, (report.busy_s - last.busy_s) / dt)), streams=min(report.streams, 4096))
        self._models = {name: (report, t) for name, report in reports.items()}
        return figures

    def _workload_figures(self) -> dict[str, WorkloadTelemetry]:
        reports = self.runtime.workload_reports()
        # a workload removed (or removed and added again) starts a count of its own
        self._workloads = {n: c for n, c in self._workloads.items() if n in reports and c.stats is reports[n].stats}
        figures = {}
        for name, report in list(reports.items())[:MAX_TELEMETRY_WORKLOADS]:
            counter, stats = self._workloads.setdefault(name, _WorkloadCounter(report.stats)), report.stats
            e2e, age = stats.latency["e2e"], stats.latency["frame_age"]
            figures[clip_name(name)] = WorkloadTelemetry(
                stream=clip_name(report.stream), model=clip_name(report.model), fps=max(0.0, counter.rate.update()),
                frames=max(0, stats.results - counter.frames_base),
                drops=dict(list(counter.drops().items())[:32]),
                latency_ms=percentiles(e2e.summary()) if e2e.count else None,
                frame_age_ms=percentiles(age.summary()) if age.count else None,
                source_state=protocol_source_state(report.source_state),  # type: ignore[arg-type]
                state=report.state,  # type: ignore[arg-type]
                error=report.error[:MAX_ERROR_TEXT] if report.error else None,
            )
        return figures

    def build(self, session_id: int, seq: int, interval_s: float) -> Telemetry:
        stats = self.runtime.stats
        idle = self.runtime.idle
        fps = max(0.0, self._rate.update())  # updated while idle too, so the next interval starts here
        drops = {
            clip_name(reason): count - self._drops_base.get(reason, 0)
            for reason, count in stats.drops.snapshot().items()
            if count - self._drops_base.get(reason, 0) > 0
        }
        latency = {}
        frame_age = None
        if not idle:
            for stage in STAGES:
                window = stats.latency.get(stage)
                if stage != "frame_age" and window is not None and window.count:
                    latency[stage] = percentiles(window.summary())
            age_window = stats.latency.get("frame_age")
            if age_window is not None and age_window.count:
                frame_age = percentiles(age_window.summary())
        out = self.outbox.stats()
        artifact = self.runtime.artifact_id
        return Telemetry(
            device_id=self.device_id,
            session_id=session_id,
            seq=seq,
            timestamp=time.time(),
            interval_s=float(interval_s),
            fps=0.0 if idle else fps,
            frames=max(0, stats.results - self._frames_base),
            drops=dict(list(drops.items())[:32]),
            latency_ms=latency,
            frame_age_ms=frame_age,
            sources={
                clip_name(k): protocol_source_state(v)  # type: ignore[misc]
                for k, v in list(self.runtime.source_states().items())[:64]
            },
            artifact_id=clip_name(artifact) if artifact else None,
            cpu_percent=self.system.cpu_percent(),
            memory=self.system.memory(),
            disk=self.system.disk(),
            temperatures_c=self.system.temperatures(),
            gpu_percent=self.system.gpu_percent(),
            config_version=self.runtime.config_version,
            workloads=self._workload_figures(),
            models=self._model_figures(),
            outbox=OutboxStatus(
                depth=out.depth,
                bytes=out.bytes,
                dropped={clip_name(k): v for k, v in list(out.dropped.items())[:16]},
            ),
        )
