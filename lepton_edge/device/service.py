"""The device service: what `lepton-edge run` (and systemd) start.

:func:`run_service` runs a config with the agent when it has an ``agent`` section
(:func:`~lepton_edge.device.agent.run_device`), else the pipeline alone (:class:`PipelineService`); both run
under the one :class:`~lepton_edge.device.supervisor.Supervisor`.
"""

from __future__ import annotations

import logging

from lepton_edge.config.device import DeviceConfig
from lepton_edge.config.workloads import SINGLE_WORKLOAD
from lepton_edge.core.errors import ConfigError
from lepton_edge.device.agent import run_device
from lepton_edge.device.controller import RuntimeController
from lepton_edge.device.supervisor import Supervisor

log = logging.getLogger(__name__)


class PipelineService:
    """The pipeline alone: READY once the model is loaded and a first frame went all the way through."""

    watch_before_ready = False

    def __init__(self, config: DeviceConfig, max_frames: int | None = None) -> None:
        self.runtime = RuntimeController(config, max_frames=max_frames)

    def start(self) -> None:
        for name, workload in self.runtime.workloads.items():
            config, pipeline = workload.config, workload.pipeline
            assert config.model is not None and config.source is not None and pipeline is not None
            log.info("running%s model=%s source=%s backend=%s live=%s sinks=%s",
                     "" if name == SINGLE_WORKLOAD else f" workload={name}", config.model.path, config.source.uri,
                     pipeline.backend.name, pipeline.live, ",".join(s.name for s in pipeline.sinks) or "none")
        self.runtime.start()

    def stop(self) -> None:
        pipelines = list(self.runtime.pipelines.values())
        try:
            self.runtime.stop(timeout=None)  # frames in flight finish, however long that takes
        finally:
            for sink in (sink for pipeline in pipelines for sink in pipeline.sinks):
                if sink.name in ("jsonl", "video"):
                    log.info("wrote %s (%d results, %d dropped)", sink.path, sink.written, sink.dropped)

    def ready_status(self) -> str | None:
        stats = self.runtime.stats
        return f"first result after {stats.snapshot()['uptime_s']:.1f} s" if stats.results > 0 else None

    def details(self) -> str:
        return ""


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
    if any(view.model is not None and view.model.artifact is not None for view in config.workload_views().values()):
        raise ConfigError("model.artifact needs the device agent (an `agent` section) to download and verify it")
    return Supervisor(PipelineService(config, max_frames), duration_s=duration_s).run()
