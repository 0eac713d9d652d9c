"""The MQTT protocol between devices and the scheduler: topic names, payload schemas, and their codec.

Both the device agent and the scheduler import this module; nothing else builds a topic or parses a
payload. ``docs/protocol.md`` describes the topic tree, QoS and retain flags, and the presence rules.

Payloads are compact UTF-8 JSON. :func:`decode` is the only way in: it checks the size before parsing,
the nesting depth before parsing (without recursion), rejects NaN/Infinity and duplicate keys, then
validates the schema strictly (no type coercion, unknown fields rejected). Every failure raises
:class:`ProtocolError` naming the topic kind, the field and the reason.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    model_serializer,
    model_validator,
)

from lepton_edge.core.errors import LeptonError

PROTOCOL_VERSION = 1
"""Version of the topic tree and payload schemas; it is part of every topic (``lepton/v1/...``)."""

TOPIC_ROOT = f"lepton/v{PROTOCOL_VERSION}"
MAX_PAYLOAD_BYTES = 256 * 1024
"""Payloads larger than this are rejected before they are parsed."""
MAX_NESTING = 32
"""Deepest allowed nesting of JSON arrays/objects, checked before parsing."""

_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_INT64_MAX = 2**63 - 1


class ProtocolError(LeptonError):
    """A topic or payload does not follow the lepton MQTT protocol (docs/protocol.md)."""


# ---------------------------------------------------------------------------------------------- topics


class TopicKind(str, enum.Enum):
    """Every kind of topic in the tree; each has exactly one payload schema (see :data:`SCHEMAS`)."""

    BIRTH = "birth"
    DEATH = "death"
    TELEMETRY = "telemetry"
    RESULT = "results"
    EVENT = "events"
    CONFIG_DESIRED = "config/desired"
    CONFIG_REPORTED = "config/reported"
    COMMAND = "cmd"
    COMMAND_RESPONSE = "response"
    REBIRTH = "rebirth"


def validate_id(value: str, what: str = "device id") -> str:
    """Return ``value`` if it is a valid device/requester/command id, else raise :class:`ProtocolError`.

    Ids are 1-64 characters from ``A-Z a-z 0-9 _ . -``: no ``/``, no MQTT wildcards, no spaces.
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ProtocolError(
            f"invalid {what} {value!r}: use 1-64 characters from A-Z, a-z, 0-9, '_', '.', '-' "
            "(no '/', '+', '#' or spaces)"
        )
    return value


def device_topic(kind: TopicKind, device_id: str, command: str | None = None) -> str:
    """The topic of ``kind`` for one device; ``command`` names the command for :attr:`TopicKind.COMMAND`."""
    kind = TopicKind(kind)
    if kind is TopicKind.COMMAND_RESPONSE:
        raise ProtocolError("command responses go to the requester's response topic: use response_topic()")
    validate_id(device_id)
    base = f"{TOPIC_ROOT}/devices/{device_id}"
    if kind is TopicKind.COMMAND:
        if command is None:
            raise ProtocolError("a command topic needs the command name")
        return f"{base}/cmd/{validate_id(command, 'command name')}"
    if command is not None:
        raise ProtocolError(f"only command topics take a command name, not {kind.value}")
    return f"{base}/{kind.value}"


def birth_topic(device_id: str) -> str:
    return device_topic(TopicKind.BIRTH, device_id)


def death_topic(device_id: str) -> str:
    return device_topic(TopicKind.DEATH, device_id)


def telemetry_topic(device_id: str) -> str:
    return device_topic(TopicKind.TELEMETRY, device_id)


def results_topic(device_id: str) -> str:
    return device_topic(TopicKind.RESULT, device_id)


def events_topic(device_id: str) -> str:
    return device_topic(TopicKind.EVENT, device_id)


def config_desired_topic(device_id: str) -> str:
    return device_topic(TopicKind.CONFIG_DESIRED, device_id)


def config_reported_topic(device_id: str) -> str:
    return device_topic(TopicKind.CONFIG_REPORTED, device_id)


def rebirth_topic(device_id: str) -> str:
    return device_topic(TopicKind.REBIRTH, device_id)


def command_topic(device_id: str, name: str) -> str:
    return device_topic(TopicKind.COMMAND, device_id, name)


def response_topic(requester_id: str, device_id: str) -> str:
    """Where device ``device_id`` answers a command of a requester (scheduler replica, operator tool).

    The responding device's id is the last level, so the broker ACL lets each device publish only on
    its own response topics (``lepton/v1/clients/+/response/%u``) and no device can forge another's answer.
    """
    return f"{TOPIC_ROOT}/clients/{validate_id(requester_id, 'requester id')}/response/{validate_id(device_id)}"


