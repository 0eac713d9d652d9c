"""The one typed configuration of a device, loaded from YAML.

Every model forbids unknown fields so that a typo fails loudly, and every field is described;
``deploy/device.example.yaml`` shows each option by example. Errors name the file, the field path
and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from lepton_edge.config.base import Strict, and_list, format_validation_error, read_yaml
from lepton_edge.config.fleet import MqttConfig, OutboxConfig
from lepton_edge.config.pipeline import (
    ARTIFACT_TARGET_PATTERN,
    DEFAULT_SINK_MAX_BYTES,
    MAX_ARTIFACT_VERSION,
    MAX_SINK_MAX_BYTES,
    MIN_SINK_MAX_BYTES,
    AnalyticsConfig,
    BackendConfig,
    ConsoleSinkConfig,
    ModelConfig,
    OnnxRuntimeBackendConfig,
    PipelineConfig,
    PostprocessConfig,
    PreprocessConfig,
    SinkConfig,
    SourceConfig,
    TrackingConfig,
)
from lepton_edge.config.workloads import (
    MAX_CASCADES,
    MAX_MODELS,
    MAX_STREAMS,
    MAX_WORKLOADS,
    SINGLE_WORKLOAD,
    InlineCascadeConfig,
    Name,
    NamedModelConfig,
    WorkloadConfig,
)
from lepton_edge.core.errors import ConfigError

SINGLE_SECTIONS = ("model", "backend", "source", "preprocess", "postprocess", "tracking", "analytics", "cascade",
                   "sinks")
"""The sections of the single-workload form (one source, one model)."""
MULTI_SECTIONS = ("streams", "models", "workloads")
"""The sections of the multi-stream form."""
PIPELINE_SECTIONS = (*SINGLE_SECTIONS, *MULTI_SECTIONS, "pipeline")
"""The sections that describe the pipeline; an idle config has none of them."""


class DeviceConfig(Strict):
    device_id: str = Field("lepton-device", min_length=1, description="Name of this device in logs and telemetry.")
    idle: bool = Field(
        False,
        description="Run no pipeline: stay connected, report presence and telemetry, wait for a workload (a "
        "config with a model and a source, usually pushed by the scheduler). Needs the agent section; the "
        "pipeline sections (model, backend, source, preprocess, postprocess, sinks, pipeline) must be left out.",
    )
    model: ModelConfig | None = Field(None, description="The model to run; required unless idle: true.")
    backend: BackendConfig = Field(default_factory=OnnxRuntimeBackendConfig, description="Inference backend.")
    source: SourceConfig | None = Field(None, description="Where frames come from; required unless idle: true.")
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig, description="Frame to tensor.")
    postprocess: PostprocessConfig | None = Field(
        None, description="Tensor to result; defaults from the model task (detect, classify or raw)."
    )
    tracking: TrackingConfig | None = Field(
        None, description="Track detections across frames in capture-time seconds (ids, ages, velocities); "
        "null: no tracking, no cost.")
    analytics: AnalyticsConfig | None = Field(
        None, description="Zones, counting lines and loitering on the tracks; needs tracking.")
    cascade: list[InlineCascadeConfig] = Field(
        default_factory=list, max_length=MAX_CASCADES,
        description="Classifiers run on crops of the detections (detector -> classifier), each answer attached to "
        "its detection under the cascade's name.",
    )
    sinks: list[SinkConfig] = Field(default_factory=list, description="Where results go.")
    streams: dict[Name, SourceConfig] = Field(
        default_factory=dict, max_length=MAX_STREAMS,
        description="Multi-stream form: named sources (the `source` fields; `id` defaults to the name).",
    )
    models: dict[Name, NamedModelConfig] = Field(
        default_factory=dict, max_length=MAX_MODELS,
        description="Multi-stream form: named models (the `model` fields plus `backend`), each loaded once and "
        "shared by the workloads that name it.",
    )
    workloads: dict[Name, WorkloadConfig] = Field(
        default_factory=dict, max_length=MAX_WORKLOADS,
        description="Multi-stream form: each binds a stream to a model with its own pre/postprocessing, tracking, "
        "analytics, cascades and sinks. Leave out model, source and the other single-form sections.",
    )
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Pipeline tuning.")
    agent: AgentConfig | None = Field(
        None,
        description="Device agent: presence, telemetry, results and remote configuration over MQTT. "
        "None runs the pipeline alone.",
    )

    @model_validator(mode="before")
    @classmethod
    def _agent_client_id(cls, data: Any) -> Any:
        # The MQTT client id defaults to the device id (docs/protocol.md: fixed client id = device id).
        if isinstance(data, dict) and isinstance(data.get("agent"), dict):
            agent = dict(data["agent"])
            mqtt = agent.get("mqtt", {})
            if isinstance(mqtt, dict) and "client_id" not in mqtt:
                agent["mqtt"] = {**mqtt, "client_id": data.get("device_id", "lepton-device")}
                data = {**data, "agent": agent}
        return data

    @field_validator("sinks")
    @classmethod
    def _one_console(cls, sinks: list[Any]) -> list[Any]:
        if sum(isinstance(s, ConsoleSinkConfig) for s in sinks) > 1:
            raise ValueError("at most one console sink")
        return sinks

    @model_validator(mode="after")
    def _analytics_needs_tracking(self) -> DeviceConfig:
        if self.analytics is not None and self.tracking is None:
            raise ValueError("analytics works on tracks: add a tracking section (tracking: {} for the defaults)")
        return self

    @model_validator(mode="after")
    def _tracking_needs_boxes(self) -> DeviceConfig:
        kind = self.postprocess.type if self.postprocess is not None else self.model.task if self.model else None
        if self.tracking is not None and kind in ("classify", "raw"):
            raise ValueError(
                f"tracking follows boxes, but this workload's postprocess is {kind} (no boxes to track): remove "
                "the tracking (and analytics) section, or use a detection model"
            )
        return self

    @model_validator(mode="after")
    def _cascade_on_boxes(self) -> DeviceConfig:
        kind = self.postprocess.type if self.postprocess is not None else self.model.task if self.model else None
        if self.cascade and kind in ("classify", "raw"):
            raise ValueError(f"a cascade classifies crops of detections, but this workload's postprocess is {kind}: "
                             "remove the cascade, or use a detection model")
        for i, cascade in enumerate(self.cascade):
            if cascade.model.task not in ("auto", "classify"):
                raise ValueError(f"cascade.{i}.model is a {cascade.model.task} model; a cascade runs a classifier "
                                 "on the crops (task: classify)")
        names = [c.name for c in self.cascade]
        if len(set(names)) < len(names):
            raise ValueError(f"cascade names {names} repeat; each answer needs its own name")
        return self

    @model_validator(mode="after")
    def _workload_or_idle(self) -> DeviceConfig:
        given = [name for name in PIPELINE_SECTIONS if name in self.model_fields_set]
        if self.idle:
            if given:
                raise PydanticCustomError(
                    "idle_with_pipeline",
                    "idle: true runs no pipeline, so {sections} would be ignored: remove {them}, or set "
                    "idle: false to run the workload",
                    {"sections": and_list(given), "them": "it" if len(given) == 1 else "them"},
                )
            return self
        single = [name for name in SINGLE_SECTIONS if name in self.model_fields_set]
        multi = [name for name in MULTI_SECTIONS if name in self.model_fields_set]
        if single and multi:
            raise PydanticCustomError(
                "mixed_forms",
                "{single} and {multi} describe the pipeline twice: use either the single form (model, source, ...) "
                "or named streams, models and workloads",
                {"single": and_list(single), "multi": and_list(multi)},
            )
        if multi:
            check_workloads(self)
            return self
        missing = [name for name in ("model", "source") if getattr(self, name) is None]
        if missing:
            raise PydanticCustomError(
                "missing_workload",
                "{missing} {verb} required unless idle: true (add {missing}, or set idle: true to run "
                "nothing and wait for a workload)",
                {"missing": and_list(missing), "verb": "is" if len(missing) == 1 else "are"},
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_workloads_is_idle(cls, data: Any) -> Any:
        # The scheduler sends a device with no workloads left an empty set: that runs nothing, as idle: true does.
        if isinstance(data, dict) and "workloads" in data and not data["workloads"] and not data.get("streams") \
                and not data.get("models") and not any(name in data for name in SINGLE_SECTIONS):
            data = {k: v for k, v in data.items() if k not in MULTI_SECTIONS}
            data["idle"] = True
        return data

    @property
    def multi(self) -> bool:
        """True for the multi-stream form (named streams, models and workloads)."""
        return bool(self.workloads)

    def workload_views(self) -> dict[str, DeviceConfig]:
        """Each workload as a single-form config (its stream as ``source``, its model and backend, its sections;
        the device-level sections shared): what one pipeline runs. The single form is one workload named
        ``main``; an idle config has none."""
        if self.idle:
            return {}
        if not self.multi:
            return {SINGLE_WORKLOAD: self}
        return {name: workload_view(self, name) for name in self.workloads}


def workload_view(config: DeviceConfig, name: str) -> DeviceConfig:
    """Workload ``name`` of a multi-form ``config`` as a single-form config (see
    :meth:`DeviceConfig.workload_views`)."""
    workload = config.workloads[name]
    named = config.models[workload.model]
    model = ModelConfig.model_validate(named.model_dump(exclude={"backend"}, exclude_unset=True))
    source = config.streams[workload.stream]
    if source.id is None:
        source = source.model_copy(update={"id": workload.stream})
    data: dict[str, Any] = {
        "device_id": config.device_id, "model": model, "backend": named.backend, "source": source,
        "preprocess": workload.preprocess, "sinks": workload.sinks, "pipeline": config.pipeline,
    }
    for section in ("postprocess", "tracking", "analytics"):
        if getattr(workload, section) is not None:
            data[section] = getattr(workload, section)
    if workload.cascade:
        data["cascade"] = [
            InlineCascadeConfig.model_validate({**c.model_dump(exclude={"model"}), "name": c.model,
                                                "model": config.models[c.model]}) for c in workload.cascade]
    if config.agent is not None:
        data["agent"] = config.agent
    return DeviceConfig.model_validate(data)


def check_workloads(config: DeviceConfig) -> None:
    """Raise a validation error naming the stream, model or workload at fault in a multi-form ``config``."""
    problems: list[str] = []
    used_streams: dict[str, str] = {}
    used_models: set[str] = set()
    for name, workload in config.workloads.items():
        where = f"workloads.{name}"
        if workload.stream not in config.streams:
            problems.append(f"{where}.stream: no stream named {workload.stream!r} (streams: "
                            f"{', '.join(sorted(config.streams)) or 'none'})")
        elif workload.stream in used_streams:
            problems.append(f"{where}.stream: stream {workload.stream!r} already feeds workload "
                            f"{used_streams[workload.stream]!r}; a stream feeds one workload (add a cascade, or a "
                            "second stream with the same uri)")
        else:
            used_streams[workload.stream] = name
        for field, model in [("model", workload.model)] + [
                (f"cascade.{i}.model", c.model) for i, c in enumerate(workload.cascade)]:
            if model not in config.models:
                problems.append(f"{where}.{field}: no model named {model!r} (models: "
                                f"{', '.join(sorted(config.models)) or 'none'})")
            used_models.add(model)
        for i, cascade in enumerate(workload.cascade):
            task = config.models[cascade.model].task if cascade.model in config.models else "auto"
            if task not in ("auto", "classify"):
                problems.append(f"{where}.cascade.{i}.model: {cascade.model!r} is a {task} model; a cascade runs a "
                                "classifier on the crops (task: classify)")
            if cascade.model == workload.model:
                problems.append(f"{where}.cascade.{i}.model: the cascade runs the workload's own model "
                                f"{cascade.model!r} on its crops; name a classifier")
    problems += [f"streams.{name}: used by no workload" for name in config.streams if name not in used_streams]
    problems += [f"models.{name}: used by no workload" for name in config.models if name not in used_models]
    with_artifact = [name for name, m in config.models.items() if m.artifact is not None]
    if len(with_artifact) > 1:
        problems.append(f"models: {and_list(with_artifact)} each name an artifact; one model per device can come "
                        "from a signed artifact (its A/B slot)")
    problems += _shared_outputs(config)
    for name in config.workloads if not problems else ():
        try:
            workload_view(config, name)
        except ValidationError as e:
            problems += [f"workloads.{name}{''.join(f'.{p}' for p in err['loc'])}: "
                         f"{err['msg'].removeprefix('Value error, ')}" for err in e.errors()]
    if problems:
        raise PydanticCustomError("workloads", "{problems}", {"problems": "; ".join(problems)})


def _shared_outputs(config: DeviceConfig) -> list[str]:
    """Two workloads writing one file, or more than one console."""
    writers: dict[str, str] = {}
    consoles: list[str] = []
    problems: list[str] = []
    for name, workload in config.workloads.items():
        for i, sink in enumerate(workload.sinks):
            if isinstance(sink, ConsoleSinkConfig):
                consoles.append(name)
            path = getattr(sink, "path", None)
            if path is None:
                continue
            key = os.path.normpath(str(path))
            if key in writers and writers[key] != f"workloads.{name}":
                problems.append(f"workloads.{name}.sinks.{i}.path: {path} is also written by {writers[key]}; give "
                                "each workload its own file")
            writers.setdefault(key, f"workloads.{name}")
    if len(consoles) > 1:
        problems.append(f"workloads {and_list(consoles)} each have a console sink; one console per device")
    return problems


def parse_config(data: Any, origin: str = "<config>", base_dir: Path | None = None) -> DeviceConfig:
    """Validate a config mapping. Relative paths are resolved against ``base_dir`` when given."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        config = DeviceConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin)) from None
    return resolve_paths(config, base_dir) if base_dir else config




