"""``/api/workloads``: what should run, and where it runs."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from lepton_edge.scheduler.api.auth import Operator, Viewer
from lepton_edge.scheduler.api.deps import Service, workload_or_404
from lepton_edge.scheduler.api.schemas import ErrorOut, WorkloadOut, WorkloadUpdate
from lepton_edge.scheduler.desired import workload_problems
from lepton_edge.scheduler.models import Assignment, Workload
from lepton_edge.scheduler.store import Store

router = APIRouter(prefix="/api/workloads", tags=["workloads"], dependencies=[Viewer])


def _out(workload: Workload, assignment: Assignment | None) -> WorkloadOut:
    return WorkloadOut(
        workload=workload,
        device_id=assignment.device_id if assignment else None,
        status=assignment.status if assignment else None,
        reason=assignment.reason if assignment else None,
    )


def _check_deliverable(workload: Workload) -> None:
    """422 unless a device could receive and validate this workload's desired config."""
    problems = workload_problems(workload)
    if problems:
        raise RequestValidationError(problems)


def _current(store: Store, workload_id: str) -> WorkloadOut:
    workload = workload_or_404(store, workload_id)
    assignment = next((a for a in store.list_assignments() if a.workload_id == workload_id), None)
    return _out(workload, assignment)


@router.get("", response_model=list[WorkloadOut])
def list_workloads(service: Service) -> list[WorkloadOut]:
    """Every workload (ordered by id) with where it runs."""
    assignments = {a.workload_id: a for a in service.store.list_assignments()}
    return [_out(w, assignments.get(w.workload_id)) for w in service.store.list_workloads()]


@router.post(
    "",
    response_model=WorkloadOut,
    status_code=201,
    dependencies=[Operator],
    responses={409: {"model": ErrorOut, "description": "A workload with this id exists."}},
)
def add_workload(workload: Workload, request: Request, service: Service) -> WorkloadOut:
    """Add a workload; the leader places it. 409 if the id is taken; 422 if a device could not run its
    config (the device config schema, the protocol's payload size limit)."""
    request.state.audit_target = workload.workload_id
    _check_deliverable(workload)
    if service.store.get_workload(workload.workload_id) is not None:
        raise HTTPException(
            409,
            f"workload {workload.workload_id!r} already exists; change it with PUT "
            f"/api/workloads/{workload.workload_id} or pick another id",
        )
    service.add_workload(workload.model_copy(update={"created_at": None}))
    return _current(service.store, workload.workload_id)


@router.get("/{workload_id}", response_model=WorkloadOut)
def get_workload(workload_id: str, service: Service) -> WorkloadOut:
    """One workload with where it runs."""
    return _current(service.store, workload_id)


@router.put("/{workload_id}", response_model=WorkloadOut, dependencies=[Operator])
def update_workload(workload_id: str, update: WorkloadUpdate, service: Service) -> WorkloadOut:
    """Replace a workload's definition (checked like POST); placement is re-planned."""
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
    s = service.store
    existing = workload_or_404(s, workload_id)
    fields = update.model_dump(exclude={"workload_id", "created_at"})
    try:
        workload = Workload(**fields, workload_id=workload_id, created_at=existing.created_at)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None
    _check_deliverable(workload)
    s.update_workload(workload)
    s.add_event("workload.updated", f"operator updated workload {workload_id}", workload_id=workload_id)
    service.replan(f"workload {workload_id} updated")
    return _current(s, workload_id)


@router.delete("/{workload_id}", status_code=204, dependencies=[Operator])
def delete_workload(workload_id: str, service: Service) -> None:
    """Remove a workload; its device gets a new desired config."""
    workload_or_404(service.store, workload_id)
    if service.remove_workload(workload_id) is False:
        raise HTTPException(404, f"workload {workload_id!r} not found (removed meanwhile)")
