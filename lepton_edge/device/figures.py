"""The agent's figures: the ``stats`` command's answer and the Prometheus exposition, read on demand."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from lepton_edge.core.metrics import RateMeter, round_floats
from lepton_edge.device.controller import RuntimeController
from lepton_edge.device.events import Rejections
from lepton_edge.device.prometheus import MetricsText
from lepton_edge.device.results import MqttResultSink
from lepton_edge.device.telemetry import CpuMeter, SystemMonitor
from lepton_edge.fleet.mqtt import MqttClient
from lepton_edge.fleet.outbox import Outbox


class AgentFigures:
    """Pipeline, results, outbox, MQTT, rejection and system figures of one device."""

    def __init__(
        self,
        device_id: str,
        controller: RuntimeController,
        outbox: Outbox,
        client: MqttClient,
        rejections: Rejections,
        system: SystemMonitor,
        session_id: Callable[[], int],
    ) -> None:
        self.device_id = device_id
        self.controller = controller
        self.outbox = outbox
        self.client = client
        self.rejections = rejections
        self.system = system
        self._session_id = session_id
        self._scrape_lock = threading.Lock()
        self._scrape_rate = RateMeter(controller.stats)
        self._scrape_cpu = CpuMeter()

    @property
    def result_sinks(self) -> list[MqttResultSink]:
        """The MQTT results sinks the workloads deliver to now (one per workload)."""
        return [s for s in self.controller.extra_sinks if isinstance(s, MqttResultSink)]

    @property
    def result_sink(self) -> MqttResultSink | None:
        """The first workload's MQTT results sink (the only one of a single-form config)."""
        return next(iter(self.result_sinks), None)

    def stats(self) -> dict[str, Any]:
        """For the stats command and logs."""
        outbox = self.outbox.stats()
        sink = self.result_sink
        return {
            "session_id": self._session_id(),
            "connected": self.client.connected,
            "config_version": self.controller.version,
            "idle": self.controller.idle,
            "pipeline": round_floats(self.controller.stats.snapshot()),
            "results": sink.stats() if sink else None,
            "outbox": {"depth": outbox.depth, "bytes": outbox.bytes, "dropped": outbox.dropped},
            "rejected": dict(self.rejections.counts),
            "mqtt_last_error": self.client.last_error,
        }

    def metrics_text(self) -> str:
        """Prometheus exposition (rates and CPU use are since the previous scrape)."""
        m = MetricsText()
        labels = {"device": self.device_id}
        with self._scrape_lock:
            fps, cpu = self._scrape_rate.update(), self._scrape_cpu.percent()
        m.gauge("fps", "Results per second since the previous scrape.", fps, labels)
        self._pipeline_metrics(m, labels)
        self._fleet_metrics(m, labels)
        m.gauge("cpu_percent", "Whole-device CPU use since the previous scrape.", cpu, labels)
        self._system_metrics(m, labels)
        return m.render()

    def _pipeline_metrics(self, m: MetricsText, labels: dict[str, str]) -> None:
        stats = self.controller.stats
        m.counter("frames_total", "Frames read from the source.", stats.frames_in, labels)
        m.counter("results_total", "Results produced by the pipeline.", stats.results, labels)
        for reason, count in sorted(stats.drops.snapshot().items()):
            m.counter("drops_total", "Frames dropped, by reason.", count, {**labels, "reason": reason})
        for stage, window in stats.latency.items():
            s = window.summary()
            quantiles = [(0.5, s["p50"]), (0.9, s["p90"]), (0.99, s["p99"])]
            m.summary("stage_latency_ms", "Per-stage latency (ms) over the recent window.", quantiles,
                      window.count, window.total_ms, {**labels, "stage": stage})
        sinks = self.result_sinks
        if sinks:
            m.counter("results_published_total", "Results handed to MQTT.", sum(s.published for s in sinks), labels)
            m.counter("results_rate_limited_total", "Results dropped above results.max_rate_hz.",
                      sum(s.rate_limited for s in sinks), labels)
        self._stream_metrics(m, labels)

    def _stream_metrics(self, m: MetricsText, labels: dict[str, str]) -> None:
        """Each running workload's figures, labelled with the workload and its stream."""
        for name, workload in sorted(self.controller.workloads.items()):
            if workload.idle:
                continue
            stats, stream = workload.stats, workload.source_id or name
            own = {**labels, "workload": name, "stream": stream}
            m.counter("stream_frames_total", "Frames read, per stream.", stats.frames_in, own)
            m.counter("stream_results_total", "Results, per stream (its rate is the stream's fps).", stats.results,
                      own)
            for reason, count in sorted(stats.drops.snapshot().items()):
                m.counter("stream_drops_total", "Frames dropped per stream, by reason.", count,
                          {**own, "reason": reason})
            for stage in ("e2e", "frame_age"):
                window = stats.latency[stage]
                s = window.summary()
                m.summary("stream_latency_ms", "End-to-end latency and frame age at inference per stream (ms).",
                          [(0.5, s["p50"]), (0.9, s["p90"]), (0.99, s["p99"])], window.count, window.total_ms,
                          {**own, "stage": stage})
            m.gauge("stream_state", "1 for the stream's current source state.", 1, {**own, "state": stats.source_state})

    def _fleet_metrics(self, m: MetricsText, labels: dict[str, str]) -> None:
        outbox = self.outbox.stats()
        m.gauge("outbox_depth", "Messages waiting in the outbox.", outbox.depth, labels)
        m.gauge("outbox_bytes", "Bytes waiting in the outbox.", outbox.bytes, labels)
        for reason, count in sorted(outbox.dropped.items()):
            m.counter("outbox_dropped_total", "Outbox messages dropped, by reason.", count,
                      {**labels, "reason": reason})
        m.gauge("mqtt_connected", "1 while connected to the broker.", int(self.client.connected), labels)
        m.gauge("idle", "1 while no pipeline runs (idle: no workload).", int(self.controller.idle), labels)
        m.gauge("session_id", "Current lepton session id.", self._session_id(), labels)
        m.gauge("config_version", "Version of the running config (0: local file).", self.controller.version,
                labels)
        for handler, count in sorted(self.rejections.counts.items()):
            m.counter("rejected_messages_total", "Incoming messages rejected, by handler.", count,
                      {**labels, "handler": handler})

    def _system_metrics(self, m: MetricsText, labels: dict[str, str]) -> None:
        memory = self.system.memory()
        m.gauge("memory_used_bytes", "Device memory in use.", memory.used_bytes, labels)
        m.gauge("memory_total_bytes", "Device memory in total.", memory.total_bytes, labels)
        for sensor, celsius in sorted(self.system.temperatures().items()):
            m.gauge("temperature_celsius", "Temperature sensors.", celsius, {**labels, "sensor": sensor})
        gpu = self.system.gpu_percent()
        if gpu is not None:
            m.gauge("gpu_percent", "GPU load.", gpu, labels)