def load_config(path: str | Path) -> DeviceConfig:
    """Load and validate a device config YAML file."""
    path = Path(path)
    return parse_config(read_yaml(path), str(path), base_dir=path.parent)


def resolve_paths(config: DeviceConfig, base_dir: Path) -> DeviceConfig:
    """Make the config's relative file paths relative to ``base_dir`` (the config file's folder)."""

    def fix(p: Path) -> Path:
        return p if p.is_absolute() else Path(os.path.normpath(base_dir / p))

    # Only sections present are updated: model_copy marks updated fields as set, and an idle config must
    # not gain pipeline sections (it would no longer validate when dumped and parsed again).
    updates: dict[str, Any] = {}
    if config.model is not None:
        updates["model"] = _model_paths(config.model, fix)
    if config.sinks:
        updates["sinks"] = _sink_paths(config.sinks, fix)
    if config.agent is not None:
        updates["agent"] = resolve_agent_paths(config.agent, fix)
    if config.source is not None:
        updates["source"] = _source_path(config.source, fix)
    if config.multi:
        updates["models"] = {name: _model_paths(m, fix) for name, m in config.models.items()}
        updates["streams"] = {name: _source_path(s, fix) for name, s in config.streams.items()}
        updates["workloads"] = {name: w.model_copy(update={"sinks": _sink_paths(w.sinks, fix)}) if w.sinks else w
                                for name, w in config.workloads.items()}
    return config.model_copy(update=updates)


