"""``/api/events``: what happened in the fleet, for polling."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query

from lepton_edge.scheduler.api.auth import Viewer
from lepton_edge.scheduler.api.deps import Service
from lepton_edge.scheduler.api.schemas import EventOut

router = APIRouter(prefix="/api/events", tags=["events"], dependencies=[Viewer])


@router.get("", response_model=list[EventOut])
def list_events(
    service: Service,
    since_id: Annotated[int | None, Query(ge=0, description="Only events after this id (for polling).")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Most events to return.")] = 200,
) -> list[EventOut]:
    """Events oldest first: the newest `limit`, or the first `limit` after `since_id`."""
    return [EventOut(**asdict(e)) for e in service.store.list_events(limit=limit, since_id=since_id)]
