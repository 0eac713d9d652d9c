"""The device agent: presence, telemetry, results, remote configuration and commands over one MQTT client.

- **Presence**: a session id, persisted in the state folder, increases before every connection attempt;
  the last will of that attempt is a ``Death`` of that session, and every successful connect publishes a
  retained ``Birth`` with the same id. A clean stop publishes a ``Death`` (``shutdown``) and disconnects.
- **Telemetry** every ``agent.telemetry_interval_s`` with a per-session ``seq``, through the outbox at low
  priority (dropped oldest-first when the outbox is full). Events and reported configs are high priority.
- **Commands** (``cmd/<name>``: ping, stats, rebirth, get_config) are MQTT v5 requests: the answer goes to
  the request's response topic with its correlation data. A request without a lepton response topic or
  without correlation data is refused and not run; so is one whose message expiry passed before it
  could run (the broker lowers MessageExpiryInterval while a message waits, so the value received is
  the time left). A request sent with an expiry whose property is lost on the way (a v3 bridge) cannot
  be recognised as stale. Responses are published directly (QoS 1): the outbox cannot carry the
  response topic and correlation data properties.
- **Idle**: a device whose config is ``idle: true`` (from the local file, the persisted last good config or
  a desired document) runs no pipeline but keeps its session, births, telemetry (``fps`` 0, no latency, no
  sources, no artifact) and commands, and starts a pipeline when a workload config arrives.
- **Hostile input**: every handler decodes with :func:`lepton_edge.fleet.protocol.decode`; a bad payload is
  counted, logged and reported as a ``message.rejected`` event (at most one log line and event per
  handler every 10 s, with the number suppressed), and never reaches the network loop as an exception.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_edge import __version__
from lepton_edge.config.device import DeviceConfig
from lepton_edge.core.errors import ConfigError, LeptonError
from lepton_edge.core.metrics import RateMeter, round_floats
from lepton_edge.device.controller import RuntimeController, error_text
from lepton_edge.device.prometheus import MetricsText, PrometheusExporter
from lepton_edge.device.remote_config import RemoteConfig
from lepton_edge.device.results import MqttResultSink
from lepton_edge.device.state import StateStore
from lepton_edge.device.systemd import FrameWatchdog, ServiceNotifier
from lepton_edge.device.telemetry import CpuMeter, SystemMonitor, TelemetryCollector, clip_name
from lepton_edge.device.updates import ArtifactStore
from lepton_edge.fleet.mqtt import IncomingMessage, MqttClient, PublishHandle, Will
from lepton_edge.fleet.outbox import Forwarder, Outbox
from lepton_edge.fleet.protocol import (
    FLEET_REBIRTH_TOPIC,
    Birth,
    Capabilities,
    CommandRequest,
    CommandResponse,
    Death,
    Event,
    ProtocolError,
    ReportedConfig,
    TopicKind,
    birth_topic,
    config_desired_topic,
    config_reported_topic,
    death_topic,
    decode,
    encode,
    events_topic,
    model_id,
    parse_topic,
    rebirth_topic,
    subscription,
    telemetry_topic,
    validate_id,
)
from lepton_edge.runtime.platform import available_accelerator, backend_accelerator, cpu_facts, installed_runtimes

log = logging.getLogger(__name__)

REJECTION_REPORT_INTERVAL_S = 10.0
"""At most one log line and one event per handler in this time; the others are counted."""
REBIRTH_MIN_INTERVAL_S = 1.0
"""Rebirth requests closer together than this are answered by one rebirth."""
OUTBOX_FLUSH_TIMEOUT_S = 5.0
COMMAND_QUEUE_SIZE = 64


@dataclass(frozen=True, slots=True)
class _Command:
    name: str
    request: CommandRequest
    reply_to: str
    correlation: bytes
    deadline: float | None


class _Rejections:
    """Counts rejected messages per handler and reports them without letting a flood flood the logs."""

    def __init__(self, publish_event: Callable[[str, str, str, dict[str, Any]], None]) -> None:
        self.counts: Counter[str] = Counter()
        self._publish_event = publish_event
        self._last_report: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, handler: str, reason: str, topic: str | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            self.counts[handler] += 1
            last = self._last_report.get(handler)
            if last is not None and now - last < REJECTION_REPORT_INTERVAL_S:
                self._suppressed[handler] += 1
                return
            self._last_report[handler] = now
            suppressed, self._suppressed[handler] = self._suppressed[handler], 0
        reason = reason[:1000]
        log.warning(
            "rejected a %s message%s: %s%s",
            handler,
            f" on {topic[:200]!r}" if topic else "",
            reason,
            f" ({suppressed} more since the last report)" if suppressed else "",
        )
        self._publish_event(
            "message.rejected",
            "warning",
            f"rejected a {handler} message: {reason}"[:4096],
            {"handler": handler, "reason": reason, "topic": (topic or "")[:1000], "suppressed": suppressed},
        )

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


class DeviceAgent:
    """The pipeline (through a :class:`RuntimeController`) and everything that talks to the fleet.

    Construction builds the pipeline from the persisted last good remote config if there is one, else
    from ``config`` (the local file); :meth:`start` connects and starts the pipeline; :meth:`stop` stops
    in order (source, frames in flight, sinks, outbox, death, disconnect).
    """

    def __init__(
        self, config: DeviceConfig, *, max_frames: int | None = None, sysfs: str | Path = "/sys"
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
        self._reserved_session: int | None = self.store.next_session()
        self._attempt_session = self._reserved_session
        self._session_id = self._reserved_session
        self._session_lock = threading.Lock()
        self._telemetry_seq = 0
        self._stopping = threading.Event()
        self._stopped = False
        self._started_at = time.monotonic()
        self.births = 0

        self.outbox = Outbox(agent_cfg.outbox)
        try:
            self.rejections = _Rejections(self.publish_event)
            self.client = MqttClient(agent_cfg.mqtt, will=self._next_will, on_connected=self._on_connected)
            self.forwarder = Forwarder(self.outbox, self.client)
            self.remote = RemoteConfig(
                config, self.store, report=self._publish_report, event=self.publish_event
            )
            self.artifacts = self._artifact_store()
            initial, version = self.remote.initial_config()
            try:
                self.controller = self._controller(initial, version, max_frames)
            except LeptonError as e:
                if version == 0:
                    raise
                self.remote.fall_back_to_local(f"the persisted config v{version} cannot run: {e}")
                self.controller = self._controller(config, 0, max_frames)
            self.system = SystemMonitor(agent_cfg.state_dir, sysfs)
            self.telemetry = TelemetryCollector(self.device_id, self.controller, self.outbox, self.system)
            self._static_capabilities = (
                {name: clip_name(version) for name, version in installed_runtimes().items()},
                cpu_facts().logical_cores,
                self.system.memory().total_bytes,
            )
            self.exporter = (
                PrometheusExporter(self.metrics_text, agent_cfg.prometheus_host, agent_cfg.prometheus_port)
                if agent_cfg.prometheus_port is not None
                else None
            )
        except BaseException:
            self.outbox.close()
            raise
        self._commands: queue.Queue[_Command | str] = queue.Queue(COMMAND_QUEUE_SIZE)
        self._rebirth_queued = threading.Event()
        self._last_rebirth = 0.0
        self._telemetry_now = threading.Event()
        self._threads: list[threading.Thread] = []
        self._scrape_lock = threading.Lock()
        self._scrape_meter = RateMeter(self.controller.stats)
        self._scrape_cpu_meter = CpuMeter()
        self._accelerator: str | None = None

    def _controller(self, config: DeviceConfig, version: int, max_frames: int | None) -> RuntimeController:
        return RuntimeController(
            config, version, max_frames=max_frames, extra_sinks=self._result_sinks, artifacts=self.artifacts
        )

    def _artifact_store(self) -> Any:
        """The artifact store of lepton_edge.device.updates, or None where that module is not available."""
        agent_cfg = self.local_config.agent
        assert agent_cfg is not None
        return ArtifactStore(
            agent_cfg.state_dir / "artifacts",
            agent_cfg.artifact_public_key,
            agent_cfg.artifact_max_bytes,
            allow_unsigned=agent_cfg.allow_unsigned_artifacts,
        )

    def _result_sinks(self, config: DeviceConfig) -> list[Any]:
        assert config.agent is not None
        sink = MqttResultSink(
            config.agent.results,
            self.device_id,
            client=self.client,
            outbox=self.outbox,
            session_id=lambda: self.session_id,
        )
        return [sink]

    @property
    def result_sink(self) -> MqttResultSink | None:
        """The MQTT results sink the pipeline delivers to now."""
        return next((s for s in self.controller.extra_sinks if isinstance(s, MqttResultSink)), None)

    # -- state ---------------------------------------------------------------------------------------

    @property
    def session_id(self) -> int:
        """The session of the current (or last) connection; before the first one, the reserved id."""
        return self._session_id

    @property
    def connected(self) -> bool:
        return self.client.connected

    @property
    def config_version(self) -> int:
        return self.controller.version

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
        for name, target in (("telemetry", self._telemetry_loop), ("commands", self._command_loop)):
            thread = threading.Thread(target=target, name=f"lepton-agent-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()
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
            with contextlib.suppress(queue.Full):  # if full, the worker sees _stopping after the next item
                self._commands.put_nowait("stop")
            self._telemetry_now.set()
            for thread in self._threads:
                thread.join(timeout)
            if self.client.connected and not self.forwarder.wait_idle(OUTBOX_FLUSH_TIMEOUT_S):
                log.warning(
                    "outbox not empty after %.0f s (%d message(s) kept for the next start)",
                    OUTBOX_FLUSH_TIMEOUT_S,
                    self.outbox.depth(),
                )
            self.forwarder.stop()
            self.client.stop(publish_before_disconnect=self._publish_death)
            self.outbox.close()
            if self.exporter is not None:
                self.exporter.stop()
            log.info("agent %s stopped (session %d)", self.device_id, self.session_id)

    def __enter__(self) -> DeviceAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- presence ---------------------------------------------------------------------------------------

    def _next_will(self) -> Will:
        """Called before every connection attempt: a new session id and the death that ends it."""
        with self._session_lock:
            if self._reserved_session is not None:
                session, self._reserved_session = self._reserved_session, None
            else:
                try:
                    session = self.store.next_session()
                except OSError as e:
                    session = self._attempt_session + 1
                    log.error(
                        "cannot persist the session counter in %s (%s); using %d", self.store.dir, e, session
                    )
            self._attempt_session = session
        death = Death(device_id=self.device_id, session_id=session, reason="connection_lost")
        return Will(death_topic(self.device_id), encode(death), qos=1, retain=True)

    def _on_connected(self, client: MqttClient) -> None:
        with self._session_lock:
            if self._attempt_session != self._session_id:  # the first connect keeps the reserved session
                self._session_id = self._attempt_session
                self._telemetry_seq = 0
                self.telemetry.new_session()
        self.publish_birth()

    def birth(self) -> Birth:
        """The birth message: while idle, the capabilities describe what the device could run (its
        accelerator and runtimes, the active artifact in its store) instead of what it runs."""
        controller = self.controller
        runtimes, cpu_count, memory = self._static_capabilities
        pipeline = controller.pipeline
        if pipeline is None:
            accelerator = self._idle_accelerator()
            artifacts = self._stored_artifacts()
        else:
            backend = pipeline.backend
            providers = getattr(backend, "providers", None) or []
            accelerator = clip_name(backend_accelerator(backend.name, providers))
            artifacts = [clip_name(controller.artifact_id or "unknown")]

        return Birth(
            device_id=self.device_id,
            session_id=self.session_id,
            timestamp=time.time(),
            capabilities=Capabilities(
                accelerator=accelerator,
                runtimes=runtimes,
                cpu_count=cpu_count,
                memory_bytes=memory,
                sources=[clip_name(s) for s in controller.source_states()],
                artifacts=artifacts,
            ),
            config_version=controller.version,
            software_version=__version__,
        )

    def _idle_accelerator(self) -> str:
        if self._accelerator is None:
            self._accelerator = clip_name(available_accelerator(self._static_capabilities[0]))
        return self._accelerator

    def _stored_artifacts(self) -> list[str]:
        """Id of the active artifact in the artifact store, if there is one."""
        sha = self.artifacts.current_sha256() if self.artifacts is not None else None
        return [clip_name(model_id("artifact", sha))] if sha else []

    def publish_birth(self) -> PublishHandle:
        handle = self.client.publish(birth_topic(self.device_id), encode(self.birth()), qos=1, retain=True)
        self.births += 1
        return handle

    def _publish_death(self, client: MqttClient) -> PublishHandle:
        death = Death(device_id=self.device_id, session_id=self.session_id, reason="shutdown")
        return client.publish(death_topic(self.device_id), encode(death), qos=1, retain=True)

    def rebirth(self) -> None:
        """A fresh birth, the last reported config again, and telemetry now."""
        self._last_rebirth = time.monotonic()
        if self.client.connected:
            self.publish_birth()
        report = self.remote.last_report
        if report is not None:
            self._publish_report(report)
        self._telemetry_now.set()

    # -- outgoing messages -----------------------------------------------------------------------------

    def publish_event(
        self, kind: str, severity: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        """Send an event through the outbox (high priority). Never raises: failures are logged."""
        try:
            event = Event(
                device_id=self.device_id,
                session_id=self.session_id,
                id=uuid.uuid4().hex,
                kind=kind,
                severity=severity,  # type: ignore[arg-type]
                message=message[:4096],
                details=details or {},
                timestamp=time.time(),
            )
            self.outbox.put(events_topic(self.device_id), encode(event), qos=1, priority="high")
        except (LeptonError, ValueError) as e:
            log.error("cannot publish event %s (%s): %s", kind, message[:200], error_text(e))

    def _publish_report(self, report: ReportedConfig) -> None:
        try:
            self.outbox.put(
                config_reported_topic(self.device_id), encode(report), qos=1, priority="high", retain=True
            )
        except (LeptonError, ValueError) as e:
            log.error("cannot publish the config report v%d: %s", report.version, error_text(e))

    def publish_telemetry(self) -> int | None:
        """Build and queue one telemetry message; returns its seq (None if it could not be queued)."""
        agent_cfg = self.controller.config.agent or self.local_config.agent
        assert agent_cfg is not None
        with self._session_lock:
            self._telemetry_seq += 1
            seq, session = self._telemetry_seq, self._session_id
            message = self.telemetry.build(session, seq, agent_cfg.telemetry_interval_s)
        try:
            self.outbox.put(telemetry_topic(self.device_id), encode(message), qos=1, priority="low")
        except (LeptonError, ValueError) as e:
            log.error("cannot queue telemetry: %s", error_text(e))
            return None
        return seq

    def _telemetry_loop(self) -> None:
        next_at = time.monotonic()
        while not self._stopping.is_set():
            agent_cfg = self.controller.config.agent or self.local_config.agent
            assert agent_cfg is not None
            interval = agent_cfg.telemetry_interval_s
            next_at = min(next_at, time.monotonic() + interval)  # a shorter interval applies at once
            if self._telemetry_now.wait(max(0.0, next_at - time.monotonic())):
                self._telemetry_now.clear()
            if self._stopping.is_set():
                return
            try:
                self.publish_telemetry()
            except Exception:
                log.exception("building telemetry failed")
            next_at = time.monotonic() + interval

    # -- incoming messages (network thread: decode, check, queue) -------------------------------------

    def on_desired(self, msg: IncomingMessage) -> None:
        try:
            self.remote.handle_desired(msg.payload, msg.topic)
        except ProtocolError as e:
            self.rejections("config/desired", str(e), msg.topic)
        except Exception as e:
            self.rejections("config/desired", f"unexpected error: {error_text(e)}", msg.topic)

    def on_rebirth(self, msg: IncomingMessage) -> None:
        try:
            decode(TopicKind.REBIRTH, msg.payload, msg.topic)
        except ProtocolError as e:
            self.rejections("rebirth", str(e), msg.topic)
            return
        except Exception as e:
            self.rejections("rebirth", f"unexpected error: {error_text(e)}", msg.topic)
            return
        if not self._rebirth_queued.is_set():
            self._rebirth_queued.set()
            try:
                self._commands.put_nowait("rebirth")
            except queue.Full:
                self._rebirth_queued.clear()
                self.rejections("rebirth", "the agent is busy (command queue full); try again")

    def on_command(self, msg: IncomingMessage) -> None:
        try:
            self._accept_command(msg)
        except Exception as e:
            self.rejections("cmd", f"unexpected error: {error_text(e)}", getattr(msg, "topic", None))

    def _accept_command(self, msg: IncomingMessage) -> None:
        received = time.monotonic()
        topic = msg.topic if isinstance(msg.topic, str) else None
        reply_to = msg.response_topic
        correlation = msg.correlation_data
        expiry = msg.message_expiry_interval
        if reply_to is not None and not self._is_response_topic(reply_to):
            self.rejections(
                "cmd",
                f"refused: response topic {str(reply_to)[:200]!r} is not a lepton response "
                "topic (lepton/v1/clients/<requester>/response); not run",
                topic,
            )
            return
        if reply_to is None:
            self.rejections("cmd", "refused: no response topic (MQTT v5 ResponseTopic); not run", topic)
            return
        name = "unknown"
        try:
            parsed = parse_topic(topic or "")
            if (
                parsed.kind is not TopicKind.COMMAND
                or parsed.device_id != self.device_id
                or not parsed.command
            ):
                raise ProtocolError(f"topic {topic!r} is not a command topic of device {self.device_id}")
            name = parsed.command
        except ProtocolError as e:
            self._refuse(name, reply_to, correlation, f"refused: {e}", topic)
            return
        if not isinstance(correlation, bytes | bytearray) or not correlation:
            self._refuse(
                name, reply_to, None, "refused: no correlation data (MQTT v5 CorrelationData); not run", topic
            )
            return
        if expiry is not None and (not isinstance(expiry, int) or expiry <= 0):
            self._refuse(name, reply_to, correlation, "refused: the command expired before it arrived", topic)
            return
        try:
            request = decode(TopicKind.COMMAND, msg.payload, topic)
        except ProtocolError as e:
            self._refuse(name, reply_to, correlation, str(e), topic)
            return
        assert isinstance(request, CommandRequest)
        if request.name != name:
            self._refuse(
                name,
                reply_to,
                correlation,
                f"refused: payload name {request.name!r} differs from the topic's command {name!r}",
                topic,
            )
            return
        command = _Command(
            name, request, reply_to, bytes(correlation), None if expiry is None else received + expiry
        )
        try:
            self._commands.put_nowait(command)
        except queue.Full:
            self._refuse(
                name, reply_to, correlation, "refused: the agent is busy (command queue full); retry", topic
            )

    @staticmethod
    def _is_response_topic(topic: Any) -> bool:
        if not isinstance(topic, str):
            return False
        try:
            return parse_topic(topic).kind is TopicKind.COMMAND_RESPONSE
        except ProtocolError:
            return False

    def _refuse(self, name: str, reply_to: str, correlation: Any, reason: str, topic: str | None) -> None:
        self.rejections("cmd", reason, topic)
        self.respond(
            name, reply_to, correlation if isinstance(correlation, bytes | bytearray) else None, error=reason
        )

    def respond(
        self,
        name: str,
        reply_to: str,
        correlation: bytes | None,
        *,
        result: Any = None,
        error: str | None = None,
    ) -> PublishHandle | None:
        """Publish a CommandResponse (QoS 1) to ``reply_to`` with the request's correlation data."""
        if not (isinstance(name, str) and name and len(name) <= 64):
            name = "unknown"
        try:
            if error is not None:
                response = CommandResponse(name=name, status="error", error=error[:4096] or "error")
            else:
                response = CommandResponse(name=name, status="ok", result=result)
            payload = encode(response)
        except (ProtocolError, ValueError) as e:
            payload = encode(
                CommandResponse(name=name, status="error", error=f"cannot encode the response: {e}"[:4096])
            )
        try:
            return self.client.publish(reply_to, payload, qos=1, correlation_data=correlation)
        except ValueError as e:
            log.warning("cannot answer command %s on %r: %s", name, reply_to, e)
            return None

    # -- command worker -----------------------------------------------------------------------------

    def _command_loop(self) -> None:
        while not self._stopping.is_set():
            item = self._commands.get()
            if item == "stop":
                return
            if item == "rebirth":
                wait = self._last_rebirth + REBIRTH_MIN_INTERVAL_S - time.monotonic()
                if wait > 0 and self._stopping.wait(wait):
                    return
                self._rebirth_queued.clear()
                try:
                    self.rebirth()
                except Exception:
                    log.exception("rebirth failed")
                continue
            assert isinstance(item, _Command)
            self._run_command(item)

    def _run_command(self, command: _Command) -> None:
        if command.deadline is not None and time.monotonic() > command.deadline:
            self.rejections("cmd", f"refused: command {command.name} expired before it could run; not run")
            self.respond(
                command.name,
                command.reply_to,
                command.correlation,
                error="refused: the command expired before it could run (MessageExpiryInterval)",
            )
            return
        handler = self.COMMANDS.get(command.name)
        if handler is None:
            known = ", ".join(sorted(self.COMMANDS))
            self.respond(
                command.name,
                command.reply_to,
                command.correlation,
                error=f"unknown command {command.name!r}; known commands: {known}",
            )
            return
        try:
            result = handler(self, command.request.args)
        except Exception as e:
            log.exception("command %s failed", command.name)
            self.respond(
                command.name, command.reply_to, command.correlation, error=f"failed: {error_text(e)}"
            )
            return
        self.respond(command.name, command.reply_to, command.correlation, result=result)

    def _cmd_ping(self, args: dict[str, Any]) -> Any:
        return {
            "session_id": self.session_id,
            "timestamp": time.time(),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
        }

    def _cmd_stats(self, args: dict[str, Any]) -> Any:
        return json.loads(json.dumps(self.stats(), default=str))

    def _cmd_rebirth(self, args: dict[str, Any]) -> Any:
        self.rebirth()
        return {"session_id": self.session_id}

    def _cmd_get_config(self, args: dict[str, Any]) -> Any:
        config = self.controller.config.model_dump(mode="json", exclude={"agent": {"mqtt": {"password"}}})
        return {"version": self.controller.version, "config": config}

    COMMANDS: dict[str, Callable[[DeviceAgent, dict[str, Any]], Any]] = {
        "ping": _cmd_ping,
        "stats": _cmd_stats,
        "rebirth": _cmd_rebirth,
        "get_config": _cmd_get_config,
    }

    # -- observability ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Pipeline, results, outbox, MQTT and rejection figures (for the stats command and logs)."""
        outbox = self.outbox.stats()
        return {
            "session_id": self.session_id,
            "connected": self.client.connected,
            "config_version": self.controller.version,
            "idle": self.controller.idle,
            "pipeline": round_floats(self.controller.stats.snapshot()),
            "results": self.result_sink.stats() if self.result_sink else None,
            "outbox": {"depth": outbox.depth, "bytes": outbox.bytes, "dropped": outbox.dropped},
            "rejected": dict(self.rejections.counts),
            "mqtt_last_error": self.client.last_error,
        }

    def metrics_text(self) -> str:
        """Prometheus exposition of the agent's figures."""
        m = MetricsText()
        stats = self.controller.stats
        labels = {"device": self.device_id}
        m.gauge("fps", "Results per second since the previous scrape.", self._scrape_rate(), labels)
        m.counter("frames_total", "Frames read from the source.", stats.frames_in, labels)
        m.counter("results_total", "Results produced by the pipeline.", stats.results, labels)
        for reason, count in sorted(stats.drops.snapshot().items()):
            m.counter("drops_total", "Frames dropped, by reason.", count, {**labels, "reason": reason})
        for stage, window in stats.latency.items():
            s = window.summary()
            m.summary(
                "stage_latency_ms",
                "Per-stage latency (ms) over the recent window.",
                [(0.5, s["p50"]), (0.9, s["p90"]), (0.99, s["p99"])],
                window.count,
                window.total_ms,
                {**labels, "stage": stage},
            )
        sink = self.result_sink
        if sink is not None:
            m.counter("results_published_total", "Results handed to MQTT.", sink.published, labels)
            m.counter(
                "results_rate_limited_total",
                "Results dropped above results.max_rate_hz.",
                sink.rate_limited,
                labels,
            )
        outbox = self.outbox.stats()
        m.gauge("outbox_depth", "Messages waiting in the outbox.", outbox.depth, labels)
        m.gauge("outbox_bytes", "Bytes waiting in the outbox.", outbox.bytes, labels)
        for reason, count in sorted(outbox.dropped.items()):
            m.counter(
                "outbox_dropped_total",
                "Outbox messages dropped, by reason.",
                count,
                {**labels, "reason": reason},
            )
        m.gauge("mqtt_connected", "1 while connected to the broker.", int(self.client.connected), labels)
        m.gauge("idle", "1 while no pipeline runs (idle: no workload).", int(self.controller.idle), labels)
        m.gauge("session_id", "Current lepton session id.", self.session_id, labels)
        m.gauge(
            "config_version",
            "Version of the running config (0: local file).",
            self.controller.version,
            labels,
        )
        for handler, count in sorted(self.rejections.counts.items()):
            m.counter(
                "rejected_messages_total",
                "Incoming messages rejected, by handler.",
                count,
                {**labels, "handler": handler},
            )
        m.gauge("cpu_percent", "Whole-device CPU use since the previous scrape.", self._scrape_cpu(), labels)
        memory = self.system.memory()
        m.gauge("memory_used_bytes", "Device memory in use.", memory.used_bytes, labels)
        m.gauge("memory_total_bytes", "Device memory in total.", memory.total_bytes, labels)
        for sensor, celsius in sorted(self.system.temperatures().items()):
            m.gauge("temperature_celsius", "Temperature sensors.", celsius, {**labels, "sensor": sensor})
        gpu = self.system.gpu_percent()
        if gpu is not None:
            m.gauge("gpu_percent", "GPU load.", gpu, labels)
        return m.render()

    def _scrape_rate(self) -> float:
        with self._scrape_lock:
            return self._scrape_meter.update()

    def _scrape_cpu(self) -> float:
        with self._scrape_lock:
            return self._scrape_cpu_meter.percent()