def _model_paths(model: Any, fix: Any) -> Any:
    updates: dict[str, Any] = {"path": fix(model.path)}
    if isinstance(model.labels, Path):
        updates["labels"] = fix(model.labels)
    for name in ("calibration", "validation_data", "cache_dir"):
        if getattr(model, name) is not None:
            updates[name] = fix(getattr(model, name))
    return model.model_copy(update=updates)


def _sink_paths(sinks: list[Any], fix: Any) -> list[Any]:
    return [s.model_copy(update={"path": fix(s.path)}) if hasattr(s, "path") else s for s in sinks]


def _source_path(source: SourceConfig, fix: Any) -> SourceConfig:
    if source.clips is not None:
        clips = source.clips.model_copy(update={"folder": fix(source.clips.folder)})
        source = source.model_copy(update={"clips": clips})
    uri = source.uri
    scheme, sep, rest = uri.partition("://")
    if not sep and not uri.startswith(("gst:", "/dev/")):
        return source.model_copy(update={"uri": str(fix(Path(uri)))})
    if scheme in ("npy", "file") and rest and not rest.startswith("/"):
        return source.model_copy(update={"uri": f"{scheme}://{fix(Path(rest))}"})
    return source


# ------------------------------------------------------------------------------------------- device agent


def default_state_dir() -> Path:
    """``$STATE_DIRECTORY`` under systemd (``StateDirectory=``), else ``~/.local/state/lepton-edge``."""
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])  # systemd lists several folders separated by ':'
    return Path.home() / ".local" / "state" / "lepton-edge"


