"""The application: one router per resource, the error handlers and the dashboard."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from lepton_edge.scheduler.api import assignments, dashboard, devices, events, health, workloads
from lepton_edge.scheduler.api.errors import ERROR_RESPONSES, install_error_handlers


def create_app(service: Any) -> FastAPI:
    """The API and dashboard of one scheduler replica, backed by ``service`` and its ``store``."""
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
    return app
