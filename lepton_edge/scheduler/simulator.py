"""A fleet of simulated devices that speak the real protocol through the real MQTT client.

``lepton-edge simulate --devices N --broker host:port [--rate 1] [--prefix sim] [--duration S]``

Each simulated device publishes a birth with its capabilities, telemetry at ``rate`` messages per second
with a per-session ``seq``, applies desired configs (single or multi form; each workload validated with the
device's own config schema, applied or refused on its own, and reported per workload) and reports the
outcome, answers rebirth requests, and can be told to fail configs or one workload, lose a workload's
camera, run hot, skip sequence numbers or die abruptly.

Throughput: a device runs ``capacity_fps`` frames per second of a model fed by one stream; a model fed by
``n`` streams batches them and runs ``capacity_fps * batch_gain(n)`` (:func:`batch_gain`: 1 + 0.25 per
extra stream, at most 2x). When its workloads ask for more than it has, every stream is slowed by the same
factor. Telemetry reports each workload (``workloads``) and each model's fps, mean batch and busy fraction
(``models``), from which the scheduler learns the device's batched capacity.

Two transports, because presence needs one MQTT connection per device (the last will is a property of
the connection) and thousands of paho clients (one thread each) do not fit in one process:

- ``device`` mode: one :class:`~lepton_edge.fleet.mqtt.MqttClient` per device, with its own last will, exactly
  like the agent. :meth:`FleetSimulator.kill` aborts the connection (:meth:`MqttClient.abort`: no
  DISCONNECT), so the *broker* publishes the death. Use it up to a few hundred devices.
- ``bulk`` mode: a few connections publish for many device ids. Births and telemetry are per device,
  but there is no will per device: :meth:`FleetSimulator.kill` publishes the death the broker would have
  published. Use it for scale benchmarks (10,000 devices); liveness by will is tested in device mode.

``auto`` picks device mode up to :data:`PER_DEVICE_LIMIT` devices.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from lepton_edge import __version__
from lepton_edge.config.device import parse_config
from lepton_edge.config.fleet import MqttConfig
from lepton_edge.core.errors import ConfigError, LeptonError
from lepton_edge.fleet.mqtt import IncomingMessage, MqttClient, PublishHandle, Will
from lepton_edge.fleet.protocol import (
    FLEET_REBIRTH_TOPIC,
    Birth,
    Capabilities,
    ConfigOutcome,
    Death,
    DesiredConfig,
    ProtocolError,
    ReportedConfig,
    TopicKind,
    WorkloadOutcome,
    birth_topic,
    config_desired_topic,
    config_reported_topic,
    death_topic,
    decode,
    encode,
    model_id,
    parse_topic,
    rebirth_topic,
    subscription,
    telemetry_topic,
    validate_id,
)
from lepton_edge.scheduler.desired import split_document

log = logging.getLogger("lepton_edge.scheduler.simulator")

PER_DEVICE_LIMIT = 300
"""``auto`` mode uses one connection per device up to this many devices, bulk mode above."""
DEFAULT_SOURCE_FPS = 30.0
"""Frame rate of a source whose URI does not say (``?fps=``)."""
IDLE_CONFIG = {"idle": True}
"""The desired config that idles a device (the scheduler's default ``placement.idle_config``)."""

BATCH_GAIN_PER_STREAM = 0.25
"""Extra throughput of a model per extra stream it batches (simulated cross-stream batching)."""
MAX_BATCH_GAIN = 2.0
"""The most a model's throughput grows by batching streams."""

Mode = Literal["auto", "device", "bulk"]
FailOutcome = Literal["rejected", "rolled_back"]


def batch_gain(streams: int) -> float:
    """How many times faster a model runs with ``streams`` streams batched than with one."""
    return min(MAX_BATCH_GAIN, 1.0 + BATCH_GAIN_PER_STREAM * max(0, streams - 1))


def model_id_of(config: dict[str, Any]) -> str | None:
    """The model id a device reports in telemetry for a config document (:func:`protocol.model_id`, as
    the agent does): ``sha256:<hex>`` of the artifact when the config names one, else the model file name.
    """
    model = config.get("model")
    if not isinstance(model, dict) or not model.get("path"):
        return None
    artifact = model.get("artifact")
    sha256 = artifact.get("sha256") if isinstance(artifact, dict) else None
    return model_id(str(model["path"]), str(sha256) if sha256 else None)


def source_fps(uri: str) -> float:
    """Frame rate a source delivers: the URI's ``fps`` query parameter, else :data:`DEFAULT_SOURCE_FPS`."""
    try:
        values = parse_qs(urlsplit(uri).query).get("fps")
        fps = float(values[0]) if values else DEFAULT_SOURCE_FPS
    except (ValueError, IndexError):
        return DEFAULT_SOURCE_FPS
    return fps if math.isfinite(fps) and fps > 0 else DEFAULT_SOURCE_FPS


@dataclass
class DeviceSpec:
    """What one simulated device is: its id, hardware and how fast it runs any model."""

    device_id: str
    accelerator: str = "cpu"
    runtimes: dict[str, str] = field(default_factory=lambda: {"onnxruntime": "1.20.1"})
    capacity_fps: float = 60.0
    """Frames per second the device can run (for any model); it reports latencies that say so."""
    temperature_c: float = 50.0
    cpu_count: int = 4
    memory_bytes: int = 4 * 1024**3
    artifacts: list[str] = field(default_factory=list)


class SimDevice:
    """The state of one simulated device, independent of how it is connected. Thread-safe."""

    def __init__(self, spec: DeviceSpec, session_base: int = 0) -> None:
        validate_id(spec.device_id)
        self.spec = spec
        self.device_id = spec.device_id
        self.session_id = session_base
        self.seq = 0
        self.frames = 0
        self.temperature_c = spec.temperature_c
        self.capacity_fps = spec.capacity_fps
        self.alive = True
        """False once killed: it publishes nothing until revived."""
        self.connected = False
        self.fail_with: FailOutcome | None = None
        """When set, every new desired config is answered with this outcome."""
        self.fail_workloads: dict[str, FailOutcome] = {}
        """Workloads answered with this outcome in every new desired config (the others are applied)."""
        self.source_failed: dict[str, str] = {}
        """Workloads whose camera is dead -> the error (reported ``failed`` in telemetry, 0 fps)."""
        self.workloads: dict[str, dict[str, Any]] = {}
        """The workloads running, each as a single-form device config (see ``desired.split_document``)."""
        self.workload_frames: Counter[str] = Counter()
        self.starts: Counter[str] = Counter()
        """Times each workload was (re)started: a workload whose config did not change keeps running."""
        self.active_version = 0
        self.handled_version = 0
        self.artifact_versions: dict[str, int] = {}
        """Highest artifact version applied per target (anti-rollback, as the agent's ArtifactTrust keeps it)."""
        self.config: dict[str, Any] | None = None
        """The desired config document running (None: nothing, or idle)."""
        self.desired_received: list[DesiredConfig] = []
        self.reports: list[ReportedConfig] = []
        self.rebirth_requests = 0
        self.births_sent = 0
        self._lock = threading.Lock()

    # -- messages -----------------------------------------------------------------------------------

    def new_session(self) -> int:
        """Start a new session (before every connection attempt) and return its id."""
        with self._lock:
            self.session_id += 1
            self.seq = 0
            self.frames = 0
            return self.session_id

    def birth(self, now: float | None = None) -> Birth:
        spec = self.spec
        return Birth(
            device_id=self.device_id,
            session_id=max(1, self.session_id),
            timestamp=now or time.time(),
            capabilities=Capabilities(
                accelerator=spec.accelerator,
                runtimes=dict(spec.runtimes),
                cpu_count=spec.cpu_count,
                memory_bytes=spec.memory_bytes,
                sources=[],
                artifacts=list(spec.artifacts),
            ),
            config_version=self.active_version,
            software_version=__version__,
        )

    def death(self, reason: Literal["connection_lost", "shutdown"] = "connection_lost") -> Death:
        return Death(device_id=self.device_id, session_id=max(1, self.session_id), reason=reason)

    @property
    def running(self) -> bool:
        return bool(self.workloads)

    @property
    def fps(self) -> float:
        """Frames per second it delivers, all workloads together."""
        return round(sum(self.throughput()[0].values()), 3)

    def throughput(self) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """(fps of each running workload, model id -> {fps, busy, streams, capacity}): each workload gets
        what its source gives, all slowed by one factor when the device cannot keep up (see the module
        docstring)."""
        wanted: dict[str, float] = {}
        by_model: dict[str, list[str]] = {}
        for name, config in self.workloads.items():
            if name in self.source_failed:
                continue
            wanted[name] = source_fps(str((config.get("source") or {}).get("uri", "")))
            by_model.setdefault(model_id_of(config) or "?", []).append(name)
        capacity = {m: self.capacity_fps * batch_gain(len(ws)) for m, ws in by_model.items()}
        load = sum(wanted[w] / capacity[m] for m, ws in by_model.items() for w in ws if capacity[m] > 0)
        scale = 1.0 / load if load > 1.0 else 1.0
        fps = {w: f * scale for w, f in wanted.items()}
        models = {
            m: {
                "fps": sum(fps[w] for w in ws),
                "busy": min(1.0, sum(fps[w] for w in ws) / capacity[m]) if capacity[m] > 0 else 0.0,
                "streams": len(ws),
                "capacity": capacity[m],
            }
            for m, ws in by_model.items()
        }
        return fps, models

    def skip(self, messages: int) -> None:
        """Lose the next ``messages`` telemetry sequence numbers (a gap the scheduler should notice)."""
        with self._lock:
            self.seq += messages

    def telemetry_payload(self, now: float, interval_s: float) -> bytes:
        """The next telemetry message, encoded (built directly for speed; it decodes as a ``Telemetry``)."""
        with self._lock:
            self.seq += 1
            per_workload, models = self.throughput()
            fps = round(sum(per_workload.values()), 3)
            self.frames += round(fps * interval_s)
            model = min(models, default=None)
            stage_ms = round(1000.0 / self.capacity_fps, 3) if self.capacity_fps > 0 else 0.0
            cpu = min(100.0, round(100.0 * sum(m["busy"] for m in models.values()), 2))
            workloads = {}
            for name, rate in per_workload.items():
                self.workload_frames[name] += round(rate * interval_s)
            for name, config in sorted(self.workloads.items())[:64]:
                error = self.source_failed.get(name)
                workloads[name] = {
                    "stream": name,
                    "model": model_id_of(config) or "?",
                    "fps": round(per_workload.get(name, 0.0), 3),
                    "frames": self.workload_frames[name],
                    "source_state": "failed" if error else "running",
                    "state": "failed" if error else "running",
                    **({"error": error} if error else {}),
                }
            data = {
                "device_id": self.device_id,
                "session_id": max(1, self.session_id),
                "seq": self.seq,
                "timestamp": now,
                "interval_s": interval_s,
                "fps": fps,
                "frames": self.frames,
                "drops": {},
                "latency_ms": (
                    {"infer": {"p50": stage_ms, "p90": stage_ms, "p99": stage_ms, "max": stage_ms}} if model else {}
                ),
                "frame_age_ms": None,
                "sources": {name: w["source_state"] for name, w in workloads.items()},
                "artifact_id": model,
                "cpu_percent": cpu,
                "memory": {"used_bytes": self.spec.memory_bytes // 4, "total_bytes": self.spec.memory_bytes},
                "disk": {"used_bytes": 1 << 30, "total_bytes": 8 << 30},
                "temperatures_c": {"cpu": self.temperature_c},
                "gpu_percent": None,
                "config_version": self.active_version,
                "outbox": {"depth": 0, "bytes": 0, "dropped": {}},
            }
            if workloads:
                data["workloads"] = workloads
            if models:
                data["models"] = {
                    m: {
                        "fps": round(f["fps"], 3),
                        "batch_mean": float(f["streams"]),
                        "busy": round(f["busy"], 4),
                        "streams": int(f["streams"]),
                    }
                    for m, f in sorted(models.items())[:32]
                }
        return json.dumps(data, separators=(",", ":")).encode()

    # -- remote configuration -----------------------------------------------------------------------

    def run_local(self, config: dict[str, Any]) -> None:
        """Run ``config`` as the local config, as a device started from its own config file does before
        the scheduler gives it one: its telemetry then reports that model and its throughput."""
        with self._lock:
            self.config = dict(config)
            self.workloads = split_document(self.config)
            self.starts.update(self.workloads)

    def apply(self, desired: DesiredConfig, now: float | None = None) -> ReportedConfig | None:
        """Validate and apply a desired config like the agent does, workload by workload; None when its
        version is not new. A multi-form document is reported per workload: the refused ones do not run, the
        others do (those whose config did not change keep running, not restarted); the document's outcome is
        ``applied`` only when every workload applied, else the worst (and the active version stays)."""
        with self._lock:
            self.desired_received.append(desired)
            if desired.version <= self.handled_version:
                return None
            self.handled_version = desired.version
            config = dict(desired.config)
            workloads = split_document(config)
            per_workload = {name: self._validate(single) for name, single in workloads.items()}
            for name, outcome in self.fail_workloads.items():
                if name in per_workload and not per_workload[name]:
                    per_workload[name] = [f"simulated failure: workload {name} told to answer {outcome}"]
            refused = {name for name, errors in per_workload.items() if errors}
            multi = "workloads" in config
            outcome: ConfigOutcome = "applied"
            errors: list[str] = []
            whole: list[str] = []
            if multi and refused != set(workloads):
                whole = self._validate(_subset(config, set(workloads) - refused))
            if whole:  # the rules of the document as a whole (shared files, limits...): refused whole
                outcome, errors = "rejected", whole
                per_workload = {name: errs or whole for name, errs in per_workload.items()}
            elif self.fail_with is not None:
                outcome, errors = self.fail_with, [f"simulated failure: device told to answer {self.fail_with}"]
            elif refused:  # like the device: the document is the worst outcome of its workloads
                told = {self.fail_workloads.get(n) for n in refused}
                outcome = "rolled_back" if told == {"rolled_back"} else "rejected"
                errors = [f"{name}: {e}" if multi else e for name in sorted(refused) for e in per_workload[name]]
                errors = [e[:4096] for e in errors][:100]
            partly = multi and not whole and self.fail_with is None and refused != set(workloads)
            if outcome == "applied" or partly:  # the workloads that applied run as the document says
                running = {n: w for n, w in workloads.items() if n not in refused}
                for name, single in running.items():
                    if self.workloads.get(name) != single:
                        self.starts[name] += 1
                    if (signed := _target_version(single)) is not None:
                        target, version = signed
                        self.artifact_versions[target] = max(version, self.artifact_versions.get(target, 0))
                self.workloads = running
            if outcome == "applied":
                self.active_version = desired.version
                self.config = None if config == IDLE_CONFIG else config
            report = ReportedConfig(
                device_id=self.device_id,
                version=desired.version,
                outcome=outcome,
                errors=errors,
                timestamp=now or time.time(),
                active_version=self.active_version,
                workloads=self._outcomes(workloads, per_workload, outcome) if multi else {},
            )
            self.reports.append(report)
            return report

    def _outcomes(
        self, workloads: dict[str, Any], errors: dict[str, list[str]], overall: ConfigOutcome
    ) -> dict[str, WorkloadOutcome]:
        out: dict[str, WorkloadOutcome] = {}
        for name in sorted(workloads)[:64]:
            if overall != "applied" and (self.fail_with is not None or not any(errors.values())):
                out[name] = WorkloadOutcome(outcome=overall, errors=[f"the document was {overall}"])
            elif errors[name]:
                failed_as = self.fail_workloads.get(name, "rejected")
                out[name] = WorkloadOutcome(outcome=failed_as, errors=errors[name][:100])
            else:
                out[name] = WorkloadOutcome(outcome="applied")
        return out

    def _validate(self, config: dict[str, Any]) -> list[str]:
        """Why the device refuses one workload (a single-form config); [] when it accepts it."""
        try:
            parse_config({**config, "device_id": self.device_id}, f"desired config for {self.device_id}")
        except ConfigError as e:
            return [line.strip()[:4096] for line in str(e).splitlines() if line.strip()][:100]
        if (signed := _target_version(config)) is not None:
            target, version = signed
            highest = self.artifact_versions.get(target, 0)
            if version < highest:
                return [
                    f"artifact version {version} of target {target} is below version {highest}, the highest "
                    "accepted [refused: anti-rollback]"
                ]
        return []


def _subset(document: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """A multi-form ``document`` with only the workloads ``names`` (and the streams and models they use)."""
    workloads = {n: w for n, w in (document.get("workloads") or {}).items() if n in names and isinstance(w, dict)}
    used = {w.get("model") for w in workloads.values()} | {
        c.get("model") for w in workloads.values() for c in w.get("cascade") or [] if isinstance(c, dict)
    }
    streams = {w.get("stream") for w in workloads.values()}
    return {
        **document,
        "streams": {n: v for n, v in (document.get("streams") or {}).items() if n in streams},
        "models": {n: v for n, v in (document.get("models") or {}).items() if n in used},
        "workloads": workloads,
    }


def _target_version(config: dict[str, Any]) -> tuple[str, int] | None:
    """(target, version) of the config's artifact when it names both (the anti-rollback key), else None."""
    model = config.get("model")
    artifact = model.get("artifact") if isinstance(model, dict) else None
    if not isinstance(artifact, dict):
        return None
    target, version = artifact.get("target"), artifact.get("version")
    return (target, version) if isinstance(target, str) and isinstance(version, int) else None


# ------------------------------------------------------------------------------------------ transport


class _DeviceLink:
    """One MqttClient for one device: its own session, last will, birth and subscriptions."""

    def __init__(self, sim: FleetSimulator, device: SimDevice) -> None:
        self.sim = sim
        self.device = device
        config = sim.mqtt_config(device.device_id)
        self.client = MqttClient(config, will=self._will, on_connected=self._on_connected)
        self.births: list[PublishHandle] = []
        self.client.add_on_disconnected(self._on_disconnected)
        self.client.subscribe(config_desired_topic(device.device_id), self._on_desired)
        self.client.subscribe(rebirth_topic(device.device_id), self._on_rebirth)
        self.client.subscribe(FLEET_REBIRTH_TOPIC, self._on_rebirth)

    def start(self) -> None:
        self.client.start()

    def _will(self) -> Will:
        session = self.device.new_session()  # a new session for every connection attempt, like the agent
        death = Death(device_id=self.device.device_id, session_id=session, reason="connection_lost")
        return Will(death_topic(self.device.device_id), encode(death), qos=1, retain=True)

    def _on_connected(self, client: MqttClient) -> None:
        self.births = [self.sim._publish_birth(self.device, client)]
        self.device.connected = True

    def _on_disconnected(self, client: MqttClient) -> None:
        self.device.connected = False

    def _on_desired(self, message: IncomingMessage) -> None:
        self.sim._handle_desired(self.device, message, self.client)

    def _on_rebirth(self, message: IncomingMessage) -> None:
        self.device.rebirth_requests += 1
        self.sim._publish_birth(self.device, self.client)

    def publish_telemetry(self, payload: bytes) -> None:
        self.client.publish(telemetry_topic(self.device.device_id), payload, qos=0)

    def stop(self) -> None:
        device = self.device

        def clean_death(client: MqttClient):
            return client.publish(death_topic(device.device_id), encode(device.death("shutdown")), qos=1, retain=True)

        self.client.stop(publish_before_disconnect=clean_death if device.alive else None, timeout=2.0)
        device.connected = False

    def kill(self) -> None:
        self.client.abort()
        self.device.connected = False


class _BulkLink:
    """One MqttClient publishing for many device ids (no will per device; see the module docstring)."""

    def __init__(self, sim: FleetSimulator, index: int, devices: list[SimDevice], *, subscriber: bool) -> None:
        self.sim = sim
        self.devices = {d.device_id: d for d in devices}
        config = sim.mqtt_config(f"{sim.prefix}-bulk-{index}")
        self.client = MqttClient(config, on_connected=self._on_connected)
        self.births: list[PublishHandle] = []
        """The births of the last connect (telemetry starts once the broker has them)."""
        if subscriber:  # one link receives for the whole fleet and routes by device id
            self.client.subscribe(subscription(TopicKind.CONFIG_DESIRED), self._on_desired)
            self.client.subscribe(subscription(TopicKind.REBIRTH), self._on_rebirth)
            self.client.subscribe(FLEET_REBIRTH_TOPIC, self._on_rebirth)

    def start(self) -> None:
        self.client.start()

    def _on_connected(self, client: MqttClient) -> None:
        handles = []
        for device in self.devices.values():
            if device.alive:
                device.new_session()  # a reconnect is a new session, as for a real device
                device.connected = True
                handles.append(self.sim._publish_birth(device, client))
        self.births = handles

    def _device_of(self, message: IncomingMessage) -> SimDevice | None:
        try:
            device_id = parse_topic(message.topic).device_id
        except ProtocolError:
            return None
        return self.sim.devices.get(device_id) if device_id else None

    def _on_desired(self, message: IncomingMessage) -> None:
        device = self._device_of(message)
        if device is not None and device.alive:
            self.sim._handle_desired(device, message, self.sim._link_of(device).client)

    def _on_rebirth(self, message: IncomingMessage) -> None:
        if message.topic == FLEET_REBIRTH_TOPIC:
            targets = list(self.sim.devices.values())
        else:
            device = self._device_of(message)
            targets = [device] if device is not None else []
        for device in targets:
            if device.alive:
                device.rebirth_requests += 1
                self.sim._publish_birth(device, self.sim._link_of(device).client)

    def stop(self) -> None:
        self.client.stop(timeout=2.0)


# --------------------------------------------------------------------------------------------- fleet


class FleetSimulator:
    """N simulated devices on one broker. A context manager; :meth:`start` connects them all."""

    def __init__(
        self,
        host: str,
        port: int,
        devices: int | list[DeviceSpec],
        *,
        rate_hz: float = 1.0,
        prefix: str = "sim",
        mode: Mode = "auto",
        connections: int = 2,
        cuda_fraction: float = 0.0,
        capacity_fps: float = 60.0,
        seed: int = 0,
        session_base: int | None = None,
    ) -> None:
        """``devices``: a count (ids ``<prefix>-00000``...; a ``cuda_fraction`` of them with CUDA and
        TensorRT) or explicit specs. ``session_base``: first session id - 1 (default: from the clock, so a
        restarted simulator's sessions are newer than the retained ones of the previous run)."""
        if rate_hz <= 0:
            raise ConfigError(f"simulator rate must be > 0 messages per second per device, got {rate_hz}")
        validate_id(prefix, "device id prefix")
        self.host, self.port = host, port
        self.rate_hz = rate_hz
        self.prefix = prefix
        rng = random.Random(seed)
        if isinstance(devices, int):
            if devices < 1:
                raise ConfigError(f"--devices must be at least 1, got {devices}")
            width = max(5, len(str(devices - 1)))
            specs = []
            for i in range(devices):
                cuda = rng.random() < cuda_fraction
                specs.append(DeviceSpec(
                    device_id=f"{prefix}-{i:0{width}d}",
                    accelerator="cuda" if cuda else "cpu",
                    runtimes={"onnxruntime": "1.20.1", **({"tensorrt": "10.3.0"} if cuda else {})},
                    capacity_fps=capacity_fps * (4 if cuda else 1),
                ))
        else:
            specs = list(devices)
        base = int(time.time() * 10) if session_base is None else session_base
        self.devices: dict[str, SimDevice] = {s.device_id: SimDevice(s, base) for s in specs}
        if len(self.devices) != len(specs):
            raise ConfigError("simulated device ids must be unique")
        if mode == "auto":
            mode = "device" if len(specs) <= PER_DEVICE_LIMIT else "bulk"
        self.mode = mode
        self.connections = max(1, connections)
        self.counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._links: dict[str, _DeviceLink | _BulkLink] = {}
        self._bulk_links: list[_BulkLink] = []
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.lag_cycles = 0
        """Telemetry cycles that started late by more than one period (the simulator could not keep up)."""

    def mqtt_config(self, client_id: str) -> MqttConfig:
        return MqttConfig(
            host=self.host,
            port=self.port,
            client_id=client_id,
            session_expiry_s=0,
            keepalive_s=30,
            reconnect_min_s=0.1,
            reconnect_max_s=2.0,
            max_inflight=1000,
            max_queued=0,
        )

    def _count(self, key: str, n: int = 1) -> None:
        with self._counts_lock:
            self.counts[key] += n

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self, wait_connected: float | None = 30.0) -> FleetSimulator:
        """Connect every device (births follow), start telemetry, and wait until all are connected."""
        devices = list(self.devices.values())
        if self.mode == "device":
            for device in devices:
                link = _DeviceLink(self, device)
                self._links[device.device_id] = link
        else:
            n = min(self.connections, len(devices))
            for i in range(n):
                link = _BulkLink(self, i, devices[i::n], subscriber=i == 0)
                self._bulk_links.append(link)
                for device in devices[i::n]:
                    self._links[device.device_id] = link
        for link in self._all_links():
            link.start()
        if wait_connected:
            self.wait_connected(wait_connected)
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick_loop, name="sim-telemetry", daemon=True)
        self._ticker.start()
        return self

    def _all_links(self) -> list[_DeviceLink | _BulkLink]:
        return list(self._bulk_links) if self.mode == "bulk" else list(self._links.values())

    def _link_of(self, device: SimDevice) -> Any:
        return self._links[device.device_id]

    def wait_connected(self, timeout: float) -> None:
        """Wait until every device is connected and the broker has its birth (telemetry comes after)."""
        deadline = time.monotonic() + timeout
        for link in self._all_links():
            if not link.client.wait_connected(max(0.0, deadline - time.monotonic())):
                raise LeptonError(
                    f"simulated devices could not connect to the broker at {self.host}:{self.port} within "
                    f"{timeout:.0f} s: {link.client.last_error or 'no answer'}"
                )
        for link in self._all_links():
            for handle in list(link.births):
                handle.wait(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Stop telemetry and disconnect cleanly (devices in device mode publish a clean death)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(5)
            self._ticker = None
        for link in self._all_links():
            link.stop()
        self._links.clear()
        self._bulk_links.clear()

    def __enter__(self) -> FleetSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control ------------------------------------------------------------------------------------

    def device(self, device_id: str) -> SimDevice:
        try:
            return self.devices[device_id]
        except KeyError:
            raise LeptonError(f"no simulated device {device_id!r}") from None

    def kill(self, device_id: str) -> float:
        """End the device abruptly; returns the time (unix) the death was triggered.

        Device mode: the TCP connection is dropped and the broker publishes the will. Bulk mode: the
        death the broker would publish is published for it.
        """
        device = self.device(device_id)
        device.alive = False
        now = time.time()
        link = self._links.get(device_id)
        if isinstance(link, _DeviceLink):
            link.kill()
        elif link is not None:
            death = device.death("connection_lost")
            link.client.publish(death_topic(device_id), encode(death), qos=1, retain=True)
            device.connected = False
        self._count("kills")
        return now

    def revive(self, device_id: str) -> None:
        """Bring a killed device back with a new session (a new connection in device mode)."""
        device = self.device(device_id)
        device.alive = True
        if self.mode == "device":
            link = _DeviceLink(self, device)
            self._links[device_id] = link
            link.start()
        else:
            device.new_session()
            device.connected = True
            self._publish_birth(device, self._link_of(device).client)

    def set_fail(self, device_id: str, outcome: FailOutcome | None) -> None:
        """Answer new desired configs with ``outcome`` (``rejected``/``rolled_back``); None: apply them."""
        self.device(device_id).fail_with = outcome

    def set_fail_workload(self, device_id: str, workload_id: str, outcome: FailOutcome | None) -> None:
        """Answer ``workload_id`` in new desired configs with ``outcome`` (the device's others are applied);
        None: apply it."""
        fails = self.device(device_id).fail_workloads
        if outcome is None:
            fails.pop(workload_id, None)
        else:
            fails[workload_id] = outcome

    def fail_source(self, device_id: str, workload_id: str, error: str | None = "camera unreachable") -> None:
        """The camera of ``workload_id`` on ``device_id`` dies (reported ``failed`` in telemetry); None: back."""
        failed = self.device(device_id).source_failed
        if error is None:
            failed.pop(workload_id, None)
        else:
            failed[workload_id] = error

    def set_temperature(self, device_id: str, celsius: float) -> None:
        self.device(device_id).temperature_c = celsius

    def set_capacity(self, device_id: str, fps: float) -> None:
        self.device(device_id).capacity_fps = fps

    def run_local(self, device_id: str, config: dict[str, Any]) -> None:
        """See :meth:`SimDevice.run_local`."""
        self.device(device_id).run_local(config)

    # -- traffic ------------------------------------------------------------------------------------

    def _publish_birth(self, device: SimDevice, client: MqttClient) -> PublishHandle:
        handle = client.publish(birth_topic(device.device_id), encode(device.birth()), qos=1, retain=True)
        device.births_sent += 1
        self._count("births")
        return handle

    def _handle_desired(self, device: SimDevice, message: IncomingMessage, client: MqttClient) -> None:
        if not message.payload:
            return
        try:
            desired = decode(TopicKind.CONFIG_DESIRED, message.payload, message.topic)
        except ProtocolError as e:
            self._count("desired_invalid")
            log.warning("simulated device %s: %s", device.device_id, e)
            return
        assert isinstance(desired, DesiredConfig)
        self._count("desired")
        report = device.apply(desired)
        if report is None:
            return
        client.publish(config_reported_topic(device.device_id), encode(report), qos=1, retain=True)
        self._count(f"reported_{report.outcome}")

    def _tick_loop(self) -> None:
        period = 1.0 / self.rate_hz
        cycle_start = time.monotonic()
        while not self._stop.is_set():
            devices = list(self.devices.values())
            n = len(devices)
            batch = max(1, math.ceil(n * 0.01 / period))  # spread the cycle in ~10 ms slices
            for first in range(0, n, batch):
                due = cycle_start + period * first / n
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                now = time.time()
                sent = 0
                for device in devices[first : first + batch]:
                    if not (device.alive and device.connected):
                        continue
                    link = self._links.get(device.device_id)
                    if link is None:
                        continue
                    payload = device.telemetry_payload(now, period)
                    if isinstance(link, _DeviceLink):
                        link.publish_telemetry(payload)
                    else:
                        link.client.publish(telemetry_topic(device.device_id), payload, qos=0)
                    sent += 1
                self._count("telemetry", sent)
            cycle_start += period
            if time.monotonic() - cycle_start > period:
                self.lag_cycles += 1
                cycle_start = time.monotonic()

    def stats(self) -> dict[str, Any]:
        with self._counts_lock:
            counts = dict(self.counts)
        return {
            "devices": len(self.devices),
            "mode": self.mode,
            "alive": sum(d.alive for d in self.devices.values()),
            "running": sum(d.running for d in self.devices.values()),
            "lag_cycles": self.lag_cycles,
            **counts,
        }


# ----------------------------------------------------------------------------------------------- CLI


def parse_broker(value: str) -> tuple[str, int]:
    """``host:port`` (or ``host``, port 1883) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, 1883
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--broker {value!r}: expected host:port with a numeric port") from None
    if not (host and 1 <= number <= 65535):
        raise ConfigError(f"--broker {value!r}: expected host:port, port 1-65535")
    return host, number


def run_until(sim: FleetSimulator, done: threading.Event, duration_s: float | None = None) -> dict[str, Any]:
    """Run ``sim`` (started here, stopped on return) until ``done`` is set or ``duration_s`` has passed,
    logging its statistics every 5 s; returns the final statistics."""
    sim.start(wait_connected=60.0)
    started = time.monotonic()
    try:
        while not done.wait(5.0 if duration_s is None else min(5.0, duration_s)):
            stats = sim.stats()
            log.info("simulator %s", " ".join(f"{k}={v}" for k, v in sorted(stats.items())))
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
    finally:
        sim.stop()
    stats = sim.stats()
    log.info("simulator stopped: %s", json.dumps(stats, sort_keys=True))
    return stats
