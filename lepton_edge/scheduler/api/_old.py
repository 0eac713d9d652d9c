"""The scheduler's HTTP API and dashboard (FastAPI, served by uvicorn in a background thread).

``create_app(service)`` builds the application around a running ``SchedulerService`` (anything with
``store``, ``add_workload``, ``remove_workload``, ``replan``, ``is_leader`` and ``stats``);
``serve(service, host, port)`` starts it and returns an :class:`ApiServer` to stop it.

- JSON endpoints under ``/api`` (schema at ``/openapi.json``), ``/healthz`` for probes, and the dashboard
  at ``/`` with its files under ``/static`` (shipped in the package: it works without network access).
- FastAPI's ``/docs`` and ``/redoc`` pages load their scripts from a CDN, so they are disabled; open
  ``/openapi.json`` in any OpenAPI viewer instead.
- A store that cannot answer gives ``503`` with the reason, unknown ids ``404``, taken ids ``409`` and
  invalid requests ``422`` with one message per problem.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lepton_edge.core.errors import ConfigError
from lepton_edge.scheduler.models import (
    DEVICE_ID_PATTERN,
    WORKLOAD_ID_PATTERN,
    Assignment,
    AssignmentStatus,
    Device,
    Severity,
    Workload,
)
from lepton_edge.scheduler.store import StoreConflict, StoreError, StoreNotFound, StoreUnavailable

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
LATENCY_STAGES = ("e2e", "infer")
"""The telemetry latency stage the API summarises: end to end (capture to result) where the device reports
it, else inference alone; ``latency_stage`` says which."""

_SLUG_HELP = (
    "must be a slug: 1-64 characters from a-z, 0-9, '_', '.', '-', starting with a letter or digit "
    "(e.g. 'gate-3.people')"
)
_DEVICE_ID_HELP = "must be a device id: 1-64 characters from A-Z, a-z, 0-9, '_', '.', '-' (no '/' or spaces)"
_PATTERN_HELP = {"workload_id": _SLUG_HELP, "pinned_device": _DEVICE_ID_HELP, "device_id": _DEVICE_ID_HELP}

DeviceIdPath = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
WorkloadId = Annotated[str, StringConstraints(pattern=WORKLOAD_ID_PATTERN)]


# ------------------------------------------------------------------------------------------- schemas


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


# ------------------------------------------------------------------------------------------ helpers


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


def _problems(errors: list[dict[str, Any]]) -> list[Problem]:
    """Readable problems from pydantic errors: which field, what is wrong, what was given."""
    problems = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())]
        location = loc[0] if loc and loc[0] in ("body", "query", "path") else "body"
        parts = loc[1:] if loc and loc[0] in ("body", "query", "path") else loc
        field = ".".join(parts) or location
        name = parts[-1] if parts else ""
        kind = e.get("type", "")
        got = e.get("input")
        if kind == "extra_forbidden":
            message = "unknown field; remove it (GET /openapi.json lists the accepted fields)"
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "string_pattern_mismatch" and name in _PATTERN_HELP:
            message = f"{got!r} {_PATTERN_HELP[name]}"
        elif kind == "json_invalid":
            message = f"the body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}"
        else:
            shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
            message = f"{e.get('msg', 'invalid value')}{shown}"
        problems.append(Problem(location=location, field=field, message=message))
    return problems


def _error(
    status: int, detail: str, problems: list[Problem] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorOut(detail=detail, problems=problems or [])
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _invalid(request: Request, problems: list[Problem]) -> JSONResponse:
    summary = "; ".join(f"{p.field}: {p.message}" for p in problems)
    return _error(422, f"{request.method} {request.url.path}: invalid request: {summary}", problems)


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown device or workload."},
    422: {"model": ErrorOut, "description": "Invalid request; one problem per field."},
    503: {"model": ErrorOut, "description": "The fleet store cannot answer right now."},
}


# ---------------------------------------------------------------------------------------------- app


def create_app(service: Any) -> FastAPI:
    """The API and dashboard of one scheduler replica, backed by ``service`` and its ``store``."""
    app = FastAPI(
        title="lepton-edge scheduler",
        description="Fleet registry, workloads, placement and events of a lepton-edge scheduler replica.",
        version="1",
        docs_url=None,  # FastAPI's docs pages load Swagger UI / ReDoc from a CDN
        redoc_url=None,
        responses=_ERROR_RESPONSES,
    )
    app.state.service = service

    def store() -> Any:
        return service.store

    def device_or_404(device_id: str) -> Device:
        device = store().get_device(device_id)
        if device is None:
            raise HTTPException(
                404, f"device {device_id!r} not found; GET /api/devices lists the known devices"
            )
        return device

    def workload_or_404(workload_id: str) -> Workload:
        workload = store().get_workload(workload_id)
        if workload is None:
            raise HTTPException(
                404, f"workload {workload_id!r} not found; GET /api/workloads lists the workloads"
            )
        return workload

    def workload_out(workload: Workload) -> WorkloadOut:
        assignment = next(
            (a for a in store().list_assignments() if a.workload_id == workload.workload_id), None
        )
        return WorkloadOut(
            workload=workload,
            device_id=assignment.device_id if assignment else None,
            status=assignment.status if assignment else None,
            reason=assignment.reason if assignment else None,
        )

    def device_detail(device: Device) -> DeviceDetail:
        s = store()
        assigned = _assigned_by_device(s.list_assignments(), s.list_workloads()).get(device.device_id, [])
        return DeviceDetail(**_device_fields(device, assigned), telemetry=device.telemetry)

    # ----------------------------------------------------------------------------- error handlers
    @app.exception_handler(RequestValidationError)
    async def _on_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _invalid(request, _problems(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code in (404, 405) and detail in ("Not Found", "Method Not Allowed"):
            detail = f"{request.method} {request.url.path}: no such endpoint; /openapi.json lists them"
        return _error(exc.status_code, detail, headers=exc.headers)

    @app.exception_handler(StoreError)
    async def _on_store_error(request: Request, exc: StoreError) -> JSONResponse:
        if isinstance(exc, StoreNotFound):
            return _error(404, str(exc))
        if isinstance(exc, StoreConflict):
            return _error(409, str(exc))
        if not isinstance(exc, StoreUnavailable):
            log.warning("%s %s: fleet store error: %s", request.method, request.url.path, exc)
        return _error(503, f"the fleet store cannot answer: {exc}; retry once the database is reachable")

    @app.exception_handler(Exception)
    async def _on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(
            500, f"internal error ({type(exc).__name__}: {exc}); the scheduler log has the traceback"
        )

    # ------------------------------------------------------------------------------------ devices
    @app.get("/api/devices", response_model=list[DeviceOut], tags=["devices"])
    def list_devices() -> list[DeviceOut]:
        """Every device (ordered by id) with its latest telemetry summarised."""
        s = store()
        assigned = _assigned_by_device(s.list_assignments(), s.list_workloads())
        return [DeviceOut(**_device_fields(d, assigned.get(d.device_id, []))) for d in s.list_devices()]

    @app.get("/api/devices/{device_id}", response_model=DeviceDetail, tags=["devices"])
    def get_device(device_id: DeviceIdPath) -> DeviceDetail:
        """One device, with its latest telemetry payload."""
        return device_detail(device_or_404(device_id))

    @app.get("/api/devices/{device_id}/telemetry", response_model=list[TelemetryRow], tags=["devices"])
    def device_telemetry(
        device_id: DeviceIdPath,
        since: Annotated[
            float | None, Query(ge=0, description="Only rows newer than this Unix time.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=10_000, description="Newest rows to return.")] = 720,
        summary: Annotated[
            bool, Query(description="Leave out the payloads (plots need only the numbers).")
        ] = False,
    ) -> list[TelemetryRow]:
        """The device's telemetry history, oldest first."""
        device_or_404(device_id)
        rows = store().telemetry_history(device_id, since=since, limit=limit)
        return [_telemetry_row(row, summary) for row in rows]

    @app.put("/api/devices/{device_id}/group", response_model=DeviceDetail, tags=["devices"])
    def set_group(device_id: DeviceIdPath, update: GroupUpdate) -> DeviceDetail:
        """Set (or clear, with null) the operator's group of a device; placement is re-planned."""
        s = store()
        device_or_404(device_id)
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
        return device_detail(device_or_404(device_id))

    # ---------------------------------------------------------------------------------- workloads
    @app.get("/api/workloads", response_model=list[WorkloadOut], tags=["workloads"])
    def list_workloads() -> list[WorkloadOut]:
        """Every workload (ordered by id) with where it runs."""
        s = store()
        assignments = {a.workload_id: a for a in s.list_assignments()}
        out = []
        for w in s.list_workloads():
            a = assignments.get(w.workload_id)
            out.append(
                WorkloadOut(
                    workload=w,
                    device_id=a.device_id if a else None,
                    status=a.status if a else None,
                    reason=a.reason if a else None,
                )
            )
        return out

    @app.post(
        "/api/workloads",
        response_model=WorkloadOut,
        status_code=201,
        tags=["workloads"],
        responses={409: {"model": ErrorOut, "description": "A workload with this id exists."}},
    )
    def add_workload(workload: Workload) -> WorkloadOut:
        """Add a workload; the leader places it. 409 if the id is taken."""
        if store().get_workload(workload.workload_id) is not None:
            raise HTTPException(
                409,
                f"workload {workload.workload_id!r} already exists; change it with PUT "
                f"/api/workloads/{workload.workload_id} or pick another id",
            )
        service.add_workload(workload.model_copy(update={"created_at": None}))
        return workload_out(workload_or_404(workload.workload_id))

    @app.get("/api/workloads/{workload_id}", response_model=WorkloadOut, tags=["workloads"])
    def get_workload(workload_id: str) -> WorkloadOut:
        """One workload with where it runs."""
        return workload_out(workload_or_404(workload_id))

    @app.put("/api/workloads/{workload_id}", response_model=WorkloadOut, tags=["workloads"])
    def update_workload(workload_id: str, update: WorkloadUpdate) -> WorkloadOut:
        """Replace a workload's definition; placement is re-planned."""
        if update.workload_id is not None and update.workload_id != workload_id:
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ("body", "workload_id"),
                        "msg": f"must equal the id in the path ({workload_id!r}) or be left out; "
                        "to rename a workload, DELETE it and POST the new one",
                        "input": update.workload_id,
                    }
                ]
            )
        existing = workload_or_404(workload_id)
        fields = update.model_dump(exclude={"workload_id", "created_at"})
        try:
            workload = Workload(**fields, workload_id=workload_id, created_at=existing.created_at)
        except ValidationError as e:
            raise RequestValidationError(
                [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]
            ) from None
        s = store()
        s.update_workload(workload)
        s.add_event("workload.updated", f"operator updated workload {workload_id}", workload_id=workload_id)
        service.replan(f"workload {workload_id} updated")
        return workload_out(workload_or_404(workload_id))

    @app.delete("/api/workloads/{workload_id}", status_code=204, tags=["workloads"])
    def delete_workload(workload_id: str) -> None:
        """Remove a workload; its device gets a new desired config."""
        workload_or_404(workload_id)
        if service.remove_workload(workload_id) is False:
            raise HTTPException(404, f"workload {workload_id!r} not found (removed meanwhile)")

    # ------------------------------------------------------------------- assignments, events, stats
    @app.get("/api/assignments", response_model=list[AssignmentOut], tags=["placement"])
    def list_assignments() -> list[AssignmentOut]:
        """Where each placed workload runs and whether its device applied it."""
        return [AssignmentOut(**asdict(a)) for a in store().list_assignments()]

    @app.get("/api/events", response_model=list[EventOut], tags=["events"])
    def list_events(
        since_id: Annotated[
            int | None, Query(ge=0, description="Only events after this id (for polling).")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=10_000, description="Most events to return.")] = 200,
    ) -> list[EventOut]:
        """Events oldest first: the newest `limit`, or the first `limit` after `since_id`."""
        return [EventOut(**asdict(e)) for e in store().list_events(limit=limit, since_id=since_id)]

    @app.get("/api/stats", response_model=StatsOut, tags=["placement"])
    def stats() -> StatsOut:
        """Fleet counts and the service's statistics."""
        s = store()
        devices = s.list_devices()
        workloads = s.list_workloads()
        assignments = s.list_assignments()
        placed = {a.workload_id for a in assignments}
        return StatsOut(
            time=time.time(),
            is_leader=bool(service.is_leader),
            leader=s.leader(),
            devices=len(devices),
            online=sum(d.online for d in devices),
            throttled=sum(d.throttled for d in devices),
            workloads=len(workloads),
            assigned=sum(w.workload_id in placed for w in workloads),
            unplaced=sum(w.workload_id not in placed for w in workloads),
            failed=sum(a.status == "failed" for a in assignments),
            service=jsonable_encoder(service.stats()),
        )

    @app.get(
        "/healthz",
        response_model=Health,
        tags=["health"],
        responses={503: {"model": Health, "description": "The store does not answer."}},
    )
    def healthz() -> JSONResponse:
        """200 when the fleet store answers, else 503 with the reason."""
        try:
            version = store().schema_version()
        except Exception as e:
            reason = f"fleet store does not answer: {type(e).__name__}: {e}"
            return JSONResponse(
                status_code=503, content=Health(status="unavailable", reason=reason).model_dump()
            )
        if version < 1:
            reason = "fleet store has no schema: run its migrations (open_store migrates by default)"
            return JSONResponse(
                status_code=503, content=Health(status="unavailable", reason=reason).model_dump()
            )
        health = Health(status="ok", schema_version=version, is_leader=bool(service.is_leader))
        return JSONResponse(content=health.model_dump())

    # ---------------------------------------------------------------------------------- dashboard
    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


# ------------------------------------------------------------------------------------------- server


class ApiServer:
    """A running API: ``host``, ``port`` (the bound one), ``url``; :meth:`stop` shuts it down."""

    def __init__(self, server: Any, thread: threading.Thread, host: str, port: int) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting requests, finish the ones in flight, and join the server thread."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ConfigError(
            f"api.host {host!r}: cannot resolve it ({e}); use an address such as 127.0.0.1"
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"api: cannot listen on {host}:{port}: {e.strerror or e}; pick another api.port "
            "(0 picks a free one) or stop the program using it"
        ) from None
    return sock


def serve(
    service: Any, host: str = "127.0.0.1", port: int = 8080, *, startup_timeout: float = 15.0
) -> ApiServer:
    """Serve the API and dashboard of ``service`` from a background thread; port 0 picks a free port."""
    import uvicorn

    sock = _listen(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(service), log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"scheduler-api-{bound_port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            sock.close()
            raise ConfigError(f"api: the HTTP server on {host}:{bound_port} did not start; see the log above")
        time.sleep(0.01)
    log.info("scheduler API and dashboard on http://%s:%d/", host, bound_port)
    return ApiServer(server, thread, host, bound_port)