class ResultsConfig(Strict):
    enabled: bool = Field(True, description="Publish results to the results topic.")
    mode: Literal["frames", "events"] = Field(
        "frames",
        description="`frames`: a result message per frame (up to max_rate_hz); `events`: no per-frame messages, "
        "only the analytics events and counts (which are sent through the outbox in both modes).",
    )
    max_rate_hz: float = Field(
        10.0,
        gt=0,
        le=10000,
        description="Most results published per second; the rest are dropped and counted.",
    )
    qos: Literal[0, 1] = Field(1, description="MQTT QoS of result messages (durable results need 1).")
    durable: bool = Field(
        False,
        description="Send results through the on-disk outbox (never lost, resent after outages and "
        "restarts); false publishes them directly, best effort.",
    )

    @model_validator(mode="after")
    def _durable_needs_qos1(self) -> ResultsConfig:
        if self.durable and self.qos == 0:
            raise ValueError(
                "durable results need qos 1 (the outbox deletes a message only once acknowledged)"
            )
        return self


class HealthCheckConfig(Strict):
    window_s: float = Field(
        5.0, gt=0, le=3600, description="After a model swap, seconds of live frames the new model is watched."
    )
    min_frames: int = Field(
        5,
        ge=1,
        le=100_000,
        description="Results the new model must produce in the window (and no error), else rollback.",
    )


