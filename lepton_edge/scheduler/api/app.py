"""The application: one router per resource, authentication, audit, security headers and the dashboard."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from lepton_edge.scheduler.api import (
    assignments,
    audit,
    clips,
    dashboard,
    devices,
    events,
    health,
    rollouts,
    tokens,
    workloads,
)
from lepton_edge.scheduler.api.audit import AuditMiddleware
from lepton_edge.scheduler.api.auth import AuthMiddleware
from lepton_edge.scheduler.api.errors import ERROR_RESPONSES, install_error_handlers
from lepton_edge.scheduler.api.headers import SecurityHeadersMiddleware
from lepton_edge.scheduler.api.limits import BodyLimitMiddleware, TrustedHostMiddleware
from lepton_edge.scheduler.auth import Authenticator, RateLimiter

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_ALLOWED_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_RATE_LIMIT = (50.0, 100)
"""Requests per second and burst allowed to each token (api.rate_limit_per_s, api.rate_limit_burst)."""


def create_app(
    service: Any,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allowed_hosts: list[str] | tuple[str, ...] = DEFAULT_ALLOWED_HOSTS,
    insecure_local: bool = False,
    rate_limit: tuple[float, int] = DEFAULT_RATE_LIMIT,
) -> FastAPI:
    """The API and dashboard of one scheduler replica, backed by ``service`` and its ``store``.

    Requests with a body over ``max_body_bytes`` get 413 before it is read; a ``Host`` header not in
    ``allowed_hosts`` gets 400 (Starlette's ``TrustedHostMiddleware``). Every ``/api`` route needs a bearer
    token of the right role (``api/auth.py``), unless ``insecure_local`` (then every caller is the
    ``insecure-local`` admin); each caller gets ``rate_limit`` (requests per second, burst); every change is
    audited (``api/audit.py``); every response carries the security headers (``api/headers.py``).
    """
    app = FastAPI(
        title="lepton-edge scheduler",
        description="Fleet registry, workloads, placement and events of a lepton-edge scheduler replica.",
        version="1",
        docs_url=None,  # FastAPI's docs pages load Swagger UI / ReDoc from a CDN
        redoc_url=None,
        responses=ERROR_RESPONSES,
    )
    app.state.service = service
    app.state.authenticator = Authenticator(service.store, RateLimiter(*rate_limit), insecure_local=insecure_local)
    install_error_handlers(app)
    for module in (devices, clips, workloads, assignments, events, health, rollouts, tokens, audit, dashboard):
        app.include_router(module.router)
    dashboard.mount_static(app)
    # added last = outermost: headers on every answer, the Host check, the body limit, the audit, the token
    app.add_middleware(AuthMiddleware, authenticator=app.state.authenticator)
    app.add_middleware(AuditMiddleware, service=service)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)
    app.add_middleware(SecurityHeadersMiddleware)
    return app
