"""Authentication and roles as FastAPI dependencies: ``Viewer``, ``Operator`` and ``Admin``.

Every ``/api`` route depends on one of them. The dependency reads ``Authorization: Bearer <token>`` (never
a token in the URL), spends from the caller's rate limit and checks the role; a refusal is 401 (with
``WWW-Authenticate``), 403 or 429 (with ``Retry-After``), and leaves its reason and caller on the request
for the audit middleware (``api/audit.py``).
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from lepton_edge.scheduler.auth import Authenticator, AuthRefused, Principal, Role

WWW_AUTHENTICATE = 'Bearer realm="lepton-edge scheduler"'


def remote_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _refuse(request: Request, refused: AuthRefused) -> HTTPException:
    request.state.audit_refusal = refused.reason
    if refused.principal is not None:
        request.state.principal = refused.principal
    headers = {}
    if refused.status == 401:
        headers["WWW-Authenticate"] = f'{WWW_AUTHENTICATE}, error="invalid_token"'
    if refused.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(refused.retry_after_s)))
    return HTTPException(refused.status, f"{request.method} {request.url.path}: {refused.reason}", headers=headers)


def authenticate(request: Request) -> Principal:
    """The caller of this request (cached per request), or 401/429."""
    authenticator: Authenticator = request.app.state.authenticator
    try:
        principal = authenticator.authenticate(
            request.headers.get("authorization"), request.url.query, remote_address(request)
        )
    except AuthRefused as e:
        raise _refuse(request, e) from None
    request.state.principal = principal
    return principal


def require(role: Role):
    """A dependency that lets through callers with ``role`` or above, else 403."""

    def check(request: Request, principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        try:
            Authenticator.authorize(principal, role)
        except AuthRefused as e:
            raise _refuse(request, e) from None
        return principal

    check.__name__ = f"require_{role}"
    return check


Viewer = Depends(require("viewer"))
Operator = Depends(require("operator"))
Admin = Depends(require("admin"))
CallerViewer = Annotated[Principal, Viewer]
CallerAdmin = Annotated[Principal, Admin]
