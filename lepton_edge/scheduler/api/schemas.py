"""Request and response bodies of the scheduler API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from lepton_edge.scheduler.models import DEVICE_ID_PATTERN, WORKLOAD_ID_PATTERN, AssignmentStatus, Severity, Workload

DeviceIdPath = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
WorkloadId = Annotated[str, StringConstraints(pattern=WORKLOAD_ID_PATTERN)]


class Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class DeviceOut(Out):
    """A device with a summary of its latest telemetry and the workloads assigned to it."""

    device_id: str
    online: bool
    session_id: int
    last_seen: float = Field(description="Unix time of the last message from the device.")
    offline_reason: str | None
    group: str | None
    accelerator: str
    runtimes: dict[str, str]
    capabilities: dict[str, Any]
    desired_version: int = Field(description="Newest desired config version issued to the device.")
    reported_version: int = Field(description="Newest config version the device reported on.")
    last_outcome: str | None = Field(description="Outcome of that report: applied, rejected or rolled_back.")
    last_errors: list[str]
    throttled: bool
    temperature_c: float | None = Field(description="Hottest sensor in the latest telemetry.")
    fps_capacity: dict[str, float] = Field(description="Measured frames per second per model id.")
    fps: float | None = Field(description="Frames per second in the latest telemetry.")
    latency_stage: str | None = Field(description="Latency stage summarised: `e2e`, else `infer`.")
    latency_p50_ms: float | None = Field(description="Median latency of that stage in the latest telemetry.")
    latency_p99_ms: float | None = Field(description="99th percentile latency of that stage, same window.")
    model: str | None = Field(description="The model/artifact the device runs now (latest telemetry).")
    telemetry_time: float | None = Field(description="Unix time the latest telemetry was built.")
    workloads: list[str] = Field(description="Ids of the workloads assigned to the device.")
    required_fps: float = Field(description="Sum of the required fps of the workloads assigned to it.")


class DeviceDetail(DeviceOut):
    """A device with its latest telemetry payload in full."""

    telemetry: dict[str, Any] | None


class StreamOut(Out):
    """One workload of a device (a stream bound to a model), from the device's latest telemetry."""

    workload: str = Field(description="The workload's name in the device config.")
    stream: str = Field(description="The stream it reads.")
    model: str = Field(description="The model's artifact id.")
    fps: float = Field(description="Frames of this workload processed per second over the last interval.")
    frames: int = Field(description="Frames processed since the device's session started.")
    drops: dict[str, int] = Field(description="Frames dropped since the session started, by reason.")
    latency_p50_ms: float | None = Field(description="End-to-end latency (capture to result), median, ms.")
    latency_p90_ms: float | None = Field(description="End-to-end latency, 90th percentile, ms.")
    latency_p99_ms: float | None = Field(description="End-to-end latency, 99th percentile, ms.")
    frame_age_p99_ms: float | None = Field(description="Age of frames when inference starts, 99th percentile, ms.")
    source_state: str = Field(description="starting, running, reconnecting, stalled, ended or failed.")
    state: str = Field(description="The workload's state: starting, running or failed.")
    error: str | None = Field(description="Why it failed (or its last error), if any.")


class ModelOut(Out):
    """One model loaded on a device: its batched throughput over the last telemetry interval."""

    model: str = Field(description="The model's artifact id.")
    fps: float = Field(description="Frames inferred per second, all its streams together.")
    batch_mean: float = Field(description="Mean batch size of its inferences.")
    busy: float = Field(description="Fraction (0-1) of the interval its inference worker was busy.")
    streams: int = Field(description="Streams it serves.")


class DeviceStreams(Out):
    """Each stream and model of a device, from its latest telemetry (empty lists for a device that does not
    report them, or before its first telemetry)."""

    device_id: str
    online: bool
    telemetry_time: float | None = Field(description="Unix time the telemetry shown was built.")
    streams: list[StreamOut] = Field(description="Each workload, ordered by name.")
    models: list[ModelOut] = Field(description="Each model, ordered by artifact id.")
    skipped: list[str] = Field(description="Workloads or models of the payload that could not be read, and why.")