def response_subscription(requester_id: str) -> str:
    """The filter a requester subscribes to for the responses of every device."""
    return f"{TOPIC_ROOT}/clients/{validate_id(requester_id, 'requester id')}/response/+"


FLEET_REBIRTH_TOPIC = f"{TOPIC_ROOT}/fleet/rebirth"
"""A rebirth request every device subscribes to (a scheduler that starts without state publishes it)."""


def subscription(kind: TopicKind, device_id: str = "+") -> str:
    """A topic filter for ``kind`` across all devices (``device_id="+"``) or for one device.

    For :attr:`TopicKind.COMMAND` it matches every command name.
    """
    kind = TopicKind(kind)
    if device_id != "+":
        validate_id(device_id)
    if kind is TopicKind.COMMAND_RESPONSE:
        return f"{TOPIC_ROOT}/clients/+/response/{device_id}"
    suffix = "cmd/+" if kind is TopicKind.COMMAND else kind.value
    return f"{TOPIC_ROOT}/devices/{device_id}/{suffix}"


class ParsedTopic(NamedTuple):
    """What a topic says: its kind, the device (for responses: the responding one), the command name and,
    for responses, the requester."""

    kind: TopicKind
    device_id: str | None
    command: str | None = None
    requester: str | None = None


_DEVICE_SUFFIXES = {k.value: k for k in TopicKind if k not in (TopicKind.COMMAND, TopicKind.COMMAND_RESPONSE)}


def parse_topic(topic: str) -> ParsedTopic:
    """Split a topic of this protocol into its parts; raise :class:`ProtocolError` if it is not one."""
    if topic == FLEET_REBIRTH_TOPIC:
        return ParsedTopic(TopicKind.REBIRTH, None)
    prefix = f"{TOPIC_ROOT}/"
    if not topic.startswith(prefix):
        raise ProtocolError(f"topic {topic!r} is not under {prefix!r}")
    parts = topic[len(prefix) :].split("/")
    try:
        if parts[0] == "clients" and len(parts) == 4 and parts[2] == "response":
            requester = validate_id(parts[1], "requester id")
            return ParsedTopic(TopicKind.COMMAND_RESPONSE, validate_id(parts[3]), requester=requester)
        if parts[0] == "devices" and len(parts) >= 3:
            device_id = validate_id(parts[1])
            rest = "/".join(parts[2:])
            if len(parts) == 4 and parts[2] == "cmd":
                return ParsedTopic(TopicKind.COMMAND, device_id, validate_id(parts[3], "command name"))
            if rest in _DEVICE_SUFFIXES:
                return ParsedTopic(_DEVICE_SUFFIXES[rest], device_id)
    except ProtocolError as e:
        raise ProtocolError(f"topic {topic!r}: {e}") from None
    raise ProtocolError(f"topic {topic!r} is not a lepton protocol topic (see docs/protocol.md)")


# -------------------------------------------------------------------------------------------- payloads

DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
SessionId = Annotated[int, Field(ge=1, le=_INT64_MAX)]
Count = Annotated[int, Field(ge=0, le=_INT64_MAX)]

