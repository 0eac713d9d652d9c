"""``/api/assignments``: where each placed workload runs."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from lepton_edge.scheduler.api.auth import Viewer
from lepton_edge.scheduler.api.deps import Service
from lepton_edge.scheduler.api.schemas import AssignmentOut

router = APIRouter(prefix="/api/assignments", tags=["placement"], dependencies=[Viewer])


@router.get("", response_model=list[AssignmentOut])
def list_assignments(service: Service) -> list[AssignmentOut]:
    """Where each placed workload runs and whether its device applied it."""
    return [AssignmentOut(**asdict(a)) for a in service.store.list_assignments()]
