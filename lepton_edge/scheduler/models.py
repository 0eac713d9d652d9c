"""The records the scheduler keeps: devices, workloads, assignments and events.

``Workload`` is what operators submit, so it is a pydantic model that validates strictly (unknown fields
rejected). ``Device``, ``Assignment`` and ``Event`` are built by the store from its own rows and are plain
frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, field_validator

from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.fleet.protocol import model_id

AssignmentStatus = Literal["pending", "applied", "failed"]
ASSIGNMENT_STATUSES: tuple[str, ...] = get_args(AssignmentStatus)
Severity = Literal["debug", "info", "warning", "error", "critical"]
SEVERITIES: tuple[str, ...] = get_args(Severity)

WORKLOAD_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


@dataclass(frozen=True)
class Device:
    """One device as the scheduler knows it (from births, deaths, telemetry and config reports)."""

    device_id: str
    online: bool
    session_id: int
    """The newest session seen for this device (birth or death); 0 before any."""
    last_seen: float
    """Unix time of the last message from the device."""
    capabilities: dict[str, Any]
    """The ``Capabilities`` of its latest birth (protocol.py), as a mapping."""
    group: str | None
    """The operator's group if one is set, else ``capabilities["group"]`` when present."""
    accelerator: str
    runtimes: dict[str, str]
    desired_version: int
    reported_version: int
    last_outcome: str | None
    telemetry: dict[str, Any] | None
    """The latest telemetry payload."""
    throttled: bool
    temperature_c: float | None
    """Hottest sensor in the latest telemetry."""
    fps_capacity: dict[str, float] = field(default_factory=dict)
    """Frames per second this device can give each model id, learned from telemetry."""
    last_errors: list[str] = field(default_factory=list)
    """Errors of the latest config report (``rejected``/``rolled_back``)."""
    offline_reason: str | None = None
    """Why the device went offline (death reason or liveness timeout); None while online."""
    status_since: float = 0.0
    """Unix time the device last went online or offline."""


class Workload(BaseModel):
    """A stream to analyse somewhere in the fleet: one source, one model, a required frame rate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workload_id: Annotated[str, StringConstraints(pattern=WORKLOAD_ID_PATTERN)] = Field(
        description="Slug: 1-64 characters, lowercase letters, digits, '_', '.', '-'; starts with a letter/digit."
    )
    source_uri: Annotated[str, StringConstraints(min_length=1, max_length=2048)] = Field(
        description="The source the device opens (rtsp://..., csi://0, file path, ...)."
    )
    model: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        description="Model path on the device, or the artifact id its capacity is measured under."
    )
    artifact: dict[str, JsonValue] | None = Field(
        None, description="Artifact to download: url, size, sha256, signature (as in the device config)."
    )
    required_fps: float = Field(gt=0, le=10_000, allow_inf_nan=False, description="Frames per second needed.")
    pinned_device: Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)] | None = Field(
        None, description="Run only on this device."
    )
    group: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        None, description="Run only on devices of this group."
    )
    accelerator: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        None, description="Required accelerator kind, e.g. `cuda` or `cpu`."
    )
    runtime: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        None, description="Required inference runtime, e.g. `tensorrt` (the device must list it)."
    )
    config: dict[str, JsonValue] = Field(
        default_factory=dict, description="Extra device config for this workload (postprocess thresholds, ...)."
    )
    created_at: float | None = Field(None, description="Unix time it was added; the store sets it.")

    @property
    def model_id(self) -> str:
        """The model id devices report for this workload's model (see ``protocol.model_id``)."""
        sha = self.artifact.get("sha256") if self.artifact else None
        return model_id(self.model, sha)

    @field_validator("artifact")
    @classmethod
    def _valid_artifact(cls, artifact: dict[str, Any] | None) -> dict[str, Any] | None:
        if artifact is None:
            return None

        return ArtifactRef.model_validate(artifact).model_dump(exclude_none=True)


@dataclass(frozen=True)
class Assignment:
    """Where a workload runs and whether the device has applied it."""

    workload_id: str
    device_id: str
    status: AssignmentStatus
    desired_version: int
    """The device's desired config version that carries this assignment."""
    since: float
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.status not in ASSIGNMENT_STATUSES:
            raise ValueError(f"assignment status must be one of {ASSIGNMENT_STATUSES}, got {self.status!r}")


@dataclass(frozen=True)
class Event:
    """Something that happened in the fleet, for operators (dashboard, API)."""

    id: int
    time: float
    kind: str
    device_id: str | None
    workload_id: str | None
    severity: Severity
    message: str
    details: dict[str, Any] = field(default_factory=dict)
