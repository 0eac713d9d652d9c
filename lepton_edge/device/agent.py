"""The device agent: the pipeline and everything that talks to the fleet, over one MQTT client.

:class:`DeviceAgent` wires collaborators that each do one job, in their own modules:

- :class:`~lepton_edge.device.presence.Presence`: sessions, last wills, births, deaths, rebirths;
- :class:`~lepton_edge.device.telemetry_publisher.TelemetryPublisher`: telemetry every interval;
- :class:`~lepton_edge.device.commands.CommandServer`: MQTT v5 commands (ping, stats, rebirth, get_config, and
  with clip folders :class:`~lepton_edge.device.clip_commands.ClipCommands`' clips.list and clips.read);
- :class:`~lepton_edge.device.remote_config.RemoteConfig`: desired configs, applied on its worker through
  the :class:`~lepton_edge.device.controller.RuntimeController`, which stages signed artifacts in the
  :class:`~lepton_edge.device.updates.ArtifactStore`;
- :class:`~lepton_edge.device.events.FleetEvents` and :class:`~lepton_edge.device.events.Rejections`:
  events, reports and hostile input;
- :class:`~lepton_edge.device.figures.AgentFigures`: the stats command and the Prometheus endpoint.

:func:`run_device` runs the agent as the device service, under the one
:class:`~lepton_edge.device.supervisor.Supervisor` (see :class:`AgentService` for when it is READY).

**Idle**: a device whose config is ``idle: true`` (from the local file, the persisted last good config or a
desired document) runs no pipeline but keeps its session, births, telemetry (``fps`` 0, no latency, no
sources, no artifact) and commands, and starts a pipeline when a workload config arrives.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lepton_edge.config.device import DeviceConfig
from lepton_edge.core.errors import ConfigError, LeptonError, error_text
from lepton_edge.device.capabilities import DeviceCapabilities
from lepton_edge.device.clip_commands import ClipCommands, ClipFolders
from lepton_edge.device.commands import CommandServer
from lepton_edge.device.controller import RuntimeController
from lepton_edge.device.desired_identity import DesiredIdentity
from lepton_edge.device.events import FleetEvents, Rejections
from lepton_edge.device.figures import AgentFigures
from lepton_edge.device.presence import Presence
from lepton_edge.device.prometheus import PrometheusExporter
from lepton_edge.device.remote_config import RemoteConfig
from lepton_edge.device.results import AnalyticsEventSink, MqttResultSink, analytics_event_key
from lepton_edge.device.state import StateStore
from lepton_edge.device.supervisor import Supervisor
from lepton_edge.device.telemetry import SystemMonitor, TelemetryCollector
from lepton_edge.device.telemetry_publisher import TelemetryPublisher
from lepton_edge.device.updates import ArtifactStore
from lepton_edge.fleet.mqtt import IncomingMessage, MqttClient
from lepton_edge.fleet.outbox import Forwarder, Outbox
from lepton_edge.fleet.protocol import (
    FLEET_REBIRTH_TOPIC,
    ProtocolError,
    TopicKind,
    config_desired_topic,
    rebirth_topic,
    subscription,
    validate_id,
)
from lepton_edge.runtime.clips.sink import ClipRefs

log = logging.getLogger(__name__)

OUTBOX_FLUSH_TIMEOUT_S = 5.0


class DeviceAgent:
    """The pipeline (through a :class:`RuntimeController`) and its fleet connection.

    Construction builds the pipeline from the persisted last good remote config if there is one, else
    from ``config`` (the local file); :meth:`start` connects and starts the pipeline; :meth:`stop` stops
    in order (source, frames in flight, sinks, outbox, death, disconnect).
    """

    def __init__(
        self,
        config: DeviceConfig,
        *,
        max_frames: int | None = None,
        sysfs: str | Path = "/sys",
        clip_folders: Sequence[str | Path] = (),
    ) -> None:
        if config.agent is None:
            raise ConfigError(
                "the device agent needs an `agent` section in the config (see deploy/device.example.yaml)"
            )
        try:
            validate_id(config.device_id)
        except ProtocolError as e:
            raise ConfigError(f"device_id: {e}; MQTT topics are built from it") from None
        self.local_config = config
        self.device_id = config.device_id
        agent_cfg = config.agent
        self.store = StateStore(agent_cfg.state_dir)
        self._extra_clip_folders = [Path(f) for f in clip_folders]
        self.clip_refs = ClipRefs()
        """The clip sinks of the streams recording clips: events carry their clip's reference."""
        self.clip_commands = ClipCommands(ClipFolders(self._clip_folders, forbidden=[agent_cfg.state_dir]))
        """clips.list / clips.read over the clip folders of the running streams (and ``clip_folders``)."""
        self.presence = Presence(
            self.device_id,
            self.store,
            capabilities=lambda: self.capabilities.describe(),
            config_version=lambda: self.controller.version,
            on_new_session=lambda session: self.telemetry.new_session(session),
            after_rebirth=self._after_rebirth,
        )
        self._stopping = threading.Event()
        self._stopped = False
        self._started_at = time.monotonic()
        self.outbox = Outbox(agent_cfg.outbox)
        try:
            self._build(config, max_frames, sysfs)
        except BaseException:
            self.outbox.close()
            raise

    def _build(self, config: DeviceConfig, max_frames: int | None, sysfs: str | Path) -> None:
        agent_cfg = config.agent
        assert agent_cfg is not None
        self.events = FleetEvents(self.device_id, self.outbox, lambda: self.session_id)
        self.rejections = Rejections(self.events.event)
        self.client = MqttClient(agent_cfg.mqtt, will=self.presence.next_will, on_connected=self.presence.on_connected)
        self.forwarder = Forwarder(self.outbox, self.client)
        self.remote = RemoteConfig(config, self.store, report=self.events.report, event=self.events.event)
        self.desired_identity = DesiredIdentity(self.device_id, agent_cfg)
        self.artifacts = ArtifactStore.for_agent(agent_cfg, config.device_id)
        self.controller = self._initial_controller(max_frames)
        system = SystemMonitor(agent_cfg.state_dir, sysfs)
        self.telemetry = TelemetryPublisher(
            TelemetryCollector(self.device_id, self.controller, self.outbox, system),
            self.outbox,
            self.session_id,
            self._telemetry_interval_s,
            self._stopping,
        )
        self.capabilities = DeviceCapabilities(self.controller, self.artifacts, system.memory().total_bytes)
        self.figures = AgentFigures(
            self.device_id, self.controller, self.outbox, self.client, self.rejections, system, lambda: self.session_id
        )
        self.commands = CommandServer(self.device_id, self.client, self.rejections, self._command_handlers(),
                                      self._stopping)
        self.on_rebirth = self.presence.rebirth_handler(self.commands, self.rejections)
        self.on_command = self.commands.on_command
        self.exporter = (
            PrometheusExporter(self.figures.metrics_text, agent_cfg.prometheus_host, agent_cfg.prometheus_port)
            if agent_cfg.prometheus_port is not None
            else None
        )

    def _initial_controller(self, max_frames: int | None) -> RuntimeController:
        """The runtime of the persisted config, or of the local file when there is none or it cannot run."""
        initial, version = self.remote.initial_config()
        try:
            return self._controller(initial, version, max_frames)
        except LeptonError as e:
            if version == 0:
                raise
            self.remote.fall_back_to_local(f"the persisted config v{version} cannot run: {e}")
            return self._controller(self.local_config, 0, max_frames)

    def _controller(self, config: DeviceConfig, version: int, max_frames: int | None) -> RuntimeController:
        return RuntimeController(
            config, version, max_frames=max_frames, extra_sinks=self._result_sinks, artifacts=self.artifacts,
            clip_refs=self.clip_refs, event_key=analytics_event_key(self.device_id),
        )

    def _clip_folders(self) -> list[Path]:
        """The clip folders of the streams running now, and those given to the agent."""
        controller = getattr(self, "controller", None)
        workloads = list(controller.workloads.values()) if controller is not None else []
        folders = [w.config.source.clips.folder for w in workloads
                   if w.config.source is not None and w.config.source.clips is not None]
        return folders + self._extra_clip_folders

    def _result_sinks(self, config: DeviceConfig) -> list[Any]:
        assert config.agent is not None
        return [
            MqttResultSink(
                config.agent.results,
                self.device_id,
                client=self.client,
                outbox=self.outbox,
                session_id=lambda: self.session_id,
            ),
            AnalyticsEventSink(self.device_id, outbox=self.outbox, session_id=lambda: self.session_id,
                               clip_ref=self.clip_refs),
        ]

    # -- state ---------------------------------------------------------------------------------------

    @property
    def session_id(self) -> int:
        """The session of the current (or last) connection; before the first one, the reserved id."""
        return self.presence.session_id

    @property
    def births(self) -> int:
        return self.presence.births

    @property
    def connected(self) -> bool:
        return self.client.connected

    @property
    def config_version(self) -> int:
        return self.controller.version

    @property
    def result_sink(self) -> MqttResultSink | None:
        """The MQTT results sink the pipeline delivers to now."""
        return self.figures.result_sink

    @property
    def threads(self) -> list[threading.Thread]:
        """The agent's own worker threads (telemetry, commands)."""
        return [self.telemetry.thread, self.commands.thread]

    def stats(self) -> dict[str, Any]:
        """Pipeline, results, outbox, MQTT and rejection figures (for the stats command and logs)."""
        return self.figures.stats()

    def metrics_text(self) -> str:
        """Prometheus exposition of the agent's figures."""
        return self.figures.metrics_text()

    def publish_event(self, kind: str, severity: str, message: str, details: dict[str, Any] | None = None) -> None:
        """Send an event through the outbox (high priority). Never raises: failures are logged."""
        self.events.event(kind, severity, message, details)

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> DeviceAgent:
        """Connect (in the background) and start the pipeline (none while idle)."""
        self.client.subscribe(config_desired_topic(self.device_id), self.on_desired)
        self.client.subscribe(subscription(TopicKind.COMMAND, self.device_id), self.on_command)
        self.client.subscribe(rebirth_topic(self.device_id), self.on_rebirth)
        self.client.subscribe(FLEET_REBIRTH_TOPIC, self.on_rebirth)
        if self.exporter is not None:
            self.exporter.start()
        self.forwarder.start()
        self.client.start()
        self.controller.start()  # before the remote worker, which may hand it a pipeline to start
        self.remote.start(self.controller)
        self.telemetry.start()
        self.commands.start()
        log.info(
            "agent %s started: broker %s, state %s, config version %d%s",
            self.device_id,
            self.client.address,
            self.store.dir,
            self.config_version,
            " (idle: no workload)" if self.controller.idle else "",
        )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the source, drain frames, flush sinks and the outbox, publish a death, disconnect.

        Raises the pipeline's stage error, if any, after everything is shut down.
        """
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self.remote.request_stop()
        try:
            self.controller.stop(timeout)
        finally:
            self.remote.join(timeout)
            self.commands.stop(timeout)
            self.telemetry.join(timeout)
            self._disconnect()

    def _disconnect(self) -> None:
        """Flush the outbox (while connected), publish the death, disconnect, close the outbox."""
        if self.client.connected and not self.forwarder.wait_idle(OUTBOX_FLUSH_TIMEOUT_S):
            log.warning(
                "outbox not empty after %.0f s (%d message(s) kept for the next start)",
                OUTBOX_FLUSH_TIMEOUT_S,
                self.outbox.depth(),
            )
        self.forwarder.stop()
        self.client.stop(publish_before_disconnect=self.presence.publish_death)
        self.outbox.close()
        if self.exporter is not None:
            self.exporter.stop()
        log.info("agent %s stopped (session %d)", self.device_id, self.session_id)

    def __enter__(self) -> DeviceAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- wiring -----------------------------------------------------------------------------------------

    def on_desired(self, msg: IncomingMessage) -> None:
        try:
            self.desired_identity.check(msg.payload, msg.topic)  # the scheduler's signature, when keys are set
            self.remote.handle_desired(msg.payload, msg.topic)
        except ProtocolError as e:
            self.rejections("config/desired", str(e), msg.topic)
        except Exception as e:
            self.rejections("config/desired", f"unexpected error: {error_text(e)}", msg.topic)

    def _telemetry_interval_s(self) -> float:
        agent_cfg = self.controller.config.agent or self.local_config.agent
        assert agent_cfg is not None
        return agent_cfg.telemetry_interval_s

    def _after_rebirth(self) -> None:
        """The rest of a rebirth: the last reported config again, and telemetry now."""
        report = self.remote.last_report
        if report is not None:
            self.events.report(report)
        self.telemetry.now()

    def rebirth(self) -> None:
        """A fresh birth, the last reported config again, and telemetry now."""
        self.presence.rebirth()

    def _command_handlers(self) -> dict[str, Any]:
        def ping(args: dict[str, Any]) -> Any:
            return {
                "session_id": self.session_id,
                "timestamp": time.time(),
                "uptime_s": round(time.monotonic() - self._started_at, 3),
            }

        def rebirth(args: dict[str, Any]) -> Any:
            self.rebirth()
            return {"session_id": self.session_id}

        def get_config(args: dict[str, Any]) -> Any:
            config = self.controller.config.model_dump(mode="json", exclude={"agent": {"mqtt": {"password"}}})
            return {"version": self.controller.version, "config": config}

        return {
            "ping": ping,
            "stats": lambda args: json.loads(json.dumps(self.stats(), default=str)),
            "rebirth": rebirth,
            "get_config": get_config,
            **self.clip_commands.handlers(),
        }


class AgentService:
    """The pipeline with the device agent: alive (watchdog fed) from the start; READY once the broker is
    connected, or at once while a pipeline runs without ``agent.require_broker_for_ready``."""

    watch_before_ready = True

    def __init__(self, agent: DeviceAgent) -> None:
        self.agent = agent
        self.runtime = agent.controller

    def start(self) -> None:
        self.agent.start()

    def stop(self) -> None:
        self.agent.stop()

    def ready_status(self) -> str | None:
        agent, idle = self.agent, self.runtime.idle
        agent_cfg = agent.local_config.agent
        assert agent_cfg is not None
        if not (agent.connected or not (idle or agent_cfg.require_broker_for_ready)):
            return None
        broker = "connected" if agent.connected else "pending"
        return f"{'idle' if idle else 'running'} {agent.device_id}, broker {broker}"

    def details(self) -> str:
        agent = self.agent
        return f"session={agent.session_id} config_version={agent.config_version} connected={agent.connected}"


def run_device(config: DeviceConfig, *, duration_s: float | None = None, max_frames: int | None = None) -> int:
    """Run the pipeline with the device agent (see :class:`AgentService`); an idle device runs until it is
    stopped. Returns the exit code."""
    if config.agent is None:
        raise ConfigError("run_device needs the `agent` section in the config; without it use build_pipeline")
    return Supervisor(AgentService(DeviceAgent(config, max_frames=max_frames)), duration_s=duration_s).run()