class TelemetryRow(Out):
    """One telemetry message of a device's history."""

    ts: float
    session_id: int
    seq: int
    fps: float | None
    latency_stage: str | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    temperature_c: float | None
    cpu_percent: float | None
    data: dict[str, Any] | None = Field(description="The whole payload; null with `summary=true`.")


class GroupUpdate(BaseModel):
    """The operator's group of a device; null falls back to the group the device announces."""

    model_config = ConfigDict(extra="forbid")

    group: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        description="Group name, or null to use the device's own."
    )


class WorkloadUpdate(Workload):
    """A workload's new definition; ``workload_id`` may be left out and ``created_at`` is kept."""

    workload_id: WorkloadId | None = Field(  # type: ignore[assignment]
        None, description="Optional; must equal the id in the path."
    )


class WorkloadOut(Out):
    """A workload with where it runs."""

    workload: Workload
    device_id: str | None = Field(description="The device it is assigned to; null while unplaced.")
    status: AssignmentStatus | None
    reason: str | None


class AssignmentOut(Out):
    workload_id: str
    device_id: str
    status: AssignmentStatus
    desired_version: int
    since: float
    reason: str | None


class EventOut(Out):
    id: int
    time: float
    kind: str
    device_id: str | None
    workload_id: str | None
    severity: Severity
    message: str
    details: dict[str, Any]


class StatsOut(Out):
    """Fleet counts from the store, and the service's own statistics."""

    time: float
    is_leader: bool = Field(description="Whether this replica is the placement leader.")
    leader: str | None = Field(description="Replica id of the current leader.")
    devices: int
    online: int
    throttled: int
    workloads: int
    assigned: int
    unplaced: int
    failed: int
    service: dict[str, Any] = Field(description="SchedulerService.stats(): ingestion, rejections, placement.")


class Health(Out):
    status: Literal["ok", "unavailable"]
    reason: str | None = None
    schema_version: int | None = None
    is_leader: bool | None = None


class Problem(Out):
    location: str = Field(description="body, query or path.")
    field: str
    message: str


class ErrorOut(Out):
    detail: str
    problems: list[Problem] = Field(default_factory=list)


class AuditOut(Out):
    """One audit log entry: who did what to which target, when, from where, and the outcome."""

    id: int
    ts: float = Field(description="Unix time of the request.")
    actor: str = Field(description="token:<id>:<name>, insecure-local, cli:<user> or anonymous.")
    role: str | None
    action: str = Field(description="Method and path (e.g. POST /api/workloads), or token.create from the CLI.")
    target: str | None = Field(description="The id the change was about.")
    status: int = Field(description="HTTP status code of the answer (401/403/429: refused).")
    remote: str | None = Field(description="Remote address of the caller.")
    detail: dict[str, Any] = Field(description="The refusal reason, and other facts of the change.")


class TokenOut(Out):
    """An API token as listed: never its secret."""

    token_id: str
    name: str
    role: str
    created_at: float
    created_by: str
    revoked_at: float | None


class TokenCreate(BaseModel):
    """A new API token."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")] = Field(
        description="What the token is for (e.g. ci-deploy); shown in lists and the audit log."
    )
    role: Literal["viewer", "operator", "admin"] = Field(description="viewer, operator or admin.")


class TokenCreated(Out):
    """A new token with its full text, shown only in this answer."""

    token: TokenOut
    secret: str = Field(description="The token to send as 'Authorization: Bearer <secret>'; store it now.")


class WhoAmI(Out):
    """The caller of this request."""

    actor: str
    role: str
    insecure_local: bool = Field(description="True when the API runs without authentication (--insecure-local).")
