"""What every router needs: the service behind the app, and lookups that answer 404."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from lepton_edge.scheduler.models import Device, Workload
from lepton_edge.scheduler.store import Store


def get_service(request: Request) -> Any:
    """The ``SchedulerService`` (or anything with its API part) the app was created for."""
    return request.app.state.service


Service = Annotated[Any, Depends(get_service)]


def device_or_404(store: Store, device_id: str) -> Device:
    device = store.get_device(device_id)
    if device is None:
        raise HTTPException(404, f"device {device_id!r} not found; GET /api/devices lists the known devices")
    return device


def workload_or_404(store: Store, workload_id: str) -> Workload:
    workload = store.get_workload(workload_id)
    if workload is None:
        raise HTTPException(404, f"workload {workload_id!r} not found; GET /api/workloads lists the workloads")
    return workload