MAX_CONFIG_VERSION = 2**53 - 1
"""Highest config version on the wire: exact in a JSON double and far below SQL BIGINT, so a version can
never overflow an allocator. Desired versions are allocated by the scheduler's store (never by a device)."""
MAX_CONFIG_VERSION_STEP = 1_000_000
"""A device applies a desired version only if it is above its current one by at most this much."""
ConfigVersion = Annotated[int, Field(ge=1, le=MAX_CONFIG_VERSION)]
"""A desired config version: 1 .. MAX_CONFIG_VERSION, an int (strict: no floats, no bools)."""
ActiveVersion = Annotated[int, Field(ge=0, le=MAX_CONFIG_VERSION)]
"""A running config's version: 0 (the local file) or a ConfigVersion."""
Timestamp = Annotated[float, Field(gt=0, lt=1e11, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Text = Annotated[str, StringConstraints(max_length=4096)]


class Message(BaseModel):
    """Base of every payload: unknown fields are rejected and types are never coerced."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Capabilities(Message):
    accelerator: Name = Field(description="Inference hardware: `cpu`, `cuda`, or a Jetson module name.")
    runtimes: dict[Name, Name] = Field(
        max_length=32,
        description="Inference runtimes installed, name -> version (e.g. onnxruntime, tensorrt).",
    )
    cpu_count: int = Field(ge=1, le=4096, description="Logical CPU cores.")
    memory_bytes: Count = Field(description="Total memory in bytes.")
    sources: list[Name] = Field(max_length=64, description="Ids of the sources attached to the device.")
    artifacts: list[Name] = Field(
        max_length=256, description="Ids of the models/artifacts present on the device and runnable by it."
    )


class Birth(Message):
    """Published on every connect: who the device is, in which session, and what it can do."""

    protocol: Literal[1] = Field(PROTOCOL_VERSION, description="Protocol version; equals PROTOCOL_VERSION.")
    device_id: DeviceId = Field(description="The device.")
    session_id: SessionId = Field(description="Increases on every connect; the will of this connection has it.")
    seq: Literal[0] = Field(0, description="A birth is message 0 of its session; telemetry starts at 1.")
    timestamp: Timestamp = Field(description="Unix time (s) the message was built.")
    capabilities: Capabilities = Field(description="What the device can run.")
    config_version: ActiveVersion = Field(description="Version of the active config; 0 when it is the local file.")
    software_version: Name = Field(description="lepton-edge version running on the device.")


class Death(Message):
    """The MQTT last will of one session (or sent on a clean shutdown); see :func:`is_stale_death`."""

    device_id: DeviceId = Field(description="The device.")
    session_id: SessionId = Field(description="The session this death ends.")
    reason: Literal["connection_lost", "shutdown"] = Field(
        description="`connection_lost` when the broker sends the will, `shutdown` on a clean stop."
    )


class Percentiles(Message):
    p50: NonNegative = Field(description="Median, ms.")
    p90: NonNegative = Field(description="90th percentile, ms.")
    p99: NonNegative = Field(description="99th percentile, ms.")
    max: NonNegative = Field(description="Largest value in the window, ms.")

    @model_validator(mode="after")
    def _ordered(self) -> Percentiles:
        if not self.p50 <= self.p90 <= self.p99 <= self.max:
            raise ValueError("percentiles must satisfy p50 <= p90 <= p99 <= max")
        return self


class Usage(Message):
    used_bytes: Count = Field(description="Bytes in use.")
    total_bytes: Count = Field(description="Bytes in total.")

    @model_validator(mode="after")
    def _fits(self) -> Usage:
        if self.used_bytes > self.total_bytes:
            raise ValueError("used_bytes must not exceed total_bytes")
        return self


class OutboxStatus(Message):
    depth: Count = Field(description="Messages waiting in the device's outbox.")
    bytes: Count = Field(description="Bytes waiting in the outbox.")
    dropped: dict[Name, Count] = Field(
        max_length=16, description="Messages dropped since the outbox was created, by reason."
    )


SourceState = Literal["starting", "running", "reconnecting", "stalled", "ended", "failed"]
WorkloadState = Literal["starting", "running", "failed"]
ConfigOutcome = Literal["applied", "rejected", "rolled_back"]
MAX_TELEMETRY_WORKLOADS = 64
"""Most workloads one telemetry message (and one reported config) may describe."""
MAX_TELEMETRY_MODELS = 32
"""Most models one telemetry message may describe."""


def _without_empty(data: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """``data`` without the optional maps in ``names`` that are empty: a message without them stays readable by
    receivers older than those fields."""
    for name in names:
        if not data.get(name):
            data.pop(name, None)
    return data


class WorkloadTelemetry(Message):
    """One workload of a device (a stream bound to a model) over the last interval."""

    stream: Name = Field(description="The stream the workload reads (its name in the device config).")
    model: Name = Field(description="The model's artifact id (``model_id``): the key of ``Telemetry.models``.")
    fps: NonNegative = Field(description="Frames of this workload processed per second over the last interval.")
    frames: Count = Field(description="Frames of this workload processed since the session started.")
    drops: dict[Name, Count] = Field(
        default_factory=dict, max_length=32, description="Frames of this workload dropped, by reason."
    )
    latency_ms: Percentiles | None = Field(None, description="End-to-end latency (capture to result), ms.")
    frame_age_ms: Percentiles | None = Field(None, description="Age of frames when inference starts, ms.")
    source_state: SourceState = Field(description="State of the workload's stream.")
    state: WorkloadState = Field(description="`running`, `starting`, or `failed` (it gave up; see `error`).")
    error: Text | None = Field(None, description="Why it failed (or the last error), if any.")


class ModelTelemetry(Message):
    """One model of a device (all the streams it serves) over the last interval."""

    fps: NonNegative = Field(description="Frames inferred per second over the interval, all its streams together.")
    batch_mean: float = Field(ge=0, le=4096, allow_inf_nan=False, description="Mean batch size of its inferences.")
    busy: float = Field(
        ge=0, le=1, allow_inf_nan=False, description="Fraction (0-1) of the interval spent inferring."
    )
    streams: int = Field(ge=0, le=4096, description="Streams it serves.")


class Telemetry(Message):
    """Periodic health and performance report of one device."""

    device_id: DeviceId = Field(description="The device.")
    session_id: SessionId = Field(description="The current session.")
    seq: int = Field(ge=1, le=_INT64_MAX, description="Increases by one per telemetry message in the session.")
    timestamp: Timestamp = Field(description="Unix time (s) the message was built.")
    interval_s: float = Field(gt=0, le=86400, allow_inf_nan=False, description="Reporting interval, s.")
    fps: NonNegative = Field(description="Frames processed per second over the last interval.")
    frames: Count = Field(description="Frames processed since the session started.")
    drops: dict[Name, Count] = Field(max_length=32, description="Frames dropped since the session started, by reason.")
    latency_ms: dict[Name, Percentiles] = Field(
        max_length=16, description="Per-stage latency percentiles over the window (stage -> ms)."
    )
    frame_age_ms: Percentiles | None = Field(description="Age of frames when inference starts, ms.")
    sources: dict[Name, SourceState] = Field(max_length=64, description="State of each source, by id.")
    artifact_id: Name | None = Field(description="The model/artifact running, if any.")
    cpu_percent: Percent = Field(description="Whole-device CPU use, 0-100.")
    memory: Usage = Field(description="Device memory.")
    disk: Usage = Field(description="Disk holding the device's data directory.")
    temperatures_c: dict[Name, Annotated[float, Field(ge=-273.15, le=500, allow_inf_nan=False)]] = Field(
        max_length=32, description="Readable temperature sensors, name -> degrees Celsius."
    )
    gpu_percent: Percent | None = Field(description="GPU load, 0-100, where readable.")
    config_version: ActiveVersion = Field(description="Version of the active config.")
    outbox: OutboxStatus = Field(description="Store-and-forward queue state.")
    workloads: dict[Name, WorkloadTelemetry] = Field(
        default_factory=dict,
        max_length=MAX_TELEMETRY_WORKLOADS,
        description="Each workload running (name in the device config -> its figures); empty from devices that "
        "do not report them.",
    )
    models: dict[Name, ModelTelemetry] = Field(
        default_factory=dict,
        max_length=MAX_TELEMETRY_MODELS,
        description="Each model loaded, by artifact id (``model_id``): its batched throughput; the scheduler "
        "learns the device's capacity for the model from it (fps / busy).",
    )

    @model_serializer(mode="wrap")
    def _omit_empty_maps(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(handler(self), ("workloads", "models"))


Finite = Annotated[float, Field(allow_inf_nan=False)]
_OPTIONAL_PARTS = ("keypoints", "rotated_box", "mask_area", "attributes")
MAX_ATTRIBUTES = 8
"""Most cascade answers one detection carries."""


class ClassScore(Message):
    label: Text = Field(description="Class name (the class id as text when there are no labels).")
    class_id: Count = Field(description="Class index.")
    score: float = Field(allow_inf_nan=False, description="Probability, or the raw logit without softmax.")


class Detection(Message):
    label: Text = Field(description="Class name (the class id as text when there are no labels).")
    class_id: Count = Field(description="Class index.")
    score: float = Field(ge=0, le=1, allow_inf_nan=False, description="Confidence, 0-1.")
    box: list[Finite] = Field(
        min_length=4, max_length=4, description="[x1, y1, x2, y2] in source pixels."
    )
    keypoints: list[Annotated[list[Finite], Field(min_length=2, max_length=3)]] | None = Field(
        None, max_length=1000,
        description="Pose models: the keypoints, [x, y] or [x, y, visibility], in source pixels (at most 1000).",
    )
    rotated_box: list[Finite] | None = Field(
        None, min_length=5, max_length=5,
        description="Oriented-box models: [cx, cy, w, h, angle], source pixels and radians.",
    )
    mask_area: Count | None = Field(
        None, description="Segmentation models: pixels in the mask (the mask itself stays on the device's sinks).",
    )
    attributes: dict[Name, ClassScore] | None = Field(
        None, max_length=MAX_ATTRIBUTES,
        description="Cascades: each cascade classifier's top class for this detection, by the classifier's model "
        "name (only the detections it classified).",
    )

    @model_serializer(mode="wrap")
    def _omit_absent_parts(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A plain detection's payload stays what it was: keypoints, rotated_box and mask_area only when set."""
        data = handler(self)
        for key in _OPTIONAL_PARTS:
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @classmethod
    def from_item(cls, item: dict[str, Any], mask_area: int | None = None) -> Detection:
        """From one entry of ``Detections.to_dict()`` (its mask replaced by ``mask_area``)."""
        rotated = item.get("rotated_box")
        return cls(
            label=item["label"], class_id=item["class_id"], score=item["score"], box=item["box"],
            keypoints=item.get("keypoints"),
            rotated_box=None if rotated is None else [rotated[k] for k in ("cx", "cy", "w", "h", "angle")],
            mask_area=mask_area, attributes=item.get("attributes"),
        )


class ResultMessage(Message):
    """One pipeline result forwarded to the fleet."""

    device_id: DeviceId = Field(description="The device.")
    session_id: SessionId = Field(description="The session that produced it.")
    seq: int = Field(ge=1, le=_INT64_MAX, description="Increases by one per result message in the session.")
    message_id: Name = Field(description="Unique id; receivers drop duplicates by it.")
    frame_seq: Count = Field(description="Sequence number of the frame in its source.")
    source: Name = Field(description="Source id.")
    timestamp: Timestamp = Field(description="Unix time (s) the frame was captured.")
    latency_ms: NonNegative = Field(description="Capture to postprocessed result, ms.")
    detections: list[Detection] | None = Field(None, max_length=1000, description="Detections, for detection models.")
    classes: list[ClassScore] | None = Field(None, max_length=1000, description="Top classes, for classifiers.")
    durable: bool = Field(description="Sent through the outbox (at least once) rather than best effort.")

    @model_validator(mode="after")
    def _one_body(self) -> ResultMessage:
        if self.detections is not None and self.classes is not None:
            raise ValueError("a result carries detections or classes, not both")
        return self

    @classmethod
    def from_result(
        cls, result: Any, *, device_id: str, session_id: int, seq: int, message_id: str, durable: bool
    ) -> ResultMessage:
        """Build the message from a pipeline :class:`lepton_edge.core.results.Result`. Masks travel as their
        pixel counts: encoded, a frame's masks could pass the payload limit."""
        output = result.output
        masks = getattr(output, "masks", None)
        areas = [None] * len(output) if masks is None else [int(a) for a in masks.areas()]
        if masks is not None:
            output = replace(output, masks=None)
        body = output.to_dict()
        return cls(
            device_id=device_id,
            session_id=session_id,
            seq=seq,
            message_id=message_id,
            frame_seq=result.seq,
            source=result.source_id,
            timestamp=result.wall_time,
            latency_ms=max(0.0, result.latency_ms),
            detections=[Detection.from_item(d, area) for d, area in zip(body["detections"], areas, strict=True)]
            if "detections" in body else None,
            classes=[ClassScore(**c) for c in body["classes"]] if "classes" in body else None,
            durable=durable,
        )


ANALYTICS_EVENT_PREFIX = "analytics."
"""Events whose kind starts with this carry an :class:`AnalyticsDetail` (``analytics.line_crossed`` ...)."""
ANALYTICS_KINDS = frozenset({"zone_enter", "zone_exit", "line_crossed", "loitering", "appeared", "counts"})
"""What follows the prefix: the analytics event kinds, and ``counts`` for the periodic counts."""
MAX_EVENT_SECONDS = 10**7
"""Largest dwell time carried by an analytics event (about 115 days)."""


class AnalyticsDetail(Message):
    """What an analytics event (zone, line, loitering, appeared, periodic counts) is about."""

    stream: Name = Field(description="Source id of the stream it happened on.")
    track_id: Count | None = Field(None, description="The track (null for counts).")
    name: Name | None = Field(None, description="The zone or line (null for appeared and counts).")
    class_id: Count | None = Field(None, description="Class index of the track.")
    label: Text | None = Field(None, description="Class name of the track.")
    confidence: float | None = Field(None, ge=0, le=1, allow_inf_nan=False, description="Detection score (appeared).")
    direction: Literal["in", "out"] | None = Field(None, description="Crossing direction (line_crossed).")
    dwell_s: float | None = Field(
        None, ge=0, le=MAX_EVENT_SECONDS, allow_inf_nan=False, description="Seconds in the zone (exit, loitering)."
    )
    capture_time: Timestamp = Field(description="Unix time (s) the frame that raised it was captured.")
    snapshot: Name | None = Field(None, description="Reference of a snapshot or clip; null until clips exist.")
    counts: dict[Name, JsonValue] | None = Field(
        None, max_length=2, description="Periodic counts: `lines` and `zones`, per name and class."
    )


def analytics_event_id(device_id: str, stream: str, track_id: int | None, kind: str, name: str | None,
                       capture_time: float) -> str:
    """The stable id of an analytics event: the same event always gets the same id (a redelivery after a restart
    too), so receivers drop duplicates by it. Capture time in microseconds keeps ids of a later run apart."""
    key = "\x00".join([device_id, stream, str(track_id), kind, name or "", str(round(capture_time * 1e6))])
    return "a" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:31]


class Event(Message):
    """Something an operator should know about; always sent through the outbox. Analytics events
    (``analytics.<kind>``) carry ``analytics``; the others never do."""

    device_id: DeviceId = Field(description="The device.")
    session_id: SessionId = Field(description="The session it happened in.")
    id: Name = Field(description="Unique id; receivers drop duplicates by it.")
    kind: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.]{1,64}$")] = Field(
        description="Machine-readable kind, e.g. `source.reconnected`, `config.rejected`."
    )
    severity: Literal["debug", "info", "warning", "error", "critical"] = Field(description="How serious.")
    message: Text = Field(description="One line for humans.")
    details: dict[Name, JsonValue] = Field(default_factory=dict, description="Structured context.")
    timestamp: Timestamp = Field(description="Unix time (s) it happened.")
    analytics: AnalyticsDetail | None = Field(None, description="What an `analytics.<kind>` event is about.")

    @model_validator(mode="after")
    def _analytics_detail(self) -> Event:
        if self.kind.startswith(ANALYTICS_EVENT_PREFIX):
            if self.kind[len(ANALYTICS_EVENT_PREFIX):] not in ANALYTICS_KINDS:
                raise ValueError(f"unknown analytics event kind {self.kind!r}; known: {sorted(ANALYTICS_KINDS)}")
            if self.analytics is None:
                raise ValueError(f"a {self.kind} event needs its analytics detail")
        elif self.analytics is not None:
            raise ValueError(f"only analytics.* events carry an analytics detail, not {self.kind}")
        return self

    @model_serializer(mode="wrap")
    def _omit_absent_analytics(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("analytics") is None:
            data.pop("analytics", None)
        return data


DESIRED_SIGNATURE_CONTEXT = b"lepton-edge desired config v1\x00"
"""Bytes signed before a desired document's canonical JSON (domain separation: a signature made for a desired
document is valid for no other use of the scheduler's key)."""


class DesiredConfig(Message):
    """The config a device should run (retained). The device validates ``config`` with its own schema."""

    version: ConfigVersion = Field(description="Increases with every new desired config (>= 1).")
    config: dict[Name, JsonValue] = Field(description="The device config document (a mapping).")
    issued_at: Timestamp = Field(description="Unix time (s) it was issued.")
    issued_by: Name = Field(description="Who issued it (scheduler id or operator).")
    signature: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{86}==$")] | None = Field(
        None,
        description="Base64 ed25519 signature by the scheduler's key of desired_signed_bytes(device id, this "
        "document); absent when the scheduler has no desired_signing_key.",
    )

    @model_serializer(mode="wrap")
    def _omit_absent_signature(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("signature") is None:
            data.pop("signature", None)
        return data


def desired_signed_bytes(device_id: str, desired: DesiredConfig) -> bytes:
    """What a desired document's signature covers: :data:`DESIRED_SIGNATURE_CONTEXT`, then the canonical JSON
    (sorted keys, no spaces, UTF-8) of the device id and every field but the signature. The device id binds
    the document to one device: replayed on another device's topic, its signature does not verify."""
    fields = desired.model_dump(mode="json", exclude={"signature"})
    canonical = json.dumps(
        {**fields, "device_id": validate_id(device_id)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return DESIRED_SIGNATURE_CONTEXT + canonical.encode("utf-8")


class WorkloadOutcome(Message):
    """What the device did with one workload of a desired config."""

    outcome: ConfigOutcome = Field(description="`applied`, `rejected` or `rolled_back`.")
    errors: list[Text] = Field(default_factory=list, max_length=100, description="Why it was not applied.")

    @model_validator(mode="after")
    def _consistent(self) -> WorkloadOutcome:
        if (self.outcome == "applied") == bool(self.errors):
            raise ValueError("an applied workload has no errors; a rejected or rolled back one says why")
        return self


class ReportedConfig(Message):
    """What the device did with a desired config (retained).

    ``outcome`` is the document's: ``applied`` when every workload it changed applied (it is the active config
    now); otherwise the worst of their outcomes, and ``active_version`` stays at the last document applied in
    full. ``workloads`` says per workload of the document what happened (untouched ones ``applied``): workloads
    that applied keep running as the document says even when another one was refused.
    """

    device_id: DeviceId = Field(description="The device.")
    version: ConfigVersion = Field(description="The desired version this report is about.")
    outcome: Literal["applied", "rejected", "rolled_back"] = Field(description="What happened to it.")
    errors: list[Text] = Field(default_factory=list, max_length=100, description="Why it was rejected or rolled back.")
    timestamp: Timestamp = Field(description="Unix time (s) of the outcome.")
    active_version: ActiveVersion = Field(description="Version running now (0: the local config file).")
    workloads: dict[Name, WorkloadOutcome] = Field(
        default_factory=dict,
        max_length=MAX_TELEMETRY_WORKLOADS,
        description="Per workload of the document (its name): what was applied, rejected or rolled back; empty "
        "from devices that do not report it (every workload then shares `outcome`).",
    )

    @model_serializer(mode="wrap")
    def _omit_empty_map(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_empty(handler(self), ("workloads",))

    @model_validator(mode="after")
    def _consistent(self) -> ReportedConfig:
        if self.outcome == "applied":
            if self.errors:
                raise ValueError("an applied config has no errors")
            if self.active_version != self.version:
                raise ValueError("after `applied`, active_version must equal version")
        else:
            if not self.errors:
                raise ValueError(f"a `{self.outcome}` report must say why in `errors`")
            if self.active_version == self.version:
                raise ValueError(f"after `{self.outcome}`, active_version cannot be the reported version")
        return self


class CommandRequest(Message):
    """A request; response topic, correlation data and expiry travel as MQTT v5 properties."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = Field(
        description="Command name; equals the last topic level."
    )
    args: dict[Name, JsonValue] = Field(default_factory=dict, description="Command arguments.")


class CommandResponse(Message):
    """The answer to a :class:`CommandRequest`, sent to its response topic with its correlation data."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = Field(
        description="The command answered."
    )
    status: Literal["ok", "error"] = Field(description="Whether it succeeded.")
    result: JsonValue = Field(None, description="What the command returned (on `ok`).")
    error: Text | None = Field(None, description="Why it failed (on `error`).")

    @model_validator(mode="after")
    def _consistent(self) -> CommandResponse:
        if self.status == "ok" and self.error is not None:
            raise ValueError("an `ok` response has no error")
        if self.status == "error" and not self.error:
            raise ValueError("an `error` response must say why in `error`")
        return self


class RebirthRequest(Message):
    """Asks a device (or the fleet) to publish a new birth and its full state."""

    reason: Text = Field(description="Why, e.g. `telemetry gap 12 -> 15`.")
    requested_by: Name = Field(description="Who asks (scheduler id or operator).")
    timestamp: Timestamp = Field(description="Unix time (s) of the request.")


SCHEMAS: dict[TopicKind, type[Message]] = {
    TopicKind.BIRTH: Birth,
    TopicKind.DEATH: Death,
    TopicKind.TELEMETRY: Telemetry,
    TopicKind.RESULT: ResultMessage,
    TopicKind.EVENT: Event,
    TopicKind.CONFIG_DESIRED: DesiredConfig,
    TopicKind.CONFIG_REPORTED: ReportedConfig,
    TopicKind.COMMAND: CommandRequest,
    TopicKind.COMMAND_RESPONSE: CommandResponse,
    TopicKind.REBIRTH: RebirthRequest,
}
"""The payload schema of every topic kind."""


# ----------------------------------------------------------------------------------------------- codec


def encode(message: Message) -> bytes:
    """Compact UTF-8 JSON of ``message``, fields in schema order. Fails on a payload over the size limit."""
    data = json.dumps(
        message.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(
            f"{type(message).__name__}: encoded payload is {len(data)} bytes, over the "
            f"{MAX_PAYLOAD_BYTES}-byte limit; send less (fewer detections, shorter details)"
        )
    return data


_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def _nesting_depth(data: bytes, limit: int) -> int:
    """Deepest array/object nesting in ``data`` (strings skipped), stopping early once over ``limit``."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return 0  # cannot be deeper than the number of openers
    depth = deepest = 0
    for token in _TOKENS.finditer(data):
        t = token.group()
        if t in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif t in (b"]", b"}"):
            depth -= 1
    return deepest


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _format_errors(err: ValidationError, where: str) -> str:
    problems = []
    for e in err.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        shown = ""
        if got is not None and not isinstance(got, dict | list):
            text = repr(got)
            shown = f" (got {text[:60]}{'...' if len(text) > 60 else ''})"
        problems.append(f"field `{loc}`: {e['msg']}{shown}")
    more = err.error_count() - len(problems)
    tail = f"; and {more} more problem(s)" if more > 0 else ""
    return f"{where}: invalid payload: " + "; ".join(problems) + tail


def decode(kind: TopicKind | str, payload: bytes, topic: str | None = None) -> Message:
    """Parse and validate a payload of topic kind ``kind``; ``topic`` (optional) is named in errors.

    Raises :class:`ProtocolError` (and nothing else) for any payload that is not a valid message.
    """
    try:
        kind = TopicKind(kind)
    except ValueError:
        raise ProtocolError(f"unknown topic kind {kind!r}; known: {[k.value for k in TopicKind]}") from None
    where = f"{kind.value} message" + (f" on {topic!r}" if topic else "")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ProtocolError(f"{where}: payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"{where}: payload is {len(payload)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{where}: payload is not UTF-8 (byte {e.start}: {e.reason})") from None
    if _nesting_depth(payload, MAX_NESTING) > MAX_NESTING:
        raise ProtocolError(f"{where}: JSON nested deeper than {MAX_NESTING} levels")
    try:
        data = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as e:
        # json.JSONDecodeError is a ValueError; so are huge integers and our own hooks' errors
        raise ProtocolError(f"{where}: payload is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}: payload must be a JSON object, got {type(data).__name__}")
    try:
        return SCHEMAS[kind].model_validate(data)
    except ValidationError as e:
        raise ProtocolError(_format_errors(e, where)) from None
    except RecursionError:
        raise ProtocolError(f"{where}: payload is nested too deeply") from None


# -------------------------------------------------------------------------------------- presence rules


def model_id(model_path: str, artifact_sha256: str | None = None) -> str:
    """The id a device reports for the model it runs, and the scheduler plans capacity with:
    ``sha256:<hex>`` of its signed artifact, else the model file's name."""
    if artifact_sha256:
        return f"sha256:{artifact_sha256.lower()}"
    return model_path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or model_path


def is_stale_death(current_session: int, death: Death) -> bool:
    """True if ``death`` ends an older session than the last birth seen (``current_session``): ignore it.

    A death for the current session or a newer one (whose birth was missed) means the device is offline.
    """
    return death.session_id < current_session


@dataclass(frozen=True, slots=True)
class Observation:
    """What :meth:`SequenceTracker.observe` concluded about one message."""

    kind: Literal["ok", "gap", "new_session", "duplicate", "stale_session"]
    missing: int = 0
    """Messages missing before this one (``gap``, or a ``new_session`` whose first messages were missed)."""

    @property
    def needs_rebirth(self) -> bool:
        """Messages were lost: ask the device for a rebirth (full state report)."""
        return self.missing > 0

    @property
    def accept(self) -> bool:
        """Whether the message is newer than everything seen and should be used."""
        return self.kind in ("ok", "gap", "new_session")


class SequenceTracker:
    """Tracks (session_id, seq) of one device's stream and reports gaps, duplicates and stale sessions.

    Call :meth:`birth` when a birth arrives (its seq is 0), and :meth:`observe` for each telemetry message.
    A newer session resets the tracker; an older one is stale and ignored.
    """

    def __init__(self) -> None:
        self.session_id: int | None = None
        self.last_seq: int | None = None

    def birth(self, session_id: int) -> Observation:
        """Record a birth (seq 0). A birth of an older session than the current one is stale."""
        if self.session_id is not None and session_id < self.session_id:
            return Observation("stale_session")
        self.session_id, self.last_seq = session_id, 0
        return Observation("new_session")

    def observe(self, session_id: int, seq: int) -> Observation:
        """Record one message and say whether it is in order, after a gap, a duplicate, or stale."""
        if self.session_id is None or session_id > self.session_id:
            # The birth of this session was missed (or this is the first message ever seen):
            # everything since seq 0 is unknown unless this is message 1.
            self.session_id, self.last_seq = session_id, seq
            return Observation("new_session", missing=max(0, seq - 1) if seq >= 1 else 0)
        if session_id < self.session_id:
            return Observation("stale_session")
        assert self.last_seq is not None
        if seq <= self.last_seq:
            return Observation("duplicate")
        missing = seq - self.last_seq - 1
        self.last_seq = seq
        return Observation("gap", missing) if missing else Observation("ok")
