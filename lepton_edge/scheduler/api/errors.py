"""Error responses: a store that cannot answer gives 503 with the reason, unknown ids 404, taken ids 409 and
invalid requests 422 with one message per problem."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lepton_edge.scheduler.api.schemas import ErrorOut, Problem
from lepton_edge.scheduler.store import StoreConflict, StoreError, StoreNotFound, StoreUnavailable

log = logging.getLogger("lepton_edge.scheduler.api")

_SLUG_HELP = (
    "must be a slug: 1-64 characters from a-z, 0-9, '_', '.', '-', starting with a letter or digit "
    "(e.g. 'gate-3.people')"
)
_DEVICE_ID_HELP = "must be a device id: 1-64 characters from A-Z, a-z, 0-9, '_', '.', '-' (no '/' or spaces)"
_PATTERN_HELP = {"workload_id": _SLUG_HELP, "pinned_device": _DEVICE_ID_HELP, "device_id": _DEVICE_ID_HELP}


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
        if kind == "extra_forbidden" and parts[:1] == ["config"]:
            message = "unknown field in the device config; remove it (docs/config.md lists the fields)"
        elif kind == "extra_forbidden":
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


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown device or workload."},
    422: {"model": ErrorOut, "description": "Invalid request; one problem per field."},
    503: {"model": ErrorOut, "description": "The fleet store cannot answer right now."},
}


def store_error_answer(method: str, path: str, exc: StoreError) -> tuple[int, str]:
    """Status and detail for a store error: 404, 409, or 503 while the store cannot answer."""
    if isinstance(exc, StoreNotFound):
        return 404, str(exc)
    if isinstance(exc, StoreConflict):
        return 409, str(exc)
    if not isinstance(exc, StoreUnavailable):
        log.warning("%s %s: fleet store error: %s", method, path, exc)
    return 503, f"the fleet store cannot answer: {exc}; retry once the database is reachable"


def install_error_handlers(app: FastAPI) -> None:
    """Every error as an :class:`ErrorOut` body."""

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
        return _error(*store_error_answer(request.method, request.url.path, exc))

    @app.exception_handler(Exception)
    async def _on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(
            500, f"internal error ({type(exc).__name__}: {exc}); the scheduler log has the traceback"
        )
