"""The one typed configuration of a device, loaded from YAML.

Every model forbids unknown fields so that a typo fails loudly, and every field is described;
``deploy/device.example.yaml`` shows each option by example. Errors name the file, the field path
and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from lepton_edge.errors import ConfigError
from lepton_edge.mqtt import MqttConfig
from lepton_edge.outbox import OutboxConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArtifactRef(Strict):
    """A model artifact to download, verify and activate (lepton_edge.agent.updates)."""

    url: str = Field(
        description="Where to download it: https://, http:// or file:///absolute/path. A single model file "
        "(.onnx, .plan) or a .tar of an artifact directory from `lepton-edge build`."
    )
    size: int = Field(gt=0, description="Exact size in bytes; a longer or shorter download is refused.")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="sha256 of the file, 64 hex digits.")
    signature: str | None = Field(
        None,
        description="Base64 ed25519 signature of the sha256 (`lepton-edge sign`), checked with "
        "agent.artifact_public_key. Required unless unsigned artifacts are explicitly allowed.",
    )

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, url: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "file"):
            raise ValueError(f"url must start with https://, http:// or file://, got {url!r}")
        local = parts.netloc in ("", "localhost") and parts.path.startswith("/")
        if parts.scheme == "file" and not local:
            raise ValueError(f"file URLs need an absolute path (file:///dir/model.onnx), got {url!r}")
        if parts.scheme != "file" and not parts.hostname:
            raise ValueError(f"url has no host: {url!r}")
        return url

    @field_validator("sha256")
    @classmethod
    def _lower_hex(cls, digest: str) -> str:
        return digest.lower()

    @field_validator("signature")
    @classmethod
    def _base64_ed25519(cls, signature: str | None) -> str | None:
        import base64
        import binascii

        if signature is None:
            return None
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("signature is not valid base64 (copy it from `lepton-edge sign`)") from None
        if len(raw) != 64:
            raise ValueError(f"signature must decode to 64 bytes (ed25519), got {len(raw)}")
        return signature


class ModelConfig(Strict):
    path: Path = Field(description="ONNX model (or built artifact directory) to run.")
    artifact: ArtifactRef | None = Field(
        None,
        description="Download this artifact, verify it and run it instead of `path` (needs the agent "
        "section); the previous one is kept for rollback.",
    )
    labels: Path | list[str] | None = Field(
        None,
        description="Class names: a text file with one label per line, or an inline list. "
        "Defaults to the labels in the model's metadata, if any.",
    )
    task: Literal["auto", "detect", "classify", "raw"] = Field(
        "auto", description="What the model does; `auto` reads the model metadata and output shapes."
    )
    precision: Literal["as-is", "fp32", "fp16", "int8", "auto"] = Field(
        "as-is",
        description="`as-is` runs `path` as given (an ONNX file or a built artifact directory). Any other value "
        "treats `path` as an ONNX model and runs the engine built from it at that precision, from the engine "
        "cache (built on first use). `auto` builds the candidate precisions, measures them here and keeps the "
        "fastest one that passes the accuracy gate.",
    )
    calibration: Path | None = Field(
        None, description="Calibration table (JSON from `lepton-edge calibrate`) for int8 builds."
    )
    calibration_data: str | None = Field(
        None, description="Data set to calibrate from when int8 is built without a table: an image folder, "
        "a video, or a .npy/.npz recording."
    )
    validation_data: Path | None = Field(
        None, description="Held-out labelled data for the accuracy gate and `precision: auto` "
        "(see docs/build.md for the formats)."
    )
    max_accuracy_drop: float = Field(
        1.0, ge=0, description="Largest allowed drop against the fp32 model, in points of top-1 accuracy "
        "(classifiers) or mAP@0.5 (detectors)."
    )
    cache_dir: Path | None = Field(
        None, description="Engine cache folder; default $CACHE_DIRECTORY/engines under systemd, else "
        "~/.cache/lepton-edge/engines."
    )


class OnnxRuntimeBackendConfig(Strict):
    type: Literal["onnxruntime"] = Field("onnxruntime", description="Run the model with onnxruntime.")
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="Execution providers in order of preference; unavailable ones are skipped with a warning.",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="Threads inside one operator; 0 picks the number of physical cores."
    )
    inter_op_threads: int = Field(1, ge=1, description="Threads running independent operators in parallel.")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime graph optimisation level."
    )
    allow_spinning: bool | None = Field(
        None,
        description="Let idle intra-op threads spin. None: spin in a bare loop, sleep inside the pipeline "
        "where other stages need the cores.",
    )
    warmup_runs: int = Field(3, ge=0, description="Inference runs on a zero tensor before the first frame.")


class TensorRTBackendConfig(Strict):
    type: Literal["tensorrt"] = Field(description="Run a serialized TensorRT engine (needs TensorRT and CUDA).")
    device: int = Field(0, ge=0, description="CUDA device index.")
    cuda_graph: bool = Field(False, description="Capture inference in a CUDA graph and replay it.")
    warmup_runs: int = Field(3, ge=0, description="Inference runs before the first frame.")


BackendConfig = Annotated[OnnxRuntimeBackendConfig | TensorRTBackendConfig, Field(discriminator="type")]


class ReconnectConfig(Strict):
    initial_backoff_s: float = Field(0.5, gt=0, description="First wait before reopening a failed live source.")
    max_backoff_s: float = Field(10.0, gt=0, description="Cap of the exponential backoff between reopen attempts.")
    stall_timeout_s: float = Field(
        5.0, gt=0, description="A live source that delivers no frame for this long is closed and reopened."
    )
    max_attempts: int = Field(0, ge=0, description="Give up after this many failed reopen attempts; 0 retries forever.")


class SourceConfig(Strict):
    uri: str = Field(
        description="Where frames come from: a video or image file or folder, rtsp://, http(s)://, /dev/videoN "
        "or v4l2://N, csi://N, gst:<pipeline>, synthetic://shapes?fps=30, or a .npy/.npz tensor recording."
    )
    id: str | None = Field(None, description="Source id carried by every frame and result; defaults to the URI.")
    live: bool | None = Field(
        None,
        description="Live sources drop stale frames (latest frame wins); offline sources block and drop nothing. "
        "None decides from the URI: cameras and streams are live, files are offline.",
    )
    max_frame_age_ms: float = Field(
        500.0, gt=0, description="Live frames older than this when inference starts are dropped as too old."
    )
    loop: bool = Field(False, description="Restart file sources from the beginning when they end.")
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig, description="Live-source recovery policy.")


class PreprocessConfig(Strict):
    size: tuple[int, int] | None = Field(
        None, description="Model input [width, height]; defaults to the model's static input shape."
    )
    resize: Literal["letterbox", "stretch", "none"] = Field(
        "letterbox", description="Keep aspect ratio with padding (letterbox), stretch to fit, or no resize."
    )
    pad_value: int = Field(114, ge=0, le=255, description="Grey level of letterbox padding.")
    color: Literal["rgb", "bgr", "gray"] = Field("rgb", description="Channel order the model expects.")
    scale: float = Field(1 / 255.0, gt=0, description="Multiplier applied to pixel values before mean/std.")
    mean: tuple[float, ...] = Field((0.0,), description="Subtracted per channel after scaling.")
    std: tuple[float, ...] = Field((1.0,), description="Divisor per channel after subtracting the mean.")
    layout: Literal["nchw", "nhwc"] | None = Field(None, description="Tensor layout; defaults from the model input.")
    dtype: Literal["float32", "float16", "uint8"] | None = Field(
        None, description="Tensor element type; defaults from the model input."
    )


class DetectConfig(Strict):
    type: Literal["detect"] = Field(description="Decode object detections.")
    layout: Literal["auto", "yolov8", "yolov5", "nms"] = Field(
        "auto",
        description="Output layout: yolov8/v11 `[1, 4+C, A]`, yolov5 `[1, A, 5+C]`, or nms (boxes already "
        "selected in the graph). `auto` decides from the output shapes.",
    )
    conf_threshold: float = Field(0.25, ge=0, le=1, description="Minimum score to keep a detection.")
    iou_threshold: float = Field(0.45, ge=0, le=1, description="Overlap above which NMS suppresses a box.")
    max_detections: int = Field(100, ge=1, description="Most detections kept per frame.")
    class_agnostic: bool = Field(False, description="Suppress overlapping boxes across classes too.")


class ClassifyConfig(Strict):
    type: Literal["classify"] = Field(description="Turn logits or probabilities into top-k classes.")
    top_k: int = Field(5, ge=1, description="Number of classes reported.")
    softmax: bool | None = Field(None, description="Apply softmax; None applies it unless outputs already sum to 1.")


class RawConfig(Strict):
    type: Literal["raw"] = Field(description="Pass outputs through unchanged.")


PostprocessConfig = Annotated[DetectConfig | ClassifyConfig | RawConfig, Field(discriminator="type")]


class JsonlSinkConfig(Strict):
    type: Literal["jsonl"] = Field(description="Append one JSON object per result to a file.")
    path: Path = Field(description="Output file; its folder is created.")
    queue_size: int = Field(1024, ge=1, description="Results buffered before the sink drops (and counts) them.")
    flush_every: int = Field(32, ge=1, description="Flush the file every N results.")


class VideoSinkConfig(Strict):
    type: Literal["video"] = Field(description="Write an annotated video (boxes, labels, latency).")
    path: Path = Field(description="Output video file (.mp4 or .avi).")
    fps: float = Field(30.0, gt=0, description="Frame rate written into the file.")
    codec: str = Field("mp4v", min_length=4, max_length=4, description="FourCC of the video codec.")
    queue_size: int = Field(64, ge=1, description="Frames buffered before the sink drops (and counts) them.")


class ConsoleSinkConfig(Strict):
    type: Literal["console"] = Field(description="Print a live table of fps, per-stage latency and detections.")
    interval_s: float = Field(1.0, gt=0, description="Seconds between table refreshes.")


SinkConfig = Annotated[JsonlSinkConfig | VideoSinkConfig | ConsoleSinkConfig, Field(discriminator="type")]


class PipelineConfig(Strict):
    latency_window: int = Field(
        4096, ge=16, description="Latency samples kept per stage for percentiles (a sliding window)."
    )
    stats_interval_s: float = Field(5.0, gt=0, description="Seconds between pipeline statistics log lines.")


PIPELINE_SECTIONS = ("model", "backend", "source", "preprocess", "postprocess", "sinks", "pipeline")
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
    sinks: list[SinkConfig] = Field(default_factory=list, description="Where results go.")
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
    def _workload_or_idle(self) -> DeviceConfig:
        if self.idle:
            given = [name for name in PIPELINE_SECTIONS if name in self.model_fields_set]
            if given:
                raise PydanticCustomError(
                    "idle_with_pipeline",
                    "idle: true runs no pipeline, so {sections} would be ignored: remove {them}, or set "
                    "idle: false to run the workload",
                    {"sections": _and_list(given), "them": "it" if len(given) == 1 else "them"},
                )
            return self
        missing = [name for name in ("model", "source") if getattr(self, name) is None]
        if missing:
            raise PydanticCustomError(
                "missing_workload",
                "{missing} {verb} required unless idle: true (add {missing}, or set idle: true to run "
                "nothing and wait for a workload)",
                {"missing": _and_list(missing), "verb": "is" if len(missing) == 1 else "are"},
            )
        return self

    @model_validator(mode="after")
    def _mean_std_match(self) -> DeviceConfig:
        pre = self.preprocess
        for name in ("mean", "std"):
            n = len(getattr(pre, name))
            if n not in (1, 3):
                raise ValueError(f"preprocess.{name} must have 1 or 3 values, got {n}")
        if any(v == 0 for v in pre.std):
            raise ValueError("preprocess.std must not contain 0")
        return self


def _and_list(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def format_validation_error(err: ValidationError, origin: str) -> str:
    """One line per problem: ``origin: field.path: message (got value)``."""
    lines = [f"{origin}: invalid configuration ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"  {origin}: {loc}: {e['msg']}{shown}")
    return "\n".join(lines)


def parse_config(data: Any, origin: str = "<config>", base_dir: Path | None = None) -> DeviceConfig:
    """Validate a config mapping. Relative paths are resolved against ``base_dir`` when given."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        config = DeviceConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin)) from None
    return resolve_paths(config, base_dir) if base_dir else config


