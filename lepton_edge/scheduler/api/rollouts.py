"""``/api/rollouts``: staged rollouts of a config patch or an artifact to a device group (docs/scheduler.md,
"Rollouts"): create one, watch its waves and health figures, abort it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from lepton_edge.scheduler.api.auth import Operator, Viewer
from lepton_edge.scheduler.api.deps import Service
from lepton_edge.scheduler.api.schemas import ErrorOut
from lepton_edge.scheduler.desired import with_change, workload_problems
from lepton_edge.scheduler.models import WORKLOAD_ID_PATTERN
from lepton_edge.scheduler.rollouts import (
    Rollout,
    RolloutSpec,
    create_rollout,
    get_rollout,
    list_rollouts,
    request_abort,
)
from lepton_edge.scheduler.store import Store

router = APIRouter(prefix="/api/rollouts", tags=["rollouts"], dependencies=[Viewer])

RolloutIdPath = Annotated[str, Path(pattern=WORKLOAD_ID_PATTERN, description="The rollout's id.")]


class AbortRequest(BaseModel):
    """Why the operator aborts (shown with the rollout and in its events)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)] = Field(
        "aborted by an operator", description="Why the rollout is aborted."
    )


def _rename_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A workload problem's location as a location in the rollout request."""
    if loc[:2] == ("body", "config"):
        return ("body", "config_patch", *loc[2:])
    if loc[:2] == ("body", "artifact"):
        return loc
    return ("body", "config_patch")


def rollout_problems(store: Store, spec: RolloutSpec) -> list[dict[str, Any]]:
    """Why ``spec`` cannot go out now: its group has no device running a workload, or a target workload
    with the change would fail the device config schema or the protocol's size limit; [] when fine."""
    in_group = {d.device_id for d in store.list_devices() if d.group == spec.group}
    hosted = {a.workload_id for a in store.list_assignments() if a.device_id in in_group}
    targets = [w for w in store.list_workloads() if w.workload_id in hosted]
    if not targets:
        what = "no device" if not in_group else "no device running a workload"
        return [
            {
                "type": "value_error",
                "loc": ("body", "group"),
                "msg": f"group {spec.group!r} has {what}; set device groups with PUT /api/devices/<id>/group",
                "input": spec.group,
            }
        ]
    problems: dict[tuple[Any, str], dict[str, Any]] = {}
    for workload in targets:
        for problem in workload_problems(with_change(workload, dict(spec.config_patch), spec.artifact)):
            loc = _rename_loc(tuple(problem["loc"]))
            msg = f"{problem['msg']} (with workload {workload.workload_id})"
            problems.setdefault((loc, problem["msg"]), {**problem, "loc": loc, "msg": msg})
    return list(problems.values())


@router.get("", response_model=list[Rollout])
def list_all(service: Service) -> list[Rollout]:
    """The newest 200 rollouts, oldest first, with their waves and health figures."""
    return list_rollouts(service.store)


@router.post(
    "",
    response_model=Rollout,
    status_code=201,
    dependencies=[Operator],
    responses={409: {"model": ErrorOut, "description": "The id is taken, or the group has an active rollout."}},
)
def create(spec: RolloutSpec, request: Request, service: Service) -> Rollout:
    """Start a rollout; the leader runs its waves. 422 when the change would not validate on a target
    workload (device config schema, protocol size limit) or the group has nothing to change."""
    request.state.audit_target = spec.rollout_id
    problems = rollout_problems(service.store, spec)
    if problems:
        raise RequestValidationError(problems)
    return create_rollout(service.store, spec)


@router.get("/{rollout_id}", response_model=Rollout)
def get_one(rollout_id: RolloutIdPath, service: Service) -> Rollout:
    """One rollout: its spec, state, waves (devices, desired versions before, fps before, verdict,
    failures, figures) and the reason of an abort."""
    return get_rollout(service.store, rollout_id)


@router.post("/{rollout_id}/abort", response_model=Rollout, dependencies=[Operator])
def abort(rollout_id: RolloutIdPath, request: Request, service: Service, body: AbortRequest | None = None) -> Rollout:
    """Abort a rollout: the leader gives every device of the waves started its previous config back (new,
    higher desired versions; an artifact rollout's ``rollback_artifact`` in place of the artifact, ending
    ``rolled_back`` or ``rollback_failed``). An ended rollout is returned unchanged."""
    request.state.audit_target = rollout_id
    reason = body.reason if body is not None else AbortRequest().reason
    return request_abort(service.store, rollout_id, reason)
