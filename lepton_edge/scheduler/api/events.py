"""``/api/events``: what happened in the fleet, for polling; filtered by device, stream, kind and time (analytics
events are ``device.analytics.<kind>``, their time the frame's capture time)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query

from lepton_edge.scheduler.api.auth import Viewer
from lepton_edge.scheduler.api.deps import Service
from lepton_edge.scheduler.api.schemas import EventOut
from lepton_edge.scheduler.store import EventFilter

router = APIRouter(prefix="/api/events", tags=["events"], dependencies=[Viewer])


@router.get("", response_model=list[EventOut])
def list_events(
    service: Service,
    since_id: Annotated[int | None, Query(ge=0, description="Only events after this id (for polling).")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Most events to return.")] = 200,
    device: Annotated[str | None, Query(max_length=64, description="Only this device's events.")] = None,
    stream: Annotated[str | None, Query(max_length=128, description="Only analytics events of this stream.")] = None,
    kind: Annotated[
        str | None,
        Query(max_length=64, description="Only kinds starting with this, e.g. `device.analytics.line_crossed`."),
    ] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11, description="Only events at or after this Unix time.")] = None,
    until: Annotated[float | None, Query(ge=0, le=1e11, description="Only events before this Unix time.")] = None,
) -> list[EventOut]:
    """Events oldest first: the newest `limit`, or the first `limit` after `since_id`, among those that match."""
    filters = EventFilter(device_id=device, kind_prefix=kind, stream=stream, since_ts=since, until_ts=until)
    return [EventOut(**asdict(e)) for e in service.store.list_events(limit=limit, since_id=since_id, filters=filters)]
