"""``/healthz`` for probes and ``/api/stats``: fleet counts and the service's statistics."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from lepton_edge.scheduler.api.auth import Viewer
from lepton_edge.scheduler.api.deps import Service
from lepton_edge.scheduler.api.schemas import Health, StatsOut

router = APIRouter()


@router.get("/api/stats", response_model=StatsOut, tags=["placement"], dependencies=[Viewer])
def stats(service: Service) -> StatsOut:
    """Fleet counts and the service's statistics."""
    s = service.store
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


@router.get(
    "/healthz",
    response_model=Health,
    tags=["health"],
    responses={503: {"model": Health, "description": "The store does not answer."}},
)
def healthz(service: Service) -> JSONResponse:
    """200 when the fleet store answers, else 503 with the reason. No token needed (for systemd and
    Kubernetes probes), and no fleet data in the answer."""
    try:
        version = service.store.schema_version()
    except Exception as e:
        reason = f"fleet store does not answer: {type(e).__name__}: {e}"
        return JSONResponse(status_code=503, content=Health(status="unavailable", reason=reason).model_dump())
    if version < 1:
        reason = "fleet store has no schema: run its migrations (open_store migrates by default)"
        return JSONResponse(status_code=503, content=Health(status="unavailable", reason=reason).model_dump())
    health = Health(status="ok", schema_version=version, is_leader=bool(service.is_leader))
    return JSONResponse(content=health.model_dump())