def default_cache_dir() -> Path:
    """``$CACHE_DIRECTORY`` under systemd (``CacheDirectory=``), else ``$XDG_CACHE_HOME/lepton-edge`` (by
    default ``~/.cache/lepton-edge``): the parent of the engine cache."""
    env = os.environ.get("CACHE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lepton-edge"


DEFAULT_REMOTE_SCHEMES = ("file", "npy", "rtsp", "rtsps", "synthetic", "csi", "v4l2")
"""Source URI schemes a remote config may use by default (``file`` and ``npy`` only inside the allowed
folders, ``v4l2`` also as ``/dev/videoN``); http(s) needs ``remote_policy.http_hosts``."""

RemoteScheme = Literal["file", "npy", "rtsp", "rtsps", "synthetic", "csi", "v4l2", "gst"]


class RemotePolicyConfig(Strict):
    """What a remote (desired) config may point at; set only by the local file, never remotely."""

    allowed_folders: list[Path] | None = Field(
        None,
        max_length=64,
        description="Folders that the file paths of a remote config (model, labels, calibration, validation "
        "data, engine cache, sinks, file sources) must resolve into, symlinks followed. None: the agent's "
        "state_dir and the cache folder ($CACHE_DIRECTORY under systemd, else ~/.cache/lepton-edge). The "
        "agent's own state files are refused wherever they are.",
    )
    source_schemes: list[RemoteScheme] = Field(
        default_factory=lambda: list(DEFAULT_REMOTE_SCHEMES),
        max_length=16,
        description="Source URI schemes a remote config may use: file (a path) and npy inside the allowed "
        "folders, rtsp, rtsps, synthetic, csi, v4l2 (or /dev/videoN); gst (any GStreamer pipeline) only if "
        "listed. http and https are governed by http_hosts.",
    )
    http_hosts: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Hosts (names or IP addresses, exact match) an http:// or https:// source of a remote config "
        "may reach; empty: none. Loopback, link-local and private addresses are refused unless listed here.",
    )
    artifact_schemes: list[Literal["https", "http", "file"]] = Field(
        default_factory=lambda: ["https", "file"],
        max_length=3,
        description="URL schemes a remote config's model.artifact.url may use: https and http only to "
        "artifact_hosts, file only inside allowed_folders. Checked before anything is fetched.",
    )
    artifact_hosts: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Hosts (names or IP addresses, exact match) an http(s) artifact URL of a remote config may "
        "reach; empty: none. The signature covers the URL path, not the host: this list bounds the hosts. "
        "Loopback, link-local and private addresses only when listed.",
    )
    max_telemetry_interval_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Largest agent.telemetry_interval_s a remote config may set; keep it well below the "
        "scheduler's heartbeat_timeout_s (30 s by default), or the device looks offline while alive.",
    )

    max_sink_bytes: int = Field(
        DEFAULT_SINK_MAX_BYTES,
        ge=MIN_SINK_MAX_BYTES,
        le=MAX_SINK_MAX_BYTES,
        description="Largest sinks.*.max_bytes (the rotation size of a file sink) a remote config may set; a "
        "remote file sink holds at most about twice this on disk (default: the sinks' default, 256 MiB).",
    )

    max_clip_bytes: int = Field(
        2 << 30, ge=1 << 20, le=1 << 40,
        description="Largest clip quota (source.clips.max_bytes) a remote config may set, in bytes (default 2 GiB).",
    )

    @field_validator("http_hosts", "artifact_hosts")
    @classmethod
    def _lower_hosts(cls, hosts: list[str]) -> list[str]:
        return [h.strip().strip("[]").lower() for h in hosts if h.strip()]


