"""Authentication before any ``/api`` route runs (:class:`AuthMiddleware`), and roles as FastAPI
dependencies: ``Viewer``, ``Operator`` and ``Admin``.

The middleware reads ``Authorization: Bearer <token>`` (never a token in the URL) and spends from the
caller's rate limit before the request body is read: a refusal is 401 (with ``WWW-Authenticate``) or 429
(with ``Retry-After``). Every ``/api`` route depends on a role; too low a role is 403. Each refusal leaves
its reason and caller in the request state for the audit middleware (``api/audit.py``).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from lepton_edge.scheduler.api.errors import store_error_answer
from lepton_edge.scheduler.auth import Authenticator, AuthRefused, Principal, Role
from lepton_edge.scheduler.store import StoreError

WWW_AUTHENTICATE = 'Bearer realm="lepton-edge scheduler"'


def _note(state: dict[str, Any], refused: AuthRefused) -> None:
    state["audit_refusal"] = refused.reason
    if refused.principal is not None:
        state["principal"] = refused.principal


def _headers(refused: AuthRefused) -> dict[str, str]:
    headers = {}
    if refused.status == 401:
        headers["WWW-Authenticate"] = f'{WWW_AUTHENTICATE}, error="invalid_token"'
    if refused.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(refused.retry_after_s)))
    return headers


def _refuse(request: Request, refused: AuthRefused) -> HTTPException:
    request.state.audit_refusal = refused.reason
    if refused.principal is not None:
        request.state.principal = refused.principal
    detail = f"{request.method} {request.url.path}: {refused.reason}"
    return HTTPException(refused.status, detail, headers=_headers(refused))


class AuthMiddleware:
    """Authenticates every ``/api`` request before its body is read or a route runs; 401/429 otherwise."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode("latin-1")
        remote = scope["client"][0] if scope.get("client") else None
        state = scope.setdefault("state", {})
        try:
            state["principal"] = await anyio.to_thread.run_sync(
                self.authenticator.authenticate, headers.get("authorization"), query, remote
            )
        except AuthRefused as e:
            _note(state, e)
            await _send_error(send, e.status, f"{scope['method']} {scope['path']}: {e.reason}", _headers(e))
            return
        except StoreError as e:  # the tokens cannot be checked: as any route would answer
            await _send_error(send, *store_error_answer(scope["method"], scope["path"], e), {})
            return
        await self.app(scope, receive, send)


async def _send_error(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    body = json.dumps({"detail": detail, "problems": []}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def authenticate(request: Request) -> Principal:
    """The caller of this request, as :class:`AuthMiddleware` found it."""
    principal = getattr(request.state, "principal", None)
    if principal is None:  # a role asked for outside /api, where the middleware does not run: fail closed
        raise HTTPException(
            401, "this route needs a role but is not under /api", {"WWW-Authenticate": WWW_AUTHENTICATE}
        )
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