def read_yaml(path: Path, what: str = "config") -> Any:
    """The parsed YAML document at ``path``; ConfigError naming the file when it is missing, unreadable or
    not YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the {what}: {e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


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
    model = config.model
    if model is not None:
        model_updates: dict[str, Any] = {"path": fix(model.path)}
        if isinstance(model.labels, Path):
            model_updates["labels"] = fix(model.labels)
        for name in ("calibration", "validation_data", "cache_dir"):
            if getattr(model, name) is not None:
                model_updates[name] = fix(getattr(model, name))
        updates["model"] = model.model_copy(update=model_updates)
    if config.sinks:
        updates["sinks"] = [
            s.model_copy(update={"path": fix(s.path)}) if hasattr(s, "path") else s for s in config.sinks
        ]
    if config.agent is not None:
        updates["agent"] = resolve_agent_paths(config.agent, fix)
    if config.source is not None:
        uri = config.source.uri
        scheme, sep, rest = uri.partition("://")
        if not sep and not uri.startswith(("gst:", "/dev/")):
            updates["source"] = config.source.model_copy(update={"uri": str(fix(Path(uri)))})
        elif scheme in ("npy", "file") and rest and not rest.startswith("/"):
            updates["source"] = config.source.model_copy(update={"uri": f"{scheme}://{fix(Path(rest))}"})
    return config.model_copy(update=updates)


# ------------------------------------------------------------------------------------------- device agent


def default_state_dir() -> Path:
    """``$STATE_DIRECTORY`` under systemd (``StateDirectory=``), else ``~/.local/state/lepton-edge``."""
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])  # systemd lists several folders separated by ':'
    return Path.home() / ".local" / "state" / "lepton-edge"


class ResultsConfig(Strict):
    enabled: bool = Field(True, description="Publish results to the results topic.")
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
        description="Results the new model must produce in the window (and no error), else rollback.",
    )


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
        description="Ed25519 public key (PEM) that signs model artifacts; without it every artifact update "
        "is refused unless allow_unsigned_artifacts is true.",
    )
    allow_unsigned_artifacts: bool = Field(
        False,
        description="Accept artifacts on their sha256 alone when no public key is set (guards against "
        "corruption, not tampering: for closed networks and tests).",
    )
    artifact_max_bytes: int = Field(
        2 * 1024**3, ge=1, description="Largest artifact download accepted, in bytes."
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
    if agent.artifact_public_key is not None:
        updates["artifact_public_key"] = fix(agent.artifact_public_key)
    tls = agent.mqtt.tls
    if tls is not None:
        files = {n: fix(getattr(tls, n)) for n in ("ca_file", "cert_file", "key_file") if getattr(tls, n)}
        updates["mqtt"] = agent.mqtt.model_copy(update={"tls": tls.model_copy(update=files)})
    return agent.model_copy(update=updates)


DeviceConfig.model_rebuild()  # `agent` refers to AgentConfig, defined after DeviceConfig