# ------------------------------------------------------------------------------------------- entry point


def run_device(
    config: DeviceConfig, *, duration_s: float | None = None, max_frames: int | None = None
) -> int:
    """Run the pipeline with the device agent until SIGTERM/SIGINT, ``duration_s`` or the source's end.

    Under systemd (Type=notify) it reports READY (after the broker connected, with
    ``agent.require_broker_for_ready``, and always while idle: an idle device has nothing else to be ready
    for), STATUS lines and STOPPING. The watchdog is fed by progress: results while a pipeline runs, this
    loop's iterations while idle (so an idle device is not restarted, but a hung agent is).
    An idle device runs until it is stopped. Returns the process exit code.
    """

    agent_cfg = config.agent
    if agent_cfg is None:
        raise ConfigError("run_device needs the `agent` section in the config; without it use build_pipeline")
    agent = DeviceAgent(config, max_frames=max_frames)
    controller = agent.controller
    notifier = ServiceNotifier()
    stop_requested = threading.Event()
    restore = _install_signal_handlers(stop_requested, agent)
    idle_rounds = 0
    watchdog = FrameWatchdog(
        lambda: controller.stats.results + idle_rounds,
        lambda: (
            f"{'idle' if controller.idle else 'running'} results={controller.stats.results} "
            f"connected={agent.connected} config_version={agent.config_version} session={agent.session_id}"
        ),
        notifier=notifier,
    )
    error: LeptonError | None = None
    ready = False
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        agent.start()
        watchdog.start()
        while not stop_requested.is_set():
            idle = controller.idle
            if idle:
                idle_rounds += 1
            if not ready and (agent.connected or not (idle or agent_cfg.require_broker_for_ready)):
                ready = True
                notifier.ready(
                    f"{'idle' if idle else 'running'} {config.device_id}, "
                    f"broker {'connected' if agent.connected else 'pending'}"
                )
            try:
                if controller.wait_finished(0.2):
                    break  # the source ended or max_frames was reached
            except LeptonError as e:
                error = e
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        watchdog.stop()  # no STATUS or ping may follow STOPPING=1
        notifier.stopping()
        try:
            agent.stop()
        except LeptonError as e:
            error = error or e
        finally:
            restore()
    if error is not None:
        log.error("%s", error)
        return error.exit_code
    snap = controller.stats.snapshot()
    log.info(
        "done frames=%d results=%d drops=%s session=%d config_version=%d",
        snap["frames_in"],
        snap["results"],
        snap["drops"] or "none",
        agent.session_id,
        agent.config_version,
    )
    return 0


def _install_signal_handlers(stop: threading.Event, agent: DeviceAgent) -> Callable[[], None]:
    """SIGTERM/SIGINT: stop gracefully; a second one aborts the pipeline. Returns a function that restores
    the previous handlers. Does nothing off the main thread (Python allows handlers only there)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    count = 0

    def handler(signum: int, _frame: Any) -> None:
        nonlocal count
        count += 1
        if count == 1:
            log.info("%s received: stopping (again to abort)", signal.Signals(signum).name)
            stop.set()
        else:
            log.warning("%s received again: aborting", signal.Signals(signum).name)
            agent.controller.abort()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
