"""The application: one router per resource, the error handlers and the dashboard."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from lepton_edge.scheduler.api import assignments, dashboard, devices, events, health, workloads
from lepton_edge.scheduler.api.errors import ERROR_RESPONSES, install_error_handlers
from lepton_edge.scheduler.api.limits import BodyLimitMiddleware, TrustedHostMiddleware

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_ALLOWED_HOSTS = ("127.0.0.1", "localhost")


def create_app(
    service: Any,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allowed_hosts: list[str] | tuple[str, ...] = DEFAULT_ALLOWED_HOSTS,
) -> FastAPI:
    """The API and dashboard of one scheduler replica, backed by ``service`` and its ``store``.

    Requests with a body over ``max_body_bytes`` get 413 before it is read; a ``Host`` header not in
    ``allowed_hosts`` gets 400 (Starlette's ``TrustedHostMiddleware``).
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
    install_error_handlers(app)
    for module in (devices, workloads, assignments, events, health, dashboard):
        app.include_router(module.router)
    dashboard.mount_static(app)
    # added last = outermost: the Host check runs first, then the body limit
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)
    return app
