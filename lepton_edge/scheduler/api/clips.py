"""Event clips: what a device holds (``GET /api/devices/{id}/clips``), fetching one to the scheduler (``POST
/api/devices/{id}/clips/{clip}/fetch``, operator, audited), the fetch jobs (``GET /api/clips``) and the fetched
files (``GET /api/clips/{device}/{clip}``, ``video/mp4``, only when complete).

The fetches run on the service's :class:`~lepton_edge.scheduler.clips.ClipFetcher` (``service.clips``); a
service without one answers 503.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import StringConstraints

from lepton_edge.scheduler.api.auth import CallerViewer, Operator, Viewer
from lepton_edge.scheduler.api.deps import Service
from lepton_edge.scheduler.api.schemas import DeviceIdPath
from lepton_edge.scheduler.auth import Principal
from lepton_edge.scheduler.clips import CLIP_ID_PATTERN, ClipFetcher, check_clip_ref

ClipIdPath = Annotated[str, StringConstraints(pattern=CLIP_ID_PATTERN)]

router = APIRouter(tags=["clips"])


def _fetcher(service: Any) -> ClipFetcher:
    fetcher = getattr(service, "clips", None)
    if fetcher is None:
        raise HTTPException(503, "this scheduler replica does not fetch clips (no clip fetcher is running)")
    return fetcher


def _checked(device_id: str, clip_id: str) -> None:
    try:
        check_clip_ref(device_id, clip_id)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None


@router.get("/api/devices/{device_id}/clips", dependencies=[Viewer])
def device_clips(
    device_id: DeviceIdPath,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=200, description="Most clips to list, newest first.")] = 50,
) -> dict[str, Any]:
    """The device's complete clips, newest first, as the device lists them now (`source: device`); when it does
    not answer, the clips this replica fetched or is fetching from it (`source: scheduler`, `error` says why)."""
    if service.store.get_device(device_id) is None:
        raise HTTPException(404, f"device {device_id!r} not found; GET /api/devices lists the known devices")
    return _fetcher(service).device_clips(device_id, limit)


@router.post("/api/devices/{device_id}/clips/{clip_id}/fetch", dependencies=[Operator])
def fetch_clip(
    device_id: DeviceIdPath, clip_id: ClipIdPath, request: Request, service: Service, caller: CallerViewer
) -> JSONResponse:
    """Fetch a clip from the device to the scheduler, in resumable chunks (idempotent: asking again returns the
    job as it is, and retries a failed one). 200 with the job once complete, else 202 with its progress."""
    _checked(device_id, clip_id)
    fetcher = _fetcher(service)
    if service.store.get_device(device_id) is None:
        raise HTTPException(404, f"device {device_id!r} not found; GET /api/devices lists the known devices")
    principal: Principal = caller
    job = fetcher.request(device_id, clip_id, requested_by=principal.actor)
    request.state.audit_detail = {"clip": clip_id, "state": job.state, "fetched": job.fetched, "size": job.size}
    return JSONResponse(job.out(), status_code=200 if job.state == "complete" else 202)


@router.get("/api/clips", dependencies=[Viewer])
def list_fetches(service: Service) -> list[dict[str, Any]]:
    """Every clip fetch of this replica, newest first, with its progress (`fetched` of `size` bytes)."""
    return [job.out() for job in _fetcher(service).jobs()]


@router.get(
    "/api/clips/{device_id}/{clip_id}",
    dependencies=[Viewer],
    response_class=Response,
    responses={200: {"content": {"video/mp4": {}}, "description": "The fetched clip."}},
)
def get_clip(device_id: DeviceIdPath, clip_id: ClipIdPath, service: Service) -> Response:
    """The fetched clip (`video/mp4`), once its fetch is complete; 404 before (the job says how far it is)."""
    _checked(device_id, clip_id)
    fetcher = _fetcher(service)
    path = fetcher.clip_path(device_id, clip_id)
    if path is None:
        job = fetcher.job(device_id, clip_id)
        state = "never requested" if job is None else f"{job.state}, {job.fetched} of {job.size or '?'} bytes"
        raise HTTPException(404, f"clip {clip_id!r} of {device_id} is not fetched ({state}); see GET /api/clips")
    return FileResponse(path, media_type="video/mp4", filename=f"{device_id}-{clip_id}.mp4")