ArtifactTarget = Annotated[str, Field(pattern=ARTIFACT_TARGET_PATTERN)]
"""A device group or model name that signed artifact references are meant for."""


class RollbackOverride(Strict):
    """One lower artifact version the operator allows for one target (local config only)."""

    target: ArtifactTarget = Field(description="The artifact target.")
    version: int = Field(ge=1, le=MAX_ARTIFACT_VERSION, description="The exact version allowed.")


class AgentConfig(Strict):
    mqtt: MqttConfig = Field(description="Broker connection; the client id defaults to device_id.")
    outbox: OutboxConfig = Field(
        description="Store-and-forward queue; the path defaults to <state_dir>/outbox.db."
    )
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Folder of the agent's state (session counter, last good config, outbox); default "
        "$STATE_DIRECTORY under systemd, else ~/.local/state/lepton-edge.",
    )
    telemetry_interval_s: float = Field(
        10.0, gt=0, le=86400, description="Seconds between telemetry messages."
    )
    results: ResultsConfig = Field(default_factory=ResultsConfig, description="Pipeline results over MQTT.")
    require_broker_for_ready: bool = Field(
        False,
        description="Tell systemd the service is ready only once the broker is connected (false: as soon as "
        "the pipeline runs).",
    )
    health_check: HealthCheckConfig = Field(
        default_factory=HealthCheckConfig, description="Checks a remotely swapped model before keeping it."
    )
    artifact_public_key: Path | None = Field(
        None,
        description="One ed25519 public key (PEM) that signs model artifacts: the same as listing it first in "
        "artifact_public_keys (kept for existing configs).",
    )
    artifact_public_keys: list[Path] = Field(
        default_factory=list,
        max_length=16,
        description="Ed25519 public keys (PEM) trusted to sign model artifacts, named by key id in each "
        "reference; several during a key rotation (docs/updates.md). With none (and no artifact_public_key) "
        "every artifact update is refused unless allow_unsigned_artifacts is true.",
    )
    artifact_targets: list[ArtifactTarget] = Field(
        default_factory=list,
        max_length=32,
        description="The artifact targets that are this device's own (its group and model names); a signed "
        "reference for any other target is refused. Empty: the device_id only.",
    )
    artifact_allow_rollback: list[RollbackOverride] = Field(
        default_factory=list,
        max_length=16,
        description="Operator override, local config only: accept exactly this lower version of this target "
        "despite anti-rollback (each use is logged as an AUDIT line). The normal way back is to re-sign the "
        "old artifact with a higher version.",
    )
    allow_unsigned_artifacts: bool = Field(
        False,
        description="Accept artifacts on their sha256 alone when no public key is set (guards against "
        "corruption, not tampering: for closed networks and tests).",
    )
    artifact_max_bytes: int = Field(
        2 * 1024**3, ge=1, description="Largest artifact download accepted, in bytes."
    )
    artifact_min_speed_bytes: int = Field(
        32 * 1024,
        ge=0,
        le=1024**3,
        description="A download that receives fewer bytes than this in any artifact_min_speed_window_s "
        "seconds fails (0: no minimum speed).",
    )
    artifact_min_speed_window_s: float = Field(
        30.0, gt=0, le=3600, description="Sliding window, in seconds, of the minimum download speed."
    )
    artifact_download_deadline_s: float = Field(
        1800.0,
        gt=0,
        le=86400,
        description="Seconds one artifact download may take in all, retries included, before it fails.",
    )
    artifact_disk_reserve_bytes: int = Field(
        64 * 1024**2,
        ge=0,
        le=1024**4,
        description="Bytes kept free on the state disk: a download that would go below fails and its "
        "partial file is deleted (checked before and while downloading).",
    )
    scheduler_public_keys: list[Path] = Field(
        default_factory=list,
        max_length=8,
        description="Ed25519 public keys (PEM) of the scheduler's desired_signing_key; with any set, a desired "
        "config is applied only if one of them signed it for this device (unsigned or badly signed documents "
        "are refused and counted); several during a key rotation. Local only: a remote config cannot change "
        "it. Empty: desired configs are not checked (the broker's ACL is the only identity).",
    )
    remote_policy: RemotePolicyConfig = Field(
        default_factory=RemotePolicyConfig,
        description="Limits on remote (desired) configs: allowed folders, source schemes and hosts, the "
        "largest telemetry interval. Local only: a remote config that sets it is refused.",
    )
    prometheus_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve Prometheus metrics at /metrics on this port; None: off, 0: any free port.",
    )
    prometheus_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the metrics endpoint binds to (0.0.0.0: every interface).",
    )

    @model_validator(mode="before")
    @classmethod
    def _outbox_in_state_dir(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        outbox = data.get("outbox", {})
        if isinstance(outbox, dict) and "path" not in outbox:
            state_dir = data.get("state_dir") or default_state_dir()
            data = {**data, "outbox": {**outbox, "path": Path(state_dir) / "outbox.db"}}
        return data


def resolve_agent_paths(agent: AgentConfig, fix: Any) -> AgentConfig:
    """The agent section with its relative paths passed through ``fix`` (see :func:`resolve_paths`)."""
    updates: dict[str, Any] = {
        "state_dir": fix(agent.state_dir),
        "outbox": agent.outbox.model_copy(update={"path": fix(agent.outbox.path)}),
    }
    policy = agent.remote_policy
    if policy.allowed_folders is not None:
        folders = [fix(f) for f in policy.allowed_folders]
        updates["remote_policy"] = policy.model_copy(update={"allowed_folders": folders})
    if agent.artifact_public_key is not None:
        updates["artifact_public_key"] = fix(agent.artifact_public_key)
    updates["artifact_public_keys"] = [fix(k) for k in agent.artifact_public_keys]
    updates["scheduler_public_keys"] = [fix(k) for k in agent.scheduler_public_keys]
    tls = agent.mqtt.tls
    if tls is not None:
        files = {n: fix(getattr(tls, n)) for n in ("ca_file", "cert_file", "key_file") if getattr(tls, n)}
        updates["mqtt"] = agent.mqtt.model_copy(update={"tls": tls.model_copy(update=files)})
    return agent.model_copy(update=updates)


DeviceConfig.model_rebuild()  # `agent` refers to AgentConfig, defined after DeviceConfig
