"""``/api/devices``: the fleet registry, with each device's latest telemetry summarised."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import ValidationError

from lepton_edge.fleet.protocol import ModelTelemetry, WorkloadTelemetry
from lepton_edge.scheduler.api.auth import Operator, Viewer
from lepton_edge.scheduler.api.deps import Service, device_or_404
from lepton_edge.scheduler.api.schemas import (
    DeviceDetail,
    DeviceIdPath,
    DeviceOut,
    DeviceStreams,
    GroupUpdate,
    ModelOut,
    StreamOut,
    TelemetryRow,
)
from lepton_edge.scheduler.models import Assignment, Device, Workload
from lepton_edge.scheduler.store import Store

LATENCY_STAGES = ("e2e", "infer")
"""The telemetry latency stage the API summarises: end to end (capture to result) where the device reports
it, else inference alone; ``latency_stage`` says which."""

router = APIRouter(prefix="/api/devices", tags=["devices"], dependencies=[Viewer])


def _latency(data: dict[str, Any] | None) -> dict[str, Any]:
    """``latency_stage``, ``latency_p50_ms`` and ``latency_p99_ms`` of a telemetry payload."""
    stages = (data or {}).get("latency_ms") or {}
    for name in LATENCY_STAGES:
        window = stages.get(name)
        if isinstance(window, dict):
            p50, p99 = window.get("p50"), window.get("p99")
            return {
                "latency_stage": name,
                "latency_p50_ms": float(p50) if isinstance(p50, int | float) else None,
                "latency_p99_ms": float(p99) if isinstance(p99, int | float) else None,
            }
    return {"latency_stage": None, "latency_p50_ms": None, "latency_p99_ms": None}


def _number(data: dict[str, Any] | None, key: str) -> float | None:
    value = (data or {}).get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _device_fields(device: Device, assigned: list[tuple[str, float]]) -> dict[str, Any]:
    data = device.telemetry
    model = (data or {}).get("artifact_id")
    return {
        "device_id": device.device_id,
        "online": device.online,
        "session_id": device.session_id,
        "last_seen": device.last_seen,
        "offline_reason": device.offline_reason,
        "group": device.group,
        "accelerator": device.accelerator,
        "runtimes": device.runtimes,
        "capabilities": device.capabilities,
        "desired_version": device.desired_version,
        "reported_version": device.reported_version,
        "last_outcome": device.last_outcome,
        "last_errors": device.last_errors,
        "throttled": device.throttled,
        "temperature_c": device.temperature_c,
        "fps_capacity": device.fps_capacity,
        "fps": _number(data, "fps"),
        **_latency(data),
        "model": model if isinstance(model, str) else None,
        "telemetry_time": _number(data, "timestamp"),
        "workloads": [workload_id for workload_id, _ in assigned],
        "required_fps": round(sum(fps for _, fps in assigned), 6),
    }


def _assigned_by_device(
    assignments: list[Assignment], workloads: list[Workload]
) -> dict[str, list[tuple[str, float]]]:
    required = {w.workload_id: w.required_fps for w in workloads}
    by_device: dict[str, list[tuple[str, float]]] = {}
    for a in assignments:
        if a.workload_id in required:
            by_device.setdefault(a.device_id, []).append((a.workload_id, required[a.workload_id]))
    return by_device


def _telemetry_row(row: dict[str, Any], summary: bool) -> TelemetryRow:
    data = row.get("data") if isinstance(row.get("data"), dict) else None
    temps = [v for v in ((data or {}).get("temperatures_c") or {}).values() if isinstance(v, int | float)]
    return TelemetryRow(
        ts=row["ts"],
        session_id=row["session_id"],
        seq=row["seq"],
        fps=_number(data, "fps"),
        **_latency(data),
        temperature_c=float(max(temps)) if temps else None,
        cpu_percent=_number(data, "cpu_percent"),
        data=None if summary else data,
    )


def _detail(store: Store, device: Device) -> DeviceDetail:
    assigned = _assigned_by_device(store.list_assignments(), store.list_workloads()).get(device.device_id, [])
    return DeviceDetail(**_device_fields(device, assigned), telemetry=device.telemetry)


def _problem(kind: str, name: str, error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "itself"
    return f"{kind} {name!r}: {where}: {first['msg']}"


def _streams(device: Device) -> DeviceStreams:
    """The device's workloads and models as its latest telemetry reports them; entries that do not follow the
    protocol schema (a payload stored by an older scheduler) are listed in ``skipped``, not guessed at."""
    data = device.telemetry or {}
    raw_workloads = data.get("workloads") if isinstance(data.get("workloads"), dict) else {}
    raw_models = data.get("models") if isinstance(data.get("models"), dict) else {}
    streams: list[StreamOut] = []
    models: list[ModelOut] = []
    skipped: list[str] = []
    for name, raw in sorted(raw_workloads.items()):
        try:
            w = WorkloadTelemetry.model_validate(raw)
        except ValidationError as e:
            skipped.append(_problem("workload", name, e))
            continue
        latency, age = w.latency_ms, w.frame_age_ms
        streams.append(
            StreamOut(
                workload=name,
                stream=w.stream,
                model=w.model,
                fps=w.fps,
                frames=w.frames,
                drops=dict(sorted(w.drops.items())),
                latency_p50_ms=latency.p50 if latency else None,
                latency_p90_ms=latency.p90 if latency else None,
                latency_p99_ms=latency.p99 if latency else None,
                frame_age_p99_ms=age.p99 if age else None,
                source_state=w.source_state,
                state=w.state,
                error=w.error,
            )
        )
    for name, raw in sorted(raw_models.items()):
        try:
            m = ModelTelemetry.model_validate(raw)
        except ValidationError as e:
            skipped.append(_problem("model", name, e))
            continue
        models.append(ModelOut(model=name, fps=m.fps, batch_mean=m.batch_mean, busy=m.busy, streams=m.streams))
    return DeviceStreams(
        device_id=device.device_id,
        online=device.online,
        telemetry_time=_number(data, "timestamp"),
        streams=streams,
        models=models,
        skipped=skipped,
    )


@router.get("", response_model=list[DeviceOut])
def list_devices(service: Service) -> list[DeviceOut]:
    """Every device (ordered by id) with its latest telemetry summarised."""
    s = service.store
    assigned = _assigned_by_device(s.list_assignments(), s.list_workloads())
    return [DeviceOut(**_device_fields(d, assigned.get(d.device_id, []))) for d in s.list_devices()]


@router.get("/{device_id}", response_model=DeviceDetail)
def get_device(device_id: DeviceIdPath, service: Service) -> DeviceDetail:
    """One device, with its latest telemetry payload."""
    return _detail(service.store, device_or_404(service.store, device_id))


@router.get("/{device_id}/telemetry", response_model=list[TelemetryRow])
def device_telemetry(
    device_id: DeviceIdPath,
    service: Service,
    since: Annotated[float | None, Query(ge=0, description="Only rows newer than this Unix time.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Newest rows to return.")] = 720,
    summary: Annotated[bool, Query(description="Leave out the payloads (plots need only the numbers).")] = False,
) -> list[TelemetryRow]:
    """The device's telemetry history, oldest first."""
    device_or_404(service.store, device_id)
    rows = service.store.telemetry_history(device_id, since=since, limit=limit)
    return [_telemetry_row(row, summary) for row in rows]


@router.get("/{device_id}/streams", response_model=DeviceStreams)
def device_streams(device_id: DeviceIdPath, service: Service) -> DeviceStreams:
    """Each stream of the device (fps, drops by reason, end-to-end latency percentiles, frame age, source and
    workload state) and each model (fps, mean batch, busy fraction), from its latest telemetry."""
    return _streams(device_or_404(service.store, device_id))


@router.put("/{device_id}/group", response_model=DeviceDetail, dependencies=[Operator])
def set_group(device_id: DeviceIdPath, update: GroupUpdate, service: Service) -> DeviceDetail:
    """Set (or clear, with null) the operator's group of a device; placement is re-planned."""
    s = service.store
    device_or_404(s, device_id)
    s.set_device_group(device_id, update.group)
    s.add_event(
        "device.group",
        f"operator set the group of {device_id} to {update.group!r}"
        if update.group is not None
        else f"operator cleared the group of {device_id}",
        device_id=device_id,
        details={"group": update.group},
    )
    service.replan(f"group of device {device_id} changed")
    return _detail(s, device_or_404(s, device_id))
